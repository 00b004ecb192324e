"""The CockroachDB side: backup schedules, point-in-time restore and verification, as SQL.

Written deliberately (no CockroachDB binary on the machines this was built on) and pinned by
golden files (tests/backup/golden/). Every statement names the storage through an external
connection, so the schedule's text (visible in ``SHOW SCHEDULES`` and the jobs table) never
carries the bucket's credentials; only ``CREATE EXTERNAL CONNECTION`` does, and Pulumi keeps that
statement secret.

Minimum CockroachDB version: **v22.2**, because of (sources, cockroachlabs.com/docs):

- ``CREATE SCHEDULE FOR BACKUP ... RECURRING ... FULL BACKUP ... WITH SCHEDULE OPTIONS``: v20.2
  (docs/v20.2/create-schedule-for-backup, "New in v20.2"); ``IF NOT EXISTS``: v21.2
  (docs/v21.2/create-schedule-for-backup, "New in v21.2");
- ``CREATE EXTERNAL CONNECTION`` and ``external://`` URIs: v22.2
  (docs/v22.2/create-external-connection);
- ``SHOW BACKUP ... WITH check_files`` and ``RESTORE ... WITH schema_only,
  verify_backup_table_data``: v22.2 (docs/v22.2/backup-validation, "New in v22.2");
- ``BACKUP ... INTO`` / ``RESTORE ... FROM LATEST IN`` (the collection syntax; the old
  ``BACKUP ... TO`` / ``RESTORE ... FROM 'uri'`` is removed in v24.3, docs/v26.3/restore), and
  ``RESTORE ... AS OF SYSTEM TIME`` within a backup taken ``WITH revision_history``
  (docs/stable/take-backups-with-revision-history-and-restore-from-a-point-in-time).

The stacks run the release pinned in cesar/cockroach.py, above the minimum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cesar.errors import ConfigError

MIN_VERSION = (22, 2)
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CRON = re.compile(r"^(@(hourly|daily|weekly|monthly)|[0-9*/,\- ]+)$")


def _ident(name: str, what: str) -> str:
    if not _IDENT.match(name):
        raise ConfigError(f"{what} {name!r} is not a plain lower-case SQL identifier")
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _cron(expr: str, what: str) -> str:
    if not _CRON.match(expr.strip()):
        raise ConfigError(f"{what} {expr!r} is not a crontab expression (e.g. '@hourly', "
                          "'*/15 * * * *')")
    return expr.strip()


@dataclass(frozen=True)
class BackupPlan:
    """One schedule: incremental backups on ``recurring``, a full backup on ``full``."""

    database: str = "cesar"
    connection: str = "cesar_backups"   # the external connection's name
    label: str = "cesar_backup"
    recurring: str = "*/15 * * * *"     # incremental: the RPO bound of the cluster
    full: str = "@daily"
    revision_history: bool = True       # point-in-time restore anywhere in the window

    def __post_init__(self) -> None:
        _ident(self.database, "database")
        _ident(self.connection, "external connection name")
        _ident(self.label, "schedule label")
        _cron(self.recurring, "recurring")
        _cron(self.full, "full")

    @property
    def uri(self) -> str:
        return f"external://{self.connection}"


def external_connection_sql(plan: BackupPlan, location: str) -> str:
    """The one statement that holds the storage URI (and its credentials): keep it secret."""
    if not re.match(r"^(s3|gs|azure-blob|nodelocal|userfile)://", location):
        raise ConfigError(f"backup location {location.split('?')[0]!r} is not an s3://, gs:// or "
                          "azure-blob:// URI")
    return (f"CREATE EXTERNAL CONNECTION IF NOT EXISTS {plan.connection} "
            f"AS {_literal(location)};\n")


def schedule_sql(plan: BackupPlan) -> str:
    """The backup schedule (idempotent: IF NOT EXISTS on the label)."""
    options = ["detached"]
    if plan.revision_history:
        options.insert(0, "revision_history = true")
    return (
        f"CREATE SCHEDULE IF NOT EXISTS {plan.label}\n"
        f"  FOR BACKUP DATABASE {plan.database} INTO {_literal(plan.uri)}\n"
        f"  WITH {', '.join(options)}\n"
        f"  RECURRING {_literal(plan.recurring)}\n"
        f"  FULL BACKUP {_literal(plan.full)}\n"
        "  WITH SCHEDULE OPTIONS first_run = 'now', on_execution_failure = 'retry', "
        "on_previous_running = 'skip';\n"
    )


def setup_sql(plan: BackupPlan, location: str) -> str:
    """Everything a cluster needs, in order: the connection, then the schedule."""
    return external_connection_sql(plan, location) + schedule_sql(plan)


def show_sql(plan: BackupPlan) -> str:
    """The restorable window and that every file of the newest backup is present."""
    return (f"SHOW BACKUPS IN {_literal(plan.uri)};\n"
            f"SHOW BACKUP FROM LATEST IN {_literal(plan.uri)} WITH check_files;\n")


def verify_sql(plan: BackupPlan) -> str:
    """Read every row of the newest backup and check its checksums, writing nothing."""
    return (f"RESTORE DATABASE {plan.database} FROM LATEST IN {_literal(plan.uri)}\n"
            f"  WITH schema_only, verify_backup_table_data, "
            f"new_db_name = {_literal(plan.database + '_verify')};\n"
            f"DROP DATABASE IF EXISTS {plan.database}_verify CASCADE;\n")


_SUBDIR_RE = re.compile(r"^/?[0-9]{4}/[0-9]{2}/[0-9]{2}-[0-9]{6}\.[0-9]{2}$")


def restore_sql(plan: BackupPlan, as_of: datetime, into: str, subdir: str | None = None) -> str:
    """Restore the database as it was at ``as_of`` into a new database ``into``, from the
    backup collection ``subdir`` (a path listed by ``SHOW BACKUPS IN``), default LATEST.
    After a lost cluster, LATEST may be the new empty cluster's first full backup: name the
    subdirectory then."""
    if as_of.tzinfo is None:
        raise ConfigError("the restore time needs a time zone")
    _ident(into, "restore target database")
    source = "LATEST"
    if subdir is not None:
        if not _SUBDIR_RE.match(subdir):
            raise ConfigError(f"backup subdirectory {subdir!r} is not one SHOW BACKUPS IN "
                              "lists (e.g. /2026/11/30-101500.00)")
        source = _literal(subdir)
    stamp = as_of.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    return (f"RESTORE DATABASE {plan.database} FROM {source} IN {_literal(plan.uri)}\n"
            f"  AS OF SYSTEM TIME {_literal(stamp)}\n"
            f"  WITH new_db_name = {_literal(into)};\n")


def drill_sql(plan: BackupPlan, as_of: datetime, into: str, tables: list[str]) -> str:
    """What the drill runs on CockroachDB: restore to a point beside the source, then the
    fingerprints of source (at that time) and copy, to be compared row for row."""
    _ident(into, "drill database")
    stamp = as_of.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    out = [restore_sql(plan, as_of, into)]
    for table in tables:
        _ident(table, "table")
        for db, aost in ((plan.database, f" AS OF SYSTEM TIME {_literal(stamp)}"), (into, "")):
            out.append(f"SELECT {_literal(db)} AS db, {_literal(table)} AS tbl, count(*) AS rows, "
                       f"md5(string_agg(t::STRING, '' ORDER BY t::STRING)) AS hash "
                       f"FROM {db}.public.{table} AS t{aost};\n")
    out.append(f"DROP DATABASE IF EXISTS {into} CASCADE;\n")
    return "".join(out)


def check_version(version: str) -> None:
    """Refuse a server older than the minimum (``version()`` text, e.g. 'CockroachDB CCL v24.3.5
    ...')."""
    m = re.search(r"v(\d+)\.(\d+)", version)
    if not m:
        raise ConfigError(f"cannot read a CockroachDB version from {version!r}")
    have = (int(m.group(1)), int(m.group(2)))
    if have < MIN_VERSION:
        raise ConfigError(f"CockroachDB v{have[0]}.{have[1]} is older than "
                          f"v{MIN_VERSION[0]}.{MIN_VERSION[1]}, the minimum for the backup SQL "
                          "(external connections, backup validation)")
