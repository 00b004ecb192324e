"""Configuration, read once from the environment, ``.env`` and ``.env.cockroach``.

Precedence, highest first: process environment, ``.env.cockroach``, ``.env``, defaults. The two
files are gitignored; they are where URLs with passwords live on an operator's machine. On hosts
the same variables come from the systemd ``EnvironmentFile`` written by Ansible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cesar.errors import ConfigError

Environment = Literal["development", "staging", "production"]
Target = Literal["local", "cluster"]

ENV_FILES = (".env", ".env.cockroach")
#: The development stack's state file under CESAR_STATE_DIR (mode 0600). The embedded stack
#: writes its URLs into it; this module reads them back in development, and only there, so the
#: connection layer never needs the development stack's code.
DEV_STATE_FILE = "stack.json"


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """Every setting the runtime reads. The environment variable is named in each field."""

    model_config = SettingsConfigDict(
        env_file=ENV_FILES,
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    environment: Environment = Field("development", validation_alias=_alias("ENVIRONMENT"))
    database_target: Target = Field("local", validation_alias=_alias("DATABASE_TARGET"))
    local_db_url: str | None = Field(None, validation_alias=_alias("LOCAL_DB_URL"))
    cockroach_db_url: str | None = Field(None, validation_alias=_alias("COCKROACH_DB_URL"))
    cockroach_read_replica_url: str | None = Field(
        None, validation_alias=_alias("COCKROACH_READ_REPLICA_URL")
    )

    # Where the embedded stack keeps its data, logs, pids and generated credentials.
    state_dir: Path = Field(Path(".cesar"), validation_alias=_alias("CESAR_STATE_DIR"))
    # PostgreSQL binaries for the embedded stack; default: those of the pgserver package.
    # A build with SSL (e.g. Debian's /usr/lib/postgresql/16/bin) makes the cluster stand-in
    # serve TLS, so its URL uses sslmode=verify-full like CockroachDB Cloud.
    pg_bindir: Path | None = Field(None, validation_alias=_alias("CESAR_PG_BINDIR"))

    # Connection pool (psycopg_pool) and session settings.
    pool_min_size: int = Field(1, ge=0, validation_alias=_alias("CESAR_POOL_MIN_SIZE"))
    pool_max_size: int = Field(10, ge=1, validation_alias=_alias("CESAR_POOL_MAX_SIZE"))
    pool_timeout: float = Field(5.0, gt=0, validation_alias=_alias("CESAR_POOL_TIMEOUT"))
    # Connections older than this are replaced (after rotations, node drains, LB changes).
    pool_max_lifetime: float = Field(
        3600.0, ge=1, validation_alias=_alias("CESAR_POOL_MAX_LIFETIME")
    )
    connect_timeout: int = Field(5, ge=1, validation_alias=_alias("CESAR_CONNECT_TIMEOUT"))
    statement_timeout_ms: int = Field(
        30_000, ge=0, validation_alias=_alias("CESAR_STATEMENT_TIMEOUT_MS")
    )
    application_name: str = Field("cesar", validation_alias=_alias("CESAR_APPLICATION_NAME"))

    # Password rotation (cesar/rotate/): a role allowed to ALTER ROLE the application logins,
    # and the hosts' Ansible Vault file and the Pulumi stack that also hold the credential.
    admin_db_url: str | None = Field(None, validation_alias=_alias("CESAR_ADMIN_DB_URL"))
    vault_file: Path | None = Field(None, validation_alias=_alias("CESAR_VAULT_FILE"))
    vault_password_file: Path | None = Field(
        None, validation_alias=_alias("CESAR_VAULT_PASSWORD_FILE")
    )
    pulumi_stack: str | None = Field(None, validation_alias=_alias("CESAR_PULUMI_STACK"))

    # Retry of SQLSTATE 40001 (serialization failures; routine on CockroachDB).
    retry_max_attempts: int = Field(8, ge=1, validation_alias=_alias("CESAR_RETRY_MAX_ATTEMPTS"))
    retry_base_delay: float = Field(0.02, gt=0, validation_alias=_alias("CESAR_RETRY_BASE_DELAY"))
    retry_max_delay: float = Field(1.0, gt=0, validation_alias=_alias("CESAR_RETRY_MAX_DELAY"))

    # `cesar migrate up` makes the synced tables REGIONAL BY ROW on a multi-region CockroachDB
    # (cesar/migrate/regions.py); per environment, like --regional-by-row.
    regional_by_row: bool = Field(False, validation_alias=_alias("CESAR_REGIONAL_BY_ROW"))

    # `cesar migrate up/down`: how long one statement of a migration may wait for a lock before
    # its attempt is rolled back and retried (seconds; 0 waits forever), and how many retries.
    # A DDL statement waiting for its lock queues every later reader of the table behind it.
    migrate_lock_timeout: float = Field(
        3.0, ge=0, validation_alias=_alias("CESAR_MIGRATE_LOCK_TIMEOUT"))
    migrate_lock_retries: int = Field(
        5, ge=0, validation_alias=_alias("CESAR_MIGRATE_LOCK_RETRIES"))


M = TypeVar("M", bound=BaseSettings)


def load(model: type[M], *, reveal: bool = True, where: str | None = None,
         **overrides: object) -> M:
    """Read one settings model (the environment, ``.env``, ``.env.cockroach``, or whatever
    sources the model names); a bad value becomes a one-line :class:`ConfigError` naming the
    variable as the operator types it, with the value unless ``reveal`` is off (secrets).
    ``where`` names the one file that was read (``cesar config check``)."""
    try:
        return model(**overrides)
    except ValidationError as exc:
        problem = _describe(exc, model, reveal)
        raise ConfigError(f"{where}: {problem}" if where else
                          f"{problem}; fix it in the environment, .env or .env.cockroach"
                          ) from None


def _describe(error: ValidationError, model: type[BaseSettings], reveal: bool) -> str:
    first = error.errors()[0]
    loc = str((first.get("loc") or ("?",))[0])
    aliases = set()
    for field in model.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
        aliases |= {str(c) for c in choices}
    # An aliased field is read under its alias as is; any other under the model's prefix.
    prefix = "" if loc in aliases else str(model.model_config.get("env_prefix") or "")
    name = f"{prefix}{loc}".upper()
    shown = f"{name}={first.get('input')!r}" if reveal else name
    return f"{shown} is not valid: {first.get('msg', 'invalid value')}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings; any bad value becomes a :class:`ConfigError` naming the variable."""
    return load(Settings, **overrides)


