"""Point-in-time restore of the local database into a new database beside it.

The server is recovered on a scratch server to the point asked for, then the database is copied
(``pg_dump -Fc | pg_restore``) into the new database on the live server. The live database is
never written to. A database of that name that exists is refused unless forced; forced, the
old one is renamed aside, never dropped.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from cesar.backup import archive, base, scratch, stoppoint
from cesar.backup.archive import run_as
from cesar.backup.settings import Server
from cesar.console import first_line
from cesar.db import urls
from cesar.errors import ConfigError, OperationFailed

_NAME_MAX = 63


def parse_time(text: str) -> datetime:
    """ISO 8601 with a zone (``2026-11-30T10:00:00Z``, ``...+01:00``); no zone is refused."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--to {text!r} is not an ISO 8601 time; write e.g. "
                          "2026-11-30T10:15:00Z") from None
    if value.tzinfo is None:
        raise ConfigError(f"--to {text!r} has no time zone; add one, e.g. {text}Z or "
                          f"{text}+00:00")
    return value.astimezone(UTC)


_RESERVED = ("postgres", "template0", "template1")


def check_name(name: str, *, target: bool = True) -> str:
    """A plain database name. Client tools read a name holding ``=`` or a URI prefix as a
    connection string, which could point them at another database (the live one)."""
    if not name or len(name.encode()) > _NAME_MAX or "\x00" in name:
        raise ConfigError(f"--into {name!r} is not a database name (1 to {_NAME_MAX} bytes)")
    if "=" in name or name.lower().startswith(("postgres://", "postgresql://")):
        raise ConfigError(f"--into {name!r} looks like a connection string, not a database "
                          "name; give a plain name, e.g. cesar_restored")
    if target and name in _RESERVED:
        raise ConfigError(f"--into {name!r} is a reserved database; restore into a new name")
    return name


def choose_backup(server: Server, target: datetime | None) -> base.Backup:
    found = base.backups(server.repo)
    if not found:
        raise OperationFailed(f"no backup in {server.repo / 'base'}: take one with "
                              "`invoke backup`")
    if target is None:
        return found[-1]
    usable = [b for b in found if b.finished <= target]
    if not usable:
        raise OperationFailed(
            f"no backup finished before {target.isoformat()}: the oldest restorable point is "
            f"{found[0].finished_at} (backup {found[0].label})")
    return usable[-1]


@dataclass
class RestoreResult:
    database: str
    url: str | None
    target: str
    backup: str
    recovered_to: str | None
    replaced: str | None
    seconds: float

    def as_dict(self) -> dict:
        return {"database": self.database, "url": urls.mask(self.url), "target": self.target,
                "backup": self.backup, "recovered_to": self.recovered_to,
                "replaced": self.replaced, "seconds": round(self.seconds, 3)}


def _sessions(conn: psycopg.Connection, name: str) -> int:
    return int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                            "AND pid <> pg_backend_pid()", [name]).fetchone()[0])


def preflight(server: Server, into: str, force: bool) -> None:
    """Refuse before any work: an existing target (in use or not) needs ``force``."""
    with server.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [into]).fetchone()
        if exists and not force:
            n = _sessions(conn, into)
            if n:
                raise ConfigError(
                    f"database {into} exists and is in use ({n} session{'s' if n != 1 else ''}); "
                    "refusing to overwrite it: restore into a new name, or pass --force to "
                    "replace it (the old one is kept, renamed)")
            raise ConfigError(f"database {into} exists; refusing to overwrite it: restore into "
                              "a new name, or pass --force (the old one is kept, renamed)")


