"""``cesar doctor``: does the connected server have every capability the project relies on?

Each capability is probed on the server itself, inside a transaction that is rolled back (the
check changes nothing), and on CockroachDB also judged by the server's release against the
minimum written next to it, with the release note or document that minimum comes from. On
PostgreSQL every probe runs the same way and passes on any supported server. The first missing
capability refuses the check in one line naming it and its minimum release.

docs/cockroachdb.md lists the same capabilities with what was verified where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar import cockroach, db
from cesar.cockroach import ServerVersion, Version
from cesar.config import Settings
from cesar.console import first_line
from cesar.db import engines, urls
from cesar.errors import ConfigError, OperationFailed
from cesar.sync.tables import CAPTURE_TRIGGER

CAPTURE_FUNCTION = "sync_capture"  # migration 011: the trigger function has the trigger's name


class Missing(Exception):
    """A probe found the capability absent; the message says what was seen."""


class Unverified(Exception):
    """A probe could not look (this login may not); a warning, not a refusal."""


@dataclass
class Probe:
    """What the probes share: the connection, the server and the synced tables."""

    conn: psycopg.Connection
    server: ServerVersion  # the server connected: the probes speak its dialect
    tables: tuple[str, ...]
    judged: ServerVersion | None = None  # the release the gate judges (default: the server)

    @property
    def release(self) -> ServerVersion:
        return self.judged or self.server

    def scratch(self) -> psycopg.Transaction:
        """A transaction rolled back at the end, whatever the probe did in it."""
        return self.conn.transaction(force_rollback=True)

    def first_table(self) -> str:
        existing = _existing_tables(self.conn, self.tables)
        for name in self.tables:
            if name in existing:
                return name
        raise Missing(f"none of the synced tables ({', '.join(self.tables)}) exists; run "
                      "`cesar migrate up` first")


@dataclass(frozen=True)
class Capability:
    name: str
    used_by: str
    minimum: Version  # the oldest CockroachDB release that has it
    source: str  # the release note, pull request or document the minimum comes from
    probe: Callable[[Probe], str]

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "used_by": self.used_by,
                "minimum": self.minimum.series, "source": self.source}


@dataclass
class Result:
    capability: Capability
    present: bool
    detail: str
    warning: bool = False  # present as far as this login can tell; not verified
    probed: bool = True  # False: the probe could not run (a permission), nothing was learnt
    engine: str = "cockroachdb"  # the engine judged: release minimums only concern CockroachDB

    def as_dict(self) -> dict[str, Any]:
        return {**self.capability.as_dict(), "present": self.present, "detail": self.detail,
                "warning": self.warning, "probed": self.probed}

    def refusal(self) -> str:
        c = self.capability
        if not self.probed:
            return (f"capability {c.name} could not be checked: {self.detail}; {c.used_by} "
                    "relies on it")
        needs = (f"; it needs CockroachDB {c.minimum.series} or later (source: {c.source})"
                 if engines.named(self.engine).release_gated else "")
        return f"capability {c.name} is missing: {self.detail}{needs}; {c.used_by} relies on it"


@dataclass
class Report:
    url: str
    server: ServerVersion
    results: list[Result] = field(default_factory=list)

    @property
    def missing(self) -> list[Result]:
        return [r for r in self.results if not r.present]

    @property
    def ok(self) -> bool:
        return not self.missing

    def refusal(self) -> str:
        first, *rest = self.missing
        more = f" (also missing: {', '.join(r.capability.name for r in rest)})" if rest else ""
        return first.refusal() + more

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url, "engine": self.server.engine, "server": self.server.short,
            "version": self.server.version_text,
            "pinned": cockroach.PINNED_RELEASE, "minimum": cockroach.MINIMUM.series,
            "ok": self.ok, "capabilities": [r.as_dict() for r in self.results],
        }


# ==================================================================== the probes
def _existing_tables(conn: psycopg.Connection, names: Sequence[str]) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_name = ANY(%s)", [list(names)],
    ).fetchall()
    return {str(r[0]) for r in rows}


def probe_release(p: Probe) -> str:
    server = p.release
    if not engines.named(server.engine).release_gated:
        return f"{server.short} (no CockroachDB release gate)"
    if server.version is None:
        raise Missing(f"the server's version() cannot be read: {server.text[:80]!r}")
    if not server.version.at_least(cockroach.MINIMUM):
        if server.version.series in cockroach.UPGRADE_FROM:
            path = f"upgrade it to {cockroach.PINNED_SERIES}"
        else:  # CockroachDB refuses to skip a Regular release
            path = (f"it cannot be upgraded to {cockroach.PINNED_SERIES} directly: upgrade it, "
                    f"one Regular release at a time, to {cockroach.UPGRADE_FROM[0]} and finalize "
                    "first")
        raise Missing(f"the server is {server.short} ({path}: docs/cockroachdb.md, "
                      "Upgrading an existing cluster)")
    pinned = "" if server.version.series == cockroach.PINNED_SERIES else (
        f", pinned {cockroach.PINNED_RELEASE}")
    return f"{server.short}{pinned}"


def probe_plpgsql_trigger_function(p: Probe) -> str:
    if engines.named(p.server.engine).show_create_function:
        try:
            with p.scratch():
                rows = p.conn.execute(sql.SQL("SELECT create_statement FROM [SHOW CREATE "
                                              "FUNCTION {}]").format(
                    sql.Identifier(CAPTURE_FUNCTION))).fetchall()
        except pgerrors.UndefinedFunction:
            rows = []
        if not rows:
            raise Missing(f"the trigger function {CAPTURE_FUNCTION}() does not exist (run "
                          "`cesar migrate up`: migration 011_sync_capture)")
        text = " ".join(str(r[0]) for r in rows).upper()
        if "LANGUAGE PLPGSQL" not in text or "RETURNS TRIGGER" not in text:
            raise Missing(f"{CAPTURE_FUNCTION}() is not a PL/pgSQL trigger function")
        return f"{CAPTURE_FUNCTION}() is a PL/pgSQL trigger function"
    row = p.conn.execute(
        "SELECT l.lanname, t.typname FROM pg_catalog.pg_proc AS f "
        "JOIN pg_catalog.pg_language AS l ON l.oid = f.prolang "
        "JOIN pg_catalog.pg_type AS t ON t.oid = f.prorettype "
        "JOIN pg_catalog.pg_namespace AS n ON n.oid = f.pronamespace "
        "WHERE f.proname = %s AND n.nspname = current_schema()", [CAPTURE_FUNCTION],
    ).fetchone()
    if row is None:
        raise Missing(f"the trigger function {CAPTURE_FUNCTION}() does not exist (run `cesar "
                      "migrate up`: migration 011_sync_capture)")
    language, returns = str(row[0]), str(row[1])
    if language != "plpgsql" or returns != "trigger":
        raise Missing(f"{CAPTURE_FUNCTION}() is a {language} function returning {returns}, not "
                      "a PL/pgSQL trigger function")
    return f"{CAPTURE_FUNCTION}() is a PL/pgSQL trigger function"


def probe_trigger_catalog(p: Probe) -> str:
    existing = _existing_tables(p.conn, p.tables)
    absent = [t for t in p.tables if t not in existing]
    if absent:
        raise Missing(f"synced table(s) {', '.join(absent)} do not exist (run `cesar migrate "
                      "up`)")
    rows = p.conn.execute(
        "SELECT c.relname, t.tgenabled FROM pg_catalog.pg_trigger AS t "
        "JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid "
        "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE t.tgname = %s AND n.nspname = current_schema() AND c.relname = ANY(%s)",
        [CAPTURE_TRIGGER, list(p.tables)],
    ).fetchall()
    found = {str(r[0]): str(r[1]) for r in rows}
    unlisted = [t for t in p.tables if t not in found]
    if unlisted:
        raise Missing(f"pg_catalog.pg_trigger lists no {CAPTURE_TRIGGER} trigger on "
                      f"{', '.join(unlisted)}")
    disabled = [t for t, enabled in found.items() if enabled == "D"]
    if disabled:
        raise Missing(f"the {CAPTURE_TRIGGER} trigger is disabled on {', '.join(disabled)}")
    return f"{CAPTURE_TRIGGER} listed and enabled on {len(found)} table(s)"


def probe_set_config(p: Probe) -> str:
    with p.scratch():
        row = p.conn.execute("SELECT set_config('cesar.sync_apply', 'on', true), "
                             "current_setting('cesar.sync_apply', true)").fetchone()
    if row is None or tuple(row) != ("on", "on"):
        raise Missing(f"set_config/current_setting of a dotted custom setting returned {row}")
    return "set_config(..., true) and current_setting(..., true) on cesar.sync_apply"


def probe_nowait(p: Probe) -> str:
    table = p.first_table()
    try:
        with p.scratch():
            p.conn.execute(sql.SQL("SELECT id FROM {} LIMIT 1 FOR UPDATE NOWAIT").format(
                sql.Identifier(table)))
    except pgerrors.LockNotAvailable:
        return f"FOR UPDATE NOWAIT on {table} (a row was held: it refused at once, as it must)"
    return f"FOR UPDATE NOWAIT on {table}"


def probe_skip_locked(p: Probe) -> str:
    table = p.first_table()
    with p.scratch():
        p.conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        p.conn.execute(sql.SQL("SELECT id FROM {} LIMIT 1 FOR UPDATE SKIP LOCKED").format(
            sql.Identifier(table)))
    return f"FOR UPDATE SKIP LOCKED on {table} under READ COMMITTED"


def probe_json_populate_recordset(p: Probe) -> str:
    table = p.first_table()
    with p.scratch():
        p.conn.execute(sql.SQL("SELECT count(*) FROM json_populate_recordset(CAST(NULL AS {}), "
                               "CAST('[]' AS JSON))").format(sql.Identifier(table)))
    return f"json_populate_recordset(NULL::{table}, ...)"


def probe_read_committed(p: Probe) -> str:
    with p.scratch():
        p.conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        row = p.conn.execute("SHOW transaction_isolation").fetchone()
    level = str(row[0]) if row else "?"
    if level.lower() != "read committed":
        # CockroachDB runs a READ COMMITTED request as SERIALIZABLE, silently, while the
        # cluster setting sql.txn.read_committed_isolation.enabled is off.
        raise Missing(f"a READ COMMITTED transaction runs as {level} (CockroachDB: SET CLUSTER "
                      "SETTING sql.txn.read_committed_isolation.enabled = true)")
    return "READ COMMITTED transactions run as READ COMMITTED"


def probe_scram(p: Probe) -> str:
    """Does the server store a pre-hashed SCRAM verifier as given? ``password_encryption`` does
    not say: it only governs how a cleartext password is hashed."""
    setting = engines.named(p.server.engine).pre_hashed_password_setting
    if setting:
        # While this setting is off, CockroachDB takes 'SCRAM-SHA-256$...' for a cleartext
        # password and hashes it: the rotation would set a password nobody knows.
        try:
            with p.scratch():
                row = p.conn.execute(f"SHOW CLUSTER SETTING {setting}").fetchone()
        except pgerrors.InsufficientPrivilege:
            raise Unverified(f"this login may not read {setting} (it needs "
                             "VIEWCLUSTERSETTING); its default, true, accepts pre-hashed "
                             "verifiers") from None
        value = str(row[0]).lower() if row else "?"
        if value not in ("true", "t", "on"):
            raise Missing(f"{setting} is {value}: a pre-hashed verifier would be "
                          f"stored as a cleartext password (SET CLUSTER SETTING "
                          f"{setting} = true)")
        return f"{setting} = true"
    # PostgreSQL: set a throwaway verifier on this login, in a transaction rolled back (a role
    # may change its own password); read it back where this login may read pg_authid.
    from cesar.credentials import new_password
    from cesar.rotate import scram

    verifier = scram.verifier(new_password())
    try:
        with p.scratch():
            p.conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(
                sql.Literal(verifier)))
            readable = p.conn.execute(
                "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')").fetchone()
            stored = p.conn.execute(
                "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = current_user"
            ).fetchone() if readable and readable[0] else None
    except pgerrors.InsufficientPrivilege:
        raise Unverified("this login may not change its own password, so whether a pre-hashed "
                         "verifier is accepted was not tried (PostgreSQL accepts one since 10)"
                         ) from None
    if stored is None:
        return "a pre-hashed SCRAM-SHA-256 verifier is accepted by ALTER ROLE"
    if stored[0] != verifier:
        raise Missing("the server did not store a pre-hashed SCRAM-SHA-256 verifier as given")
    return "a pre-hashed SCRAM-SHA-256 verifier is stored as given"


def _v(text: str) -> Version:
    return Version.parse(text)


#: Every capability the project relies on, with its minimum CockroachDB release and the source.
CAPABILITIES: tuple[Capability, ...] = (
    Capability("server-release", "everything (the pinned release; why: cesar/cockroach.py)",
               cockroach.MINIMUM, cockroach.SUPPORT_SOURCE, probe_release),
    Capability("plpgsql-trigger-function", "the sync's capture (migration 011)", _v("24.3"),
               "https://www.cockroachlabs.com/docs/releases/v24.3, triggers; Preview until "
               "v26.2, cockroachdb/docs#23209", probe_plpgsql_trigger_function),
    Capability("trigger-catalog", "the sync's start-up check (cesar/sync/tables.py)", _v("25.3"),
               "https://github.com/cockroachdb/cockroach/pull/147248, pg_trigger populated",
               probe_trigger_catalog),
    Capability("set-config", "the sync's apply marker and lock_timeout (cesar/sync/apply.py)",
               _v("21.2"), "https://www.cockroachlabs.com/docs/v21.2/set-vars, custom dotted "
               "session variables", probe_set_config),
    Capability("for-update-nowait", "the sync's locked apply (cesar/sync/apply.py)", _v("20.2"),
               "https://github.com/cockroachdb/cockroach/issues/40476, NOWAIT in v20.2",
               probe_nowait),
    Capability("for-update-skip-locked", "the sync's apply and capture under READ COMMITTED",
               _v("24.1"), "https://github.com/cockroachdb/cockroach/pull/85720, SKIP LOCKED in "
               "v23.1; with READ COMMITTED from v24.1, cockroachdb/cockroach#115057",
               probe_skip_locked),
    Capability("json-populate-recordset", "the sync's row transport (cesar/sync/apply.py)",
               _v("21.2"), "https://github.com/cockroachdb/cockroach/pull/70115",
               probe_json_populate_recordset),
    Capability("read-committed", "the sync's sessions (cesar/sync/run.py)", _v("24.1"),
               "https://www.cockroachlabs.com/docs/v24.1/read-committed, GA in v24.1",
               probe_read_committed),
    Capability("scram-sha-256", "password rotation's pre-hashed verifiers (cesar/rotate/scram.py)",
               _v("22.2"), "https://www.cockroachlabs.com/docs/v22.2/security-reference/scram-"
               "authentication", probe_scram),
)


# ==================================================================== running it
def check(conn: psycopg.Connection, tables: Sequence[str], *, url: str = "",
          version_text: str | None = None,
          capabilities: Sequence[Capability] = CAPABILITIES) -> Report:
    """Probe every capability on ``conn`` (autocommit). ``version_text`` stands for the server's
    own ``version()``, to judge a server by another release's minimums."""
    if not conn.autocommit:
        raise RuntimeError("doctor.check needs an autocommit connection")
    row = conn.execute("SELECT version()").fetchone()
    actual = cockroach.parse_server_version(str(row[0]) if row else "")
    # The probes speak the dialect of the server actually connected; the release gate judges
    # by ``version_text`` when given.
    server = actual if version_text is None else cockroach.parse_server_version(version_text)
    report = Report(urls.mask(url) or "", server)
    probe = Probe(conn, actual, tuple(tables), judged=server)
    for capability in capabilities:
        try:
            warning = False
            try:
                detail = capability.probe(probe)
            except Unverified as exc:
                detail, warning = f"not verified: {exc}", True
            gate = engines.named(server.engine).release_gated and (
                server.version is None or not server.version.at_least(capability.minimum))
            if gate and capability.name != "server-release":
                raise Missing(f"the server is {server.short}")
            report.results.append(Result(capability, True, detail, warning,
                                         engine=server.engine))
        except Missing as exc:
            report.results.append(Result(capability, False, str(exc), engine=server.engine))
        except psycopg.Error as exc:
            first = first_line(exc)
            what = f"{first} (SQLSTATE {exc.sqlstate or '?'})"
            if conn.closed or exc.sqlstate is None or exc.sqlstate[:2] in LOST:
                # A lost connection or a timeout says nothing about the capability.
                raise OperationFailed(f"doctor: the probe of {capability.name} did not "
                                      f"finish: {what}; check the server and run it again"
                                      ) from None
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            if exc.sqlstate in UNSUPPORTED:
                report.results.append(Result(capability, False, f"the server does not support "
                                             f"the probe: {what}", engine=server.engine))
            else:  # a permission, a lock, a bad state: the login cannot use it, but why is known
                report.results.append(Result(capability, False, f"the server refused the "
                                             f"probe: {what}", probed=False,
                                             engine=server.engine))
    return report