def _handover(settings: Settings) -> dict | None:
    """The development stack's state file as read in development; None elsewhere or before it."""
    if settings.environment != "development":
        return None
    path = Path(settings.state_dir) / DEV_STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc}); move it aside and run `invoke up` again"
        ) from None
    return data if isinstance(data, dict) else None


def dev_urls(settings: Settings) -> tuple[str | None, str | None]:
    """The embedded stack's (local, cluster) URLs, handed over in its state file by ``invoke up``;
    ``(None, None)`` outside development, before the first ``invoke up``, or from a state file
    written before the URLs were (the next ``invoke up`` adds them)."""
    handed = (_handover(settings) or {}).get("urls")
    if not isinstance(handed, dict):
        return None, None
    return handed.get("local"), handed.get("cluster")


@dataclass(frozen=True)
class DevServer:
    """The embedded server as its superuser reaches it over the unix socket (backups need it)."""

    socket_dir: str
    port: int
    superuser: str
    database: str      # the local database
    data_dir: Path
    bindir: Path | None  # None when the stack could not name its binaries (CESAR_PG_BINDIR does)


def dev_server(settings: Settings) -> DevServer | None:
    """The embedded server, handed over in the same state file as the URLs (so backups never
    need the development stack's code, which hosts do not install); None where ``dev_urls``
    is, or from a state file written before the server was handed over."""
    handed = (_handover(settings) or {}).get("server")
    if not isinstance(handed, dict):
        return None
    try:
        bindir = handed.get("bindir")
        return DevServer(socket_dir=str(handed["socket_dir"]), port=int(handed["port"]),
                         superuser=str(handed["superuser"]), database=str(handed["database"]),
                         data_dir=Path(handed["data_dir"]),
                         bindir=Path(bindir) if bindir else None)
    except (KeyError, TypeError, ValueError) as exc:
        path = Path(settings.state_dir) / DEV_STATE_FILE
        raise ConfigError(f"{path} is unreadable (server: {exc!r}); move it aside and run "
                          "`invoke up` again") from None