def restore(server: Server, target: datetime, into: str, *, force: bool = False,
            database: str | None = None) -> RestoreResult:
    """Restore ``database`` (default: the local database) as it was at ``target`` into
    ``into`` beside it on the same server."""
    if database:
        from dataclasses import replace

        server = replace(server, database=check_name(database, target=False))
    check_name(into)
    preflight(server, into, force)
    if target > datetime.now(UTC):
        raise ConfigError(f"--to {target.isoformat()} is in the future")
    started = time.perf_counter()
    backup = choose_backup(server, target)
    seal(server)
    stop = stoppoint.find(server, backup, target)
    with scratch.recovered(server, backup, stop.recovery_settings()) as s:
        with s.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               [server.database]).fetchone()
            if row is None:
                raise OperationFailed(f"the backup has no database {server.database}")
            owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE "
                                 "datname = %s", [server.database]).fetchone()[0]
        temp = f"{into[:40]}_restoring_{int(time.time())}"
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(temp), sql.Identifier(owner)))
        try:
            _copy(server, s, temp)
        except BaseException:
            with server.connect() as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(temp)))
            raise
        recovered_to = stop.committed_at or f"{backup.finished_at} (the backup; no later commit)"
    replaced = swap_in(server, temp, into, force)
    return RestoreResult(into, server.app_url_for(into), target.isoformat(), backup.label,
                         recovered_to, replaced, time.perf_counter() - started)


def seal(server: Server) -> None:
    """Commit a transaction now and wait until its WAL is archived: recovery to a time stops
    at the first commit after it, so the archive must hold one (an idle server has none)."""
    with server.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_current_xact_id()")
        conn.execute("COMMIT")
        segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
        archive.wait_archived(conn, segment)


def _copy(server: Server, s: scratch.Scratch, into: str) -> None:
    """pg_dump from the scratch server piped into pg_restore on the live server."""
    # Both tools get a built connection string, so no name is ever parsed as one.
    source = psycopg.conninfo.make_conninfo(dbname=server.database, host=str(s.socket_dir),
                                            port=str(s.port), user=server.user)
    dump_cmd = [str(server.bindir / "pg_dump"), "-Fc", "-Z", "0", f"--dbname={source}"]
    env_owner = server.owner
    dump = subprocess.Popen(dump_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            user=env_owner.pw_uid if env_owner else None,
                            group=env_owner.pw_gid if env_owner else None, cwd="/")
    failure: OperationFailed | None = None
    try:
        target = psycopg.conninfo.make_conninfo(dbname=into, host=server.host,
                                                port=str(server.port), user=server.user)
        run_as([str(server.bindir / "pg_restore"), f"--dbname={target}", "--exit-on-error",
                "--no-password"],
               server.owner, "pg_restore into the new database", stdin=dump.stdout)
    except OperationFailed as exc:
        failure = exc
    finally:
        if dump.stdout:
            dump.stdout.close()
        _, err = dump.communicate(timeout=60)
    if dump.returncode != 0:  # the cause, when pg_restore only saw its output end
        line = (err.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise OperationFailed(f"pg_dump from the scratch server failed: {line}")
    if failure is not None:
        raise failure


def swap_in(server: Server, temp: str, into: str, force: bool) -> str | None:
    """Give the restored copy its name; an existing database is renamed aside, not dropped."""
    with server.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [into]).fetchone()
        aside = None
        if exists:
            if not force:  # created by someone else while we restored
                raise OperationFailed(f"database {into} appeared during the restore; the "
                                      f"restored copy is kept as {temp}")
            aside = f"{into[:40]}_before_restore_{int(time.time())}"
            # No new sessions while it is renamed aside; the ones open are ended (forced).
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                sql.Identifier(into)))
            renamed = False
            try:
                for attempt in range(50):
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", [into])
                    try:
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(into), sql.Identifier(aside)))
                        renamed = True
                        break
                    except psycopg.errors.ObjectInUse:
                        if attempt == 49:
                            raise OperationFailed(f"database {into} kept sessions open; the "
                                                  f"restored copy is kept as {temp}") from None
                        time.sleep(0.1)
                    except psycopg.Error as exc:
                        first = first_line(exc)
                        raise OperationFailed(f"could not rename {into} aside to {aside} "
                                              f"({first}); the restored copy is kept as "
                                              f"{temp}") from None
            finally:
                # Whatever happened, the database keeps accepting connections under its name.
                conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(aside if renamed else into)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(temp), sql.Identifier(into)))
    return aside
