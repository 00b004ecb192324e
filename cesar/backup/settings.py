"""Where the backups live and which server they are of.

In development with the embedded stack nothing needs setting: the server is the one
``invoke up`` started, the repository is ``<state dir>/backups``. Elsewhere (the hosts) the
``CESAR_BACKUP_*`` variables name the server's superuser socket, its binaries and the repository.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cesar import db
from cesar.config import ENV_FILES, Settings, dev_server, dev_urls, load
from cesar.db import urls
from cesar.errors import ConfigError


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class BackupSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILES, env_file_encoding="utf-8",
                                      extra="ignore", populate_by_name=True, frozen=True)

    # The repository: base backups, archived WAL, drill results. Default: <state dir>/backups.
    repo: Path | None = Field(None, validation_alias=_alias("CESAR_BACKUP_REPO"))
    # The server's superuser over its unix socket (the hosts: /var/run/postgresql, postgres).
    pg_host: str | None = Field(None, validation_alias=_alias("CESAR_BACKUP_PGHOST"))
    pg_port: int = Field(5432, ge=1, le=65535, validation_alias=_alias("CESAR_BACKUP_PGPORT"))
    pg_user: str = Field("postgres", validation_alias=_alias("CESAR_BACKUP_PGUSER"))
    # The server's own binaries (pg_basebackup, pg_verifybackup, pg_ctl must match its version).
    bindir: Path | None = Field(None, validation_alias=_alias("CESAR_BACKUP_BINDIR"))
    # The database that `restore` and the drill are about (default: LOCAL_DB_URL's database).
    database: str | None = Field(None, validation_alias=_alias("CESAR_BACKUP_DATABASE"))
    # Seconds between scheduled base backups; the alert fires at twice this age.
    schedule_seconds: int = Field(86400, ge=60, validation_alias=_alias("CESAR_BACKUP_SCHEDULE"))
    # archive_timeout: the longest a written transaction waits to reach the archive (the RPO).
    archive_timeout: int = Field(10, ge=1, le=3600,
                                 validation_alias=_alias("CESAR_BACKUP_ARCHIVE_TIMEOUT"))
    # Base backups kept; WAL older than the oldest kept backup is removed with it.
    keep: int = Field(3, ge=1, validation_alias=_alias("CESAR_BACKUP_KEEP"))


def load_backup_settings() -> BackupSettings:
    return load(BackupSettings)


@dataclass(frozen=True)
class Server:
    """The PostgreSQL server whose backups these are, and how to reach it as its superuser."""

    host: str              # unix socket directory
    port: int
    user: str
    bindir: Path
    repo: Path
    database: str          # the local database restores and drills are about
    app_url: str | None    # the application's URL of that database (its login, masked in output)
    owner: pwd.struct_passwd | None  # run binaries as this user (root runs the embedded server
    #                                  as a system user; PostgreSQL refuses to run as root)
    archive_timeout: int = 10
    schedule_seconds: int = 86400
    keep: int = 3

    def conninfo(self, dbname: str = "postgres", **extra: str) -> str:
        return psycopg.conninfo.make_conninfo(host=self.host, port=self.port, user=self.user,
                                              dbname=dbname, **extra)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        server = f"the PostgreSQL server at {self.host}:{self.port} as {self.user}"
        return db.dial(db.Endpoint("local", self.conninfo(dbname), server),
                       describe=f"cannot reach {server}",
                       hint=" (is it running? `invoke up` for the embedded stack)",
                       autocommit=True, connect_timeout=10)

    def app_url_for(self, dbname: str) -> str | None:
        if not self.app_url:
            return None
        params = urls.parse(self.app_url, "LOCAL_DB_URL")
        extra = {k: v for k, v in params.items()
                 if k not in ("user", "password", "host", "port", "dbname")}
        return urls.build(user=params.get("user", ""), password=params.get("password", ""),
                          host=params.get("host", ""), port=int(params.get("port", 5432)),
                          dbname=dbname, **extra)


def _server_owner_for(path: Path) -> pwd.struct_passwd | None:
    """As root, act as the owner of the server's files; as anyone else, as oneself."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwuid(path.stat().st_uid)
    except (KeyError, OSError):
        return None


def resolve(settings: Settings, backup: BackupSettings | None = None) -> Server:
    """The server to back up: the CESAR_BACKUP_* settings, else the embedded stack's."""
    backup = backup or load_backup_settings()
    common = {"archive_timeout": backup.archive_timeout,
              "schedule_seconds": backup.schedule_seconds, "keep": backup.keep}
    if backup.pg_host:
        if backup.repo is None:
            raise ConfigError("CESAR_BACKUP_PGHOST is set but CESAR_BACKUP_REPO is not: set it "
                              "to the repository directory (e.g. /var/lib/cesar/backup)")
        if backup.bindir is None:
            raise ConfigError("CESAR_BACKUP_PGHOST is set but CESAR_BACKUP_BINDIR is not: set "
                              "it to the server's binaries (e.g. /usr/lib/postgresql/15/bin)")
        database = backup.database or _dbname(settings.local_db_url) or "cesar_local"
        repo = backup.repo.absolute()
        owner = _server_owner_for(repo) if repo.exists() else None
        return Server(backup.pg_host, backup.pg_port, backup.pg_user, backup.bindir, repo,
                      database, settings.local_db_url, owner, **common)
    if settings.environment != "development":
        raise ConfigError(f"ENVIRONMENT={settings.environment} has no embedded server to back "
                          "up: set CESAR_BACKUP_PGHOST, CESAR_BACKUP_BINDIR and CESAR_BACKUP_REPO")
    server = dev_server(settings)
    if server is None:
        raise ConfigError("there is no local database server to back up: run `invoke up` first "
                          "(or set CESAR_BACKUP_PGHOST for a server of your own)")
    bindir = settings.pg_bindir or server.bindir
    if bindir is None:
        raise ConfigError("the embedded server's binaries are unknown: set CESAR_PG_BINDIR to "
                          "the directory holding its pg_ctl")
    local_url, _ = dev_urls(settings)
    return Server(server.socket_dir, server.port, server.superuser, bindir,
                  embedded_repo(settings.state_dir), backup.database or server.database,
                  local_url, _server_owner_for(server.data_dir), **common)


def _dbname(url: str | None) -> str | None:
    if not url:
        return None
    return urls.parse(url, "LOCAL_DB_URL").get("dbname")


def embedded_repo(state_dir: Path) -> Path:
    """The embedded stack's repository: its archive_command writes there from the first start."""
    return (Path(state_dir) / "backups").absolute()