#: SQLSTATEs that mean the server lacks the feature: feature_not_supported, syntax_error,
#: undefined_function.
UNSUPPORTED = frozenset({"0A000", "42601", "42883"})
#: SQLSTATE classes that mean the probe never got an answer: connection exception (08),
#: operator intervention (57: query_canceled by statement_timeout, admin_shutdown, ...).
LOST = frozenset({"08", "57"})


def target(settings: Settings, url: str | None, local: bool) -> db.Endpoint:
    """The database to check, with where its URL came from; the TLS rule applies to every one."""
    env = settings.environment
    if url is not None:
        return db.command_target(settings, url)
    if local:
        endpoint = db.resolve(settings, "local")
        if endpoint is None:
            raise ConfigError("no local database: set LOCAL_DB_URL or run `invoke up`")
        db.require_tls(endpoint.url, endpoint.variable, env, local=True)
        return endpoint
    if env != "development":
        return db.route(settings).primary
    endpoint = db.resolve(settings, "cluster")
    if endpoint is None:
        raise ConfigError("no cluster to check: set COCKROACH_DB_URL, pass --url, or run "
                          "`invoke up`")
    return endpoint


def run(settings: Settings, tables: Sequence[str], url: str | None = None,
        local: bool = False) -> Report:
    endpoint = target(settings, url, local)
    conn = db.dial(endpoint, describe=f"cannot connect to {endpoint.masked} ({endpoint.variable})",
                   **{**db.connect_kwargs(settings), "autocommit": True})
    with conn:
        return check(conn, tables, url=endpoint.url)


# ==================================================================== the command
@click.command("doctor")
@click.option("--url", default=None, metavar="URL",
              help="The server to check. Default: the cluster (COCKROACH_DB_URL, or the "
                   "embedded stand-in in development).")
@click.option("--local", is_flag=True, help="Check the local database (LOCAL_DB_URL) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor_command(url: str | None, local: bool, as_json: bool) -> None:
    """Check that the server has every capability the project relies on (exit 1 if not)."""
    from cesar.config import load_settings
    from cesar.sync.tables import load_sync_settings

    report = run(load_settings(), load_sync_settings().tables, url, local)
    if as_json:
        from cesar.console import emit_json

        emit_json(report.as_dict())
    else:
        click.echo(f"server  {report.server.short} at {report.url} (pinned "
                   f"{cockroach.PINNED_RELEASE}, oldest supported {cockroach.MINIMUM.series})")
        for r in report.results:
            state = "MISSING" if not r.present else "warning" if r.warning else "present"
            click.echo(f"  {r.capability.name:<26} {state:<8} {r.detail}")
    if not report.ok:
        raise OperationFailed(report.refusal())
