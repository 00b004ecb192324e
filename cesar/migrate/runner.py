"""The migration runner.

Migrations are ``NNN_name.up.sql`` / ``NNN_name.down.sql`` pairs in a directory, applied in
name order and tracked in ``schema_migrations``. One runner at a time holds the lease; the
others wait and then find nothing pending. This module executes; the rest is in its own:

- ``cesar.migrate.files``: the directory and its files (names, checksums, statements)
- ``cesar.migrate.sql``: splitting a file into statements
- ``cesar.migrate.store``: the runner's tables (tracking rows, events, lease row)
- ``cesar.migrate.plan``: files versus tracking rows: what is pending, what is refused
- ``cesar.migrate.lease``: the lease and its heartbeat
- ``cesar.migrate.regions``: ``--regional-by-row``: which tables, which statements, refusals
- ``cesar.migrate.cli``: ``cesar migrate ...``

Execution modes (``--mode``):

``transactional`` (PostgreSQL's default)
    A migration's statements, its tracking row and its event commit in one transaction: a
    failure or a crash leaves nothing of it behind.
``per-statement`` (CockroachDB's default)
    CockroachDB runs schema changes reliably only in implicit transactions, one statement each.
    So each DDL statement runs on its own, DML in an explicit transaction together with its
    progress record (retried on SQLSTATE 40001), and progress is recorded after every statement.
    A failed or interrupted migration resumes at the first statement not recorded, after
    checking that the statements already run did not change. A statement interrupted between
    running and being recorded runs again: migrations are written with ``IF [NOT] EXISTS``, and
    for DDL that has no such form the first statement of a resumed interrupted run is accepted
    as done when it fails only because its effect is already there.

A no-op run (nothing pending) reads the tracking table once and writes nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar import __version__, db
from cesar.config import Settings
from cesar.console import first_line
from cesar.credentials import APP_ROLE
from cesar.db import engines
from cesar.errors import ConfigError, OperationFailed
from cesar.migrate import locks
from cesar.migrate import regions as migrate_regions
from cesar.migrate.files import (
    DEFAULT_DIR,
    PACKAGED_DIR,
    Direction,
    Migration,
    load,
    migration_names,
    resolve_dir,
    sha256_file,
)
from cesar.migrate.lease import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_WAIT_SECONDS,
    Lease,
    LeaseInfo,
    validate_seconds,
)
from cesar.migrate.lease import break_lease as _break_lease
from cesar.migrate.lease import read as read_lease
from cesar.migrate.plan import (
    IN_DOUBT,
    STATEMENT_COMPLETION_UNKNOWN,
    Plan,
    Step,
    check_prefix,
    counts,
    first_statements,
    in_doubt_row,
    make_plan,
    rollback_blocked,
)
from cesar.migrate.regions import Catalog, LocalityPlan, TableChange
from cesar.migrate.sql import NO_TRANSACTION, Statement, prefix_checksum
from cesar.migrate.store import (
    APPLIED_STATUSES,
    EVENTS_TABLE,
    LEASE_TABLE,
    MISSING,
    TRACKING_TABLE,
    Identity,
    Tracked,
    ensure_tables,
    insert_event,
    read_tracked,
    widen_events_check,
)

__all__ = [
    "APPLIED_STATUSES", "DEFAULT_DIR", "EVENTS_TABLE", "LEASE_TABLE", "MODES", "PACKAGED_DIR",
    "TRACKING_TABLE", "LocalityPlan", "Migration", "MigrationFailed", "Plan", "RunReport",
    "Runner", "Step",
    "Tracked", "apply_all", "connect", "execute_statement", "load", "make_plan",
    "migration_names", "open_runner",
    "plural", "resolve_dir", "sha256_file", "summary",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

Mode = Literal["auto", "transactional", "per-statement"]
MODES: tuple[Mode, ...] = ("auto", "transactional", "per-statement")


class MigrationFailed(OperationFailed):
    """A migration's statement failed; the failure is recorded in ``schema_migrations``."""



# ==================================================================== counts (/health, /metrics)
def summary(conn: psycopg.Connection, migrations_dir: Path | None = None) -> dict[str, int]:
    """Counts for /health and /metrics: ``{"applied", "total", "failed", "pending"}``.

    One query of the tracking table; never creates it (before the first run: nothing applied,
    ``total`` from the files). ``total`` is the union of the files and the applied names, so a
    database ahead of this checkout still reads ``applied <= total``. ``pending`` includes
    failed migrations (they are not applied).
    """
    return counts(set(migration_names(migrations_dir)), _tracked_statuses(conn))


def _tracked_statuses(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """``(name, status)`` of every tracked migration; empty when the table does not exist."""
    query = f"SELECT name, status FROM {TRACKING_TABLE}"
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if idle:
        try:
            rows = conn.execute(query).fetchall()
        except MISSING:
            if not conn.autocommit:
                conn.rollback()  # we opened that transaction; the caller's state is unchanged
            return []
        if not conn.autocommit:
            conn.rollback()  # read-only: leave the connection idle as we found it
        return [(str(n), str(s)) for n, s in rows]
    try:
        with conn.transaction():  # a savepoint: an error must not abort the caller's transaction
            rows = conn.execute(query).fetchall()
    except MISSING:
        return []
    return [(str(n), str(s)) for n, s in rows]


# ==================================================================== connecting
def endpoint_of(target: str | db.Endpoint, settings: Settings, source: str = "--url"
                ) -> db.Endpoint:
    """``target`` as an endpoint: a bare URL is one given by ``source`` (``--url``), checked
    like every flag's URL."""
    if isinstance(target, db.Endpoint):
        return target
    return db.command_target(settings, target, source)


def connect(target: str | db.Endpoint, settings: Settings, source: str = "--url"
            ) -> psycopg.Connection:
    """An autocommit connection for the runner, without the API's statement timeout (a schema
    change may rightly take minutes). Failures name the URL with its password masked, and
    where it came from."""
    endpoint = endpoint_of(target, settings, source)
    # An endpoint handed over whole obeys the same rule as the route
    db.require_tls(endpoint.url, endpoint.variable, settings.environment)
    return db.dial(endpoint, describe=f"cannot connect to {endpoint.masked} ({endpoint.variable})",
                   **{**db.connect_kwargs(settings), "autocommit": True,
                      "options": "-c statement_timeout=0"})


# ==================================================================== reports
@dataclass
class RunReport:
    """What ``up`` or ``down`` did (or, with ``dry_run``, would do)."""

    direction: Direction
    dry_run: bool
    mode: str
    plan: Plan
    done: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lease: LeaseInfo | None = None
    steps: list[Step] = field(default_factory=list)
    locality: LocalityPlan | None = None  # with --regional-by-row
    lock_timeout: float | None = None  # seconds each statement may wait for a lock (0: no limit)
    lock_waits: list[locks.LockWait] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        plan = self.plan
        steps = []
        for step in self.steps:
            item: dict[str, Any] = {
                "name": step.name, "direction": step.direction,
                "checksum": step.migration.file_checksum(step.direction),
                "resume": step.resume, "start_at_statement": step.start + 1,
            }
            if self.dry_run:
                item["refused"] = step.refused
                item["mode"] = None
                item["statements"] = []
                if step.refused is None:
                    script = step.migration.script(step.direction)
                    item["mode"] = step_mode(self.mode, script.transaction, step.start)
                    item["statements"] = [
                        {"index": s.index, "line": s.line, "kind": s.kind, "sql": s.sql,
                         "idempotent": s.idempotent, "no_transaction": s.no_transaction}
                        for s in script.statements[step.start:]
                    ]
            steps.append(item)
        return {
            "direction": self.direction, "dry_run": self.dry_run, "mode": self.mode,
            **plan.counts,
            "summary": plan.line(),
            "steps": steps,
            "done": self.done,
            "applied_checksums": {
                n: plan.checksum_status(n) for n, t in sorted(plan.tracked.items()) if t.applied
            },
            "problems": plan.problems,
            "lease": self.lease.as_dict() if self.lease else None,
            "seconds": round(self.seconds, 3),
            "regional_by_row": self.locality.as_dict() if self.locality else None,
            "lock_timeout_s": self.lock_timeout,
            "lock_waits": [w.as_dict() for w in self.lock_waits],
        }


# ==================================================================== the runner
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Runner:
    """Applies, rolls back and inspects migrations on one database.

    ``conn`` is an autocommit connection; ``connect`` opens another one like it (the lease's
    heartbeat runs on its own connection). ``progress`` receives one line per step.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        connect: Callable[[], psycopg.Connection],
        migrations_dir: Path | None = None,
        mode: Mode = "auto",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        reason: str | None = None,
        progress: Progress = _quiet,
        identity: Identity | None = None,
        settings: Settings | None = None,
        group_role: str = APP_ROLE,
        lock_timeout: float | None = None,
        lock_retries: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
        validate_seconds(lease_seconds, wait_seconds)
        if not conn.autocommit:
            raise RuntimeError("Runner needs an autocommit connection")
        # No server-side prepared statements of psycopg's own on this connection: the session
        # reset between migrations deallocates every prepared statement (a migration may
        # PREPARE), which would pull them from under psycopg's cache.
        conn.prepare_threshold = None
        self.conn = conn
        self.connect = connect
        self.migrations_dir = resolve_dir(migrations_dir)
        self.mode: Mode = mode
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.reason = reason
        self.progress = progress
        self.identity = identity or Identity()
        self._held: Lease | None = None
        self._engine: db.Engine | None = None
        self._mode_problem: str | None = None  # read once, on CockroachDB in transactional mode
        s = settings or Settings(_env_file=None)  # type: ignore[call-arg]
        self._retry = {"max_attempts": s.retry_max_attempts, "base_delay": s.retry_base_delay,
                       "max_delay": s.retry_max_delay}
        self.lock_timeout = s.migrate_lock_timeout if lock_timeout is None else lock_timeout
        self.lock_retries = s.migrate_lock_retries if lock_retries is None else lock_retries
        locks.validate(self.lock_timeout, self.lock_retries)
        self.lock_waits: list[locks.LockWait] = []  # this run's, for the report
        self._watch: locks.LockWatch | None = None
        self.group_role = group_role
        self._assume_group_role()

    # ---------------------------------------------------------------- reading
    def plan(self, migrations: list[Migration] | None = None) -> Plan:
        """Files versus the tracking table: one query."""
        return make_plan(migrations if migrations is not None else load(self.migrations_dir),
                         read_tracked(self.conn))

    def engine(self) -> db.Engine:
        if self._engine is None:
            self._engine = db.detect_engine(self.conn)
        return self._engine

    def traits(self) -> engines.Engine:
        """What differs on this connection's engine (transactional DDL, session settings)."""
        return engines.named(self.engine())

    def effective_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return self.traits().default_mode

    def lease_info(self) -> LeaseInfo | None:
        return read_lease(self.conn)

    # ---------------------------------------------------------------- up
    def up(self, *, dry_run: bool = False, regional_by_row: bool = False) -> RunReport:
        """Apply the pending migrations; with ``regional_by_row``, then make the declared tables
        REGIONAL BY ROW (``cesar.migrate.regions``). Its refusals (a bad table list, a
        CockroachDB database without regions) come before any migration runs."""
        if not regional_by_row:
            return self._up(dry_run)
        tables = migrate_regions.validate_tables(migrate_regions.REGIONAL_TABLES)
        catalog = self._locality_catalog(tables)
        migrate_regions.plan(catalog, tables, pending_migrations=True)  # refuses, or goes on
        report = self._up(dry_run)
        if report.done:  # the migrations may have created or changed tables
            catalog = self._locality_catalog(tables)
        locality = migrate_regions.plan(catalog, tables,
                                        pending_migrations=dry_run and bool(report.steps),
                                        statements=self._locality_statements)
        if locality.changes and not dry_run:
            locality = self._regional_by_row(tables)
        report.locality = locality
        return report

    def _up(self, dry_run: bool) -> RunReport:
        started = time.perf_counter()
        migrations = load(self.migrations_dir)
        plan = make_plan(migrations, read_tracked(self.conn))
        if dry_run:
            _check_files(plan, plan.pending)
            if plan.pending and (problem := self._session_problem()):
                plan.problems.append(problem)
            report = RunReport("up", True, self.effective_mode(), plan, steps=plan.pending,
                               lease=self.lease_info() if plan.tables_exist else None)
            report.seconds = time.perf_counter() - started
            return report
        plan.raise_problems()
        report = RunReport("up", False, self.mode, plan, lock_timeout=self.lock_timeout,
                           lock_waits=self.lock_waits)
        for step in plan.pending:  # a file that cannot be parsed stops the run before it starts
            step.migration.statements("up")
        if not plan.pending:  # the no-op: one read, no lease, no write
            report.seconds = time.perf_counter() - started
            return report
        report.mode = self.effective_mode()
        self._tune_session()  # may refuse the session: before anything is created
        ensure_tables(self.conn)
        with self._lease():
            plan = make_plan(migrations, read_tracked(self.conn))  # others may have run meanwhile
            plan.raise_problems()
            report.steps = plan.pending
            for step in plan.pending:
                if self._run_step(step, report.mode):
                    report.done.append(step.name)
            report.plan = make_plan(migrations, read_tracked(self.conn))
        report.seconds = time.perf_counter() - started
        return report

    # ---------------------------------------------------------------- regional by row
    def _locality_catalog(self, tables: tuple[str, ...]) -> Catalog:
        """What the engine says (the one engine-specific read; a test may stand in for it)."""
        return migrate_regions.read_catalog(self.conn, self.engine(), tables)

    def _locality_statements(self, table: str, primary_region: str) -> tuple[str, ...]:
        return migrate_regions.statements_for(table, primary_region)

    def _regional_by_row(self, tables: tuple[str, ...]) -> LocalityPlan:
        """Convert what is left to convert, under the lease: another runner may have done it
        meanwhile, so the catalog is read again once the lease is held."""
        ensure_tables(self.conn)
        with self._lease() as lease:
            locality = migrate_regions.plan(self._locality_catalog(tables), tables,
                                            statements=self._locality_statements)
            for change in locality.changes:
                self._set_locality(lease, locality, change)
                locality.done.append(change.table)
        if not locality.done:
            self.progress("regional-by-row: already done by another runner")
        return locality

    def _set_locality(self, lease: Lease, locality: LocalityPlan, change: TableChange) -> None:
        """One table: each statement in its own implicit transaction, then one event."""
        total = len(change.statements)
        self.progress(f"setting {change.table} {migrate_regions.REGIONAL_BY_ROW} "
                      f"({plural(total, 'statement')}, was {change.before or 'no locality'})")
        lease.renew(migration=f"regional-by-row {change.table}")
        started = time.perf_counter()
        for index, text in enumerate(change.statements, 1):
            lease.check()
            st = Statement(index, 0, text)
            t0 = time.perf_counter()
            try:
                self._execute_implicit(st)
            except _StatementError as err:
                self._locality_failed(locality, change, st, err.error)
            self.progress(f"  [{index}/{total}] {st.summary(90)} "
                          f"({(time.perf_counter() - t0) * 1000:.0f} ms)")
        ms = int((time.perf_counter() - started) * 1000)
        self._locality_event("set-locality", {
            "table": change.table, "locality": migrate_regions.REGIONAL_BY_ROW,
            "previous": change.before, "statements": list(change.statements),
            "duration_ms": ms, "primary_region": locality.primary_region,
            "regions": list(locality.regions)})

    def _locality_event(self, event: str, detail: dict[str, Any]) -> None:
        def work(conn: psycopg.Connection) -> None:
            self._lease_held().check(conn)
            insert_event(conn, self.identity, event, None, self.reason, detail)

        try:
            db.run_transaction(self.conn, work, **self._retry)
        except pgerrors.CheckViolation:  # an events table from before "set-locality" existed
            widen_events_check(self.conn)
            db.run_transaction(self.conn, work, **self._retry)

    def _locality_failed(self, locality: LocalityPlan, change: TableChange, st: Statement,
                         exc: psycopg.Error) -> NoReturn:
        done = locality.done
        kept = (f"{', '.join(done)} {'is' if len(done) == 1 else 'are'} REGIONAL BY ROW and "
                if done else "")
        connected = not self.conn.closed and exc.sqlstate is not None \
            and not exc.sqlstate.startswith("08")
        if connected:
            self._locality_event("fail", {
                "table": change.table, "statement": st.index, "sql": st.sql,
                "sqlstate": exc.sqlstate, "message": first_line(exc)})
        raise OperationFailed(
            f"setting {change.table} REGIONAL BY ROW failed at statement {st.index}/"
            f"{len(change.statements)} ({st.summary(70)}) with SQLSTATE {exc.sqlstate}: "
            f"{first_line(exc)}; {kept}the next `cesar migrate up --regional-by-row` "
            "continues with the tables not yet converted (each statement is idempotent)"
        ) from None

    # ---------------------------------------------------------------- down
    def down(self, *, steps: int | None = None, to: str | None = None,
             dry_run: bool = False) -> RunReport:
        """Roll back the last ``steps`` applied migrations (default 1), or all after ``to``."""
        if steps is not None and to is not None:
            raise ConfigError("pass either --steps N or --to NAME, not both")
        if steps is not None and steps < 1:
            raise ConfigError(f"--steps {steps} must be at least 1")
        started = time.perf_counter()
        migrations = load(self.migrations_dir)
        plan = make_plan(migrations, read_tracked(self.conn))
        targets = self._rollback_steps(plan, steps if to is None else None, to)
        if dry_run:
            _check_files(plan, targets)
            if targets and (problem := self._session_problem()):
                plan.problems.append(problem)
            report = RunReport("down", True, self.effective_mode(), plan, steps=targets,
                               lease=self.lease_info() if plan.tables_exist else None)
            report.seconds = time.perf_counter() - started
            return report
        report = RunReport("down", False, self.mode, plan, lock_timeout=self.lock_timeout,
                           lock_waits=self.lock_waits)
        for step in targets:
            step.migration.statements("down")
        if not targets:
            report.seconds = time.perf_counter() - started
            return report
        report.mode = self.effective_mode()
        self._tune_session()
        with self._lease():
            plan = make_plan(migrations, read_tracked(self.conn))
            targets = self._rollback_steps(plan, steps if to is None else None, to)
            report.steps = targets
            for step in targets:
                if self._run_step(step, report.mode):
                    report.done.append(step.name)
            report.plan = make_plan(migrations, read_tracked(self.conn))
        report.seconds = time.perf_counter() - started
        return report

    def _rollback_steps(self, plan: Plan, steps: int | None, to: str | None) -> list[Step]:
        """Newest first: interrupted rollbacks, then applied or partially applied migrations."""
        rows = plan.tracked
        if to is not None and to not in rows and to not in plan.by_name:
            raise ConfigError(f"--to {to}: no such migration; see `cesar migrate status`")
        candidates = sorted(
            (t for t in rows.values()
             if t.applied or t.interrupted_rollback or (t.partial and t.status == "failed")),
            key=lambda t: t.name, reverse=True,
        )
        chosen = [t for t in candidates if t.name > to] if to is not None else \
            candidates[: steps or 1]
        out: list[Step] = []
        for row in chosen:
            m = plan.by_name.get(row.name)
            if m is None:
                raise OperationFailed(
                    f"cannot roll back {row.name}: its files are not in {self.migrations_dir}"
                )
            if m.down_path is None:
                raise OperationFailed(
                    f"cannot roll back {row.name}: {m.up_path.with_name(row.name + '.down.sql')} "
                    "is missing; write it (nothing was rolled back)"
                )
            if row.applied and not m.matches(row.checksum):
                raise OperationFailed(
                    f"cannot roll back {row.name}: {m.up_path} changed after it was applied "
                    f"(applied sha256 {row.checksum}, file sha256 {m.checksum}), so its down file "
                    "may not match what is in the database; restore the file, or accept it with "
                    f"`cesar migrate repair {row.name} --reason TEXT` (nothing was rolled back)"
                )
            step = Step(m, "down", previous=row)
            if row.interrupted_rollback:
                step.resume = "failed" if row.status == "failed" else "interrupted"
                if in_doubt_row(row):
                    step.resume = IN_DOUBT
                down_sum = m.file_checksum("down")
                if (row.status == "failed" and row.attempt_checksum == down_sum
                        and not row.resumable):
                    raise OperationFailed(rollback_blocked(row, m))
                if row.statements_done:
                    problem = check_prefix(row, m, "down")
                    if problem:
                        raise OperationFailed(problem)
                    step.start = row.statements_done
            out.append(step)
        return out

    # ---------------------------------------------------------------- repair, mark-applied
    def repair(self, name: str, reason: str) -> str:
        """Accept the file as it is now: a drifted checksum, or a failure to retry."""
        _require_reason(reason, "repair")
        m = self._migration(name)
        ensure_tables(self.conn)

        def work(conn: psycopg.Connection) -> str:
            row = read_tracked(conn) or {}
            t = row.get(name)
            if t is None or t.status == "rolled_back":
                raise ConfigError(f"{name} is {'not applied' if t is None else 'rolled back'}; "
                                  "there is nothing to repair (`cesar migrate up` applies it)")
            if t.applied:
                if t.checksum == m.checksum:
                    return f"{name}: the file matches what was applied; nothing to repair"
                conn.execute(f"UPDATE {TRACKING_TABLE} SET checksum = %s, updated_at = now() "
                             "WHERE name = %s", [m.checksum, name])
                insert_event(conn, self.identity, "repair", name, reason,
                             {"old_checksum": t.checksum, "new_checksum": m.checksum})
                return (f"{name}: accepted the changed file (sha256 {t.checksum[:12]}… -> "
                        f"{m.checksum[:12]}…)")
            direction: Direction = "down" if t.direction == "down" else "up"
            statements = m.statements(direction)
            done = min(t.statements_done, len(statements))
            conn.execute(
                f"UPDATE {TRACKING_TABLE} SET resumable = true, attempt_checksum = %s, "
                "statements_done = %s, progress_checksum = %s, updated_at = now() WHERE name = %s",
                [m.file_checksum(direction), done, prefix_checksum(statements, done), name],
            )
            insert_event(conn, self.identity, "repair", name, reason,
                         {"status": t.status, "direction": direction, "statements_done": done,
                          "error_sqlstate": t.error_sqlstate, "error_message": t.error_message})
            verb = "`cesar migrate up`" if direction == "up" else "`cesar migrate down`"
            return (f"{name}: the {t.status} {'rollback' if direction == 'down' else 'migration'}"
                    f" will run again with {verb}, from statement {done + 1}")

        with self._lease():
            return db.run_transaction(self.conn, work, **self._retry)

    def mark_applied(self, name: str, reason: str) -> str:
        """Record a migration as applied without running it (its objects already exist)."""
        _require_reason(reason, "mark-applied")
        m = self._migration(name)
        ensure_tables(self.conn)

        def work(conn: psycopg.Connection) -> str:
            t = (read_tracked(conn) or {}).get(name)
            if t is not None and t.applied:
                return f"{name} is already applied ({t.status}); nothing to do"
            conn.execute(
                f"INSERT INTO {TRACKING_TABLE} (name, checksum, status, direction, mode, "
                "attempt_checksum, statements_total, statements_done, started_at, finished_at, "
                "duration_ms, applied_by, applied_from, runner_version) "
                "VALUES (%s, %s, 'baselined', 'up', NULL, %s, %s, %s, now(), now(), 0, "
                "session_user, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, "
                "status = 'baselined', direction = 'up', mode = NULL, "
                "attempt_checksum = excluded.attempt_checksum, "
                "statements_total = excluded.statements_total, "
                "statements_done = excluded.statements_done, progress_checksum = NULL, "
                "resumable = false, error_sqlstate = NULL, error_message = NULL, "
                "error_statement = NULL, error_line = NULL, started_at = now(), "
                "finished_at = now(), duration_ms = 0, applied_by = session_user, "
                "applied_from = excluded.applied_from, runner_version = excluded.runner_version, "
                "holder = NULL, updated_at = now()",
                [name, m.checksum, m.checksum, len(m.statements("up")), len(m.statements("up")),
                 self.identity.host, __version__],
            )
            insert_event(conn, self.identity, "mark-applied", name, reason,
                         {"checksum": m.checksum, "previous_status": t.status if t else None})
            return f"{name} marked as applied (baselined); its statements were not run"

        with self._lease():
            return db.run_transaction(self.conn, work, **self._retry)

    def break_lease(self, *, force: bool, reason: str | None) -> LeaseInfo | None:
        return _break_lease(self.conn, self.identity, force=force, reason=reason)

    def _migration(self, name: str) -> Migration:
        for m in load(self.migrations_dir):
            if m.name == name:
                return m
        raise ConfigError(f"no migration named {name} in {self.migrations_dir}; "
                          "see `cesar migrate status`")

    # ---------------------------------------------------------------- executing
    @contextmanager
    def _lease(self) -> Iterator[Lease]:
        def waiting(holder: LeaseInfo) -> None:
            self.progress(f"waiting for the migration lease held by {holder.describe()}")

        lease = Lease.acquire(self.conn, self.connect, self.identity, seconds=self.lease_seconds,
                              wait_seconds=self.wait_seconds, on_wait=waiting)
        self._held = lease
        try:
            yield lease
        except psycopg.Error as exc:
            # A runner paused inside a transaction past its lease finds its session ended by
            # the server (idle_in_transaction_session_timeout, set per migration): say so.
            lost = lease.explain(exc)
            if lost is not None:
                raise lost from None
            raise
        finally:
            self._held = None
            if self._watch is not None:
                self._watch.close()
            lease.release()

    def _tune_session(self) -> None:
        """On PostgreSQL 14+, have the server notice a dead runner within seconds (and abort its
        transaction) instead of only when it next writes to the socket. CockroachDB has no such
        setting and cancels a session's work when its connection closes.

        Refuses a session with ``standard_conforming_strings`` off (read from the parameter
        the server reports at connection: no round trip): the statements were split with it on.
        """
        problem = self._session_problem()
        if problem:
            raise ConfigError(problem)
        for statement in self.traits().liveness_settings:
            with suppress(psycopg.Error):  # absent from older releases
                self.conn.execute(statement)  # type: ignore[arg-type]

    def _session_problem(self) -> str | None:
        if (self.effective_mode() == "transactional" and not self.traits().transactional_ddl
                and self._mode_problem is None):
            version = self.conn.execute("SELECT version()").fetchone()
            self._mode_problem = transactional_problem(
                str(version[0]) if version else "", self._autocommit_before_ddl()) or ""
        if self._mode_problem:
            return self._mode_problem
        if self.conn.info.parameter_status("standard_conforming_strings") == "off":
            return ("the server runs with standard_conforming_strings = off, so backslashes in "
                    "'...' strings would end them elsewhere than the runner read them; set it to "
                    "on for the runner's login (ALTER ROLE ... SET standard_conforming_strings = "
                    "on)")
        return None

    def _assume_group_role(self) -> None:
        """Run as the group role both logins are members of (``SET ROLE cesar_app``), so that
        what a migration creates is owned by that role and either login can later alter, drop
        or replace it (an object belongs to the role that created it, on both engines, and
        only its owner may DROP or CREATE OR REPLACE it). The embedded PostgreSQL stack's
        logins start there already (a role default); CockroachDB has no such default, hence
        the statement. A login that is not a member (or a database without the role) runs as
        itself."""
        if self.conn.closed:
            return
        try:
            self.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.group_role)))
        except psycopg.Error as exc:
            if self.conn.broken:
                raise
            log.info("running as the login, not %s: %s", self.group_role, first_line(exc))

    def _autocommit_before_ddl(self) -> str | None:
        """The session's ``autocommit_before_ddl`` (``on``/``off``); None where the release
        has no such setting."""
        try:
            row = self.conn.execute("SHOW autocommit_before_ddl").fetchone()
        except psycopg.Error:
            return None
        return str(row[0]).lower() if row else None

    def _reset_session(self) -> None:
        """Undo every session setting a migration made (``SET search_path``, ``SET ROLE``, ...)
        and its prepared statements, so nothing of it reaches the next migration or the
        runner's own statements. ``RESET ALL`` and ``DEALLOCATE ALL`` exist on both engines;
        ``RESET ALL`` leaves the role alone on PostgreSQL, hence ``RESET ROLE`` (back to the
        login's default, ``cesar_app``). DISCARD ALL would also end the role the login's
        default switched to, and runs in no transaction on CockroachDB."""
        if self.conn.closed:
            return
        for statement in ("RESET ALL", "RESET ROLE", "DEALLOCATE ALL"):
            try:
                self.conn.execute(statement)  # type: ignore[arg-type]
            except psycopg.Error as exc:
                # A CockroachDB release without one of them: say so rather than stop the run
                # (checked against CockroachDB's documentation only, not run here).
                if self.traits().strict_session_reset:
                    raise
                self.progress(f"session reset: {statement} failed on this CockroachDB "
                              f"({first_line(exc)}); settings of one migration may reach the "
                              "next")
        self._assume_group_role()
        self._tune_session()

    def _run_step(self, step: Step, mode: str) -> bool:
        """Apply or roll back one migration. False when another runner already did it."""
        m, direction = step.migration, step.direction
        script = m.script(direction)
        statements = script.for_engine(self.engine())
        effective = step_mode(mode, script.transaction, step.start)
        verb = "applying" if direction == "up" else "rolling back"
        after = {"failed": "after a failed run", "interrupted": "after an interrupted run",
                 IN_DOUBT: "after a statement whose commit was in doubt"}
        resume = (f", resuming at statement {step.start + 1} {after[step.resume]}"
                  if step.start and step.resume else
                  (f", starting again {after[step.resume]}" if step.resume else ""))
        count = plural(len(statements), "statement")
        if script.engine is not None and not statements:
            count += f": the file is for {script.engine} only"
        self.progress(f"{verb} {m.name} ({effective}, {count}{resume})")
        self._lease_held().renew(migration=m.name)  # `lock status` names what is being applied
        # For the migration's statements (a SET in the file comes later and wins); the session
        # reset after the migration ends it.
        self.conn.execute(locks.setting(self.lock_timeout))  # type: ignore[arg-type]
        # A runner paused inside a migration's transaction would keep the tables it locked
        # locked; past its lease it can never commit (it is fenced), so the server ends that
        # transaction then. The runner never idles in a transaction otherwise.
        with suppress(psycopg.Error):
            self.conn.execute(locks.idle_setting(self.lease_seconds))  # type: ignore[arg-type]
        started = time.perf_counter()
        if effective == "transactional":
            ran = self._transactional(step, statements, started)
        else:
            ran = self._per_statement(step, statements, started, effective)
        self._reset_session()
        ms = (time.perf_counter() - started) * 1000
        if ran:
            self.progress(f"{'applied' if direction == 'up' else 'rolled back'} {m.name} "
                          f"in {ms:.0f} ms")
        else:
            self.progress(f"{m.name}: already done by another runner")
        return ran

    # -- transactional: statements, tracking row and event in one transaction
    def _transactional(self, step: Step, statements: list[Statement], started: float) -> bool:
        lease = self._lease_held()

        def work(conn: psycopg.Connection) -> bool:
            lease.check()
            if not self._claim(conn, step, "transactional", statements):
                return False
            for st in statements:
                execute_statement(conn, st)
            self.finish_step(conn, step, "transactional", len(statements), started)
            lease.check(conn)  # fenced last: the lease row is held FOR SHARE only to the commit
            return True

        try:
            return self._lock_retrying(
                step, "transactional", statements,
                lambda: db.run_transaction(self.conn, work, **self._retry))
        except _StatementError as err:
            self._statement_failed(step, "transactional", statements, err, done=0)
            raise AssertionError("unreachable") from None
        except psycopg.Error as exc:
            if exc.sqlstate != STATEMENT_COMPLETION_UNKNOWN or self.conn.broken:
                raise
            return self._commit_in_doubt(step, exc)

    def _commit_in_doubt(self, step: Step, exc: psycopg.Error) -> bool:
        """The COMMIT of a transactional migration ended with 40003. Its tracking row was
        written in the same transaction, so reading it says whether it committed."""
        m = step.migration
        row = (read_tracked(self.conn) or {}).get(m.name)
        done = "succeeded" if step.direction == "up" else "rolled_back"
        committed = (row is not None and row.status == done
                     and row.attempt_checksum == m.file_checksum(step.direction))
        detail = {"direction": step.direction, "mode": "transactional", "in_doubt": True,
                  "sqlstate": exc.sqlstate, "message": first_line(exc), "committed": committed}
        def record(c: psycopg.Connection) -> None:
            self._lease_held().check(c)  # fenced like every progress record
            insert_event(c, self.identity, "resume" if committed else "fail", m.name,
                         self.reason, detail)

        db.run_transaction(self.conn, record, **self._retry)
        if committed:
            self.progress(f"{m.name}: its commit was in doubt ({exc.sqlstate}); its tracking row "
                          "shows it committed")
            return True
        what = "migration" if step.direction == "up" else "rollback"
        cmd = "up" if step.direction == "up" else "down --steps 1"
        raise MigrationFailed(
            f"{what} {m.name}: its commit was in doubt (SQLSTATE {exc.sqlstate}: "
            f"{first_line(exc)}) and its tracking row shows it did not commit, so nothing of "
            f"it changed; run `cesar migrate {cmd}` again"
        ) from None

    # -- per-statement: each statement on its own, progress recorded after each
    def _per_statement(self, step: Step, statements: list[Statement], started: float,
                       mode: str = "per-statement") -> bool:
        """``per-statement`` or ``no-transaction`` (a file with that header: every statement
        runs alone, DML included, since some of them can never run in a transaction block)."""
        lease = self._lease_held()
        start = step.start
        alone_always = mode == NO_TRANSACTION

        def claim(conn: psycopg.Connection) -> bool:
            lease.check(conn)
            return self._claim(conn, step, mode, statements)

        if not db.run_transaction(self.conn, claim, **self._retry):
            return False
        if step.resume:
            def resumed(conn: psycopg.Connection) -> None:
                lease.check(conn)  # fenced: a runner that lost the lease records nothing
                insert_event(conn, self.identity, "resume", step.name, self.reason,
                             {"direction": step.direction, "from_statement": start + 1,
                              "previous": step.resume})

            db.run_transaction(self.conn, resumed, **self._retry)
        # the first statement may have run already: the last run was killed after sending it,
        # or the server could not say whether it committed (40003)
        in_doubt = step.resume in ("interrupted", IN_DOUBT)
        own_timeout = any(_OWN_LOCK_TIMEOUT.match(s.sql) for s in statements)
        for st in statements[start:]:
            lease.check()
            t0 = time.perf_counter()
            note = ""
            try:
                if st.alone or alone_always:
                    lease.renew(migration=step.name)
                    skipped: psycopg.Error | None = None
                    try:
                        # Fenced just before the statement: a runner paused past its lease
                        # stops here. The window left (docs/sync.md, "The lease"): from this check's
                        # answer to the statement reaching the server, for this one statement;
                        # its progress record is fenced and fails.
                        def alone(st: Statement = st) -> None:
                            lease.check(self.conn)
                            with self._online(st, own_timeout):
                                self._execute_implicit(st)

                        self._lock_retrying(step, mode, statements, alone)
                    except _StatementError as err:
                        if not (in_doubt and _already_done(st, err.error)):
                            raise
                        skipped = err.error
                    if skipped is not None:
                        by = ("the run whose commit was in doubt" if step.resume == IN_DOUBT
                              else "the interrupted run")
                        note = f", already done by {by}: {skipped.sqlstate}"
                        detail = {"statement": st.index, "in_doubt": True,
                                  "sqlstate": skipped.sqlstate, "message": first_line(skipped)}
                        def skipped_event(c: psycopg.Connection,
                                          d: dict[str, Any] = detail) -> None:
                            lease.check(c)
                            insert_event(c, self.identity, "resume", step.name, self.reason, d)

                        db.run_transaction(self.conn, skipped_event, **self._retry)
                    db.run_transaction(self.conn, lambda c, st=st: self._record_progress(
                        c, step, statements, st.index), **self._retry)
                else:
                    def dml(conn: psycopg.Connection, st: Statement = st) -> None:
                        lease.check()
                        execute_statement(conn, st)
                        self._record_progress(conn, step, statements, st.index)

                    try:
                        self._lock_retrying(step, mode, statements,
                                            lambda dml=dml: db.run_transaction(  # type: ignore[misc]
                                                self.conn, dml, **self._retry))
                    except psycopg.Error as exc:
                        if exc.sqlstate != STATEMENT_COMPLETION_UNKNOWN or self.conn.broken:
                            raise
                        # its progress record was in the same transaction: it says
                        if not self._progress_committed(step, st):
                            raise _StatementError(st, exc) from exc
                        note = f", its commit was in doubt ({exc.sqlstate}) and it committed"
            except _StatementError as err:
                if err.error.sqlstate == STATEMENT_COMPLETION_UNKNOWN:
                    self._in_doubt(step, mode, statements, err, done=st.index - 1)
                self._statement_failed(step, mode, statements, err, done=st.index - 1)
            in_doubt = False
            self.progress(f"  [{st.index}/{len(statements)}] line {st.line}: {st.summary()} "
                          f"({(time.perf_counter() - t0) * 1000:.0f} ms{note})")
        db.run_transaction(self.conn, lambda c: self.finish_step(
            c, step, mode, len(statements), started), **self._retry)
        return True

    def _progress_committed(self, step: Step, st: Statement) -> bool:
        """Whether the transaction that ran ``st`` with its progress record committed."""
        row = (read_tracked(self.conn) or {}).get(step.name)
        return row is not None and row.statements_done >= st.index \
            and row.holder == self.identity.holder

    def _execute_implicit(self, st: Statement) -> None:
        """One DDL statement in its own implicit transaction; 40001 retried like DML."""
        attempts = int(self._retry["max_attempts"])
        for attempt in range(1, attempts + 1):
            try:
                execute_statement(self.conn, st)
                return
            except pgerrors.SerializationFailure:
                if attempt == attempts:
                    raise
                time.sleep(min(float(self._retry["max_delay"]),
                               float(self._retry["base_delay"]) * 2 ** (attempt - 1)))

    # -- lock waits: each attempt waits at most lock_timeout, then rolls back and tries again
    def _watcher(self) -> locks.LockWatch:
        if self._watch is None:
            t = self.lock_timeout
            self._watch = locks.LockWatch(
                self.connect, self.traits().lock_waits_query,
                grace=min(0.2, t / 3) if t else 0.2, interval=min(0.25, t / 3) if t else 0.25)
        return self._watch

    def _lock_retrying(self, step: Step, mode: str, statements: list[Statement],
                       attempt_fn: Callable[[], T]) -> T:
        """``attempt_fn()`` (one statement, or a transactional migration's whole transaction),
        again after a pause each time one of the migration's statements gave up waiting for a
        lock (55P03), at most ``lock_retries`` times. Each failed attempt was rolled back by the
        server, which lets the readers and writers queued behind it through."""
        watch = self._watcher()
        attempt = 1
        while True:
            with watch.watching(self.conn.info.backend_pid):
                try:
                    return attempt_fn()
                except _StatementError as err:
                    if err.error.sqlstate != locks.LOCK_NOT_AVAILABLE or self.conn.broken:
                        raise
                    error = err
            st = error.statement
            last = attempt > self.lock_retries
            wait = locks.LockWait(
                step.name, step.direction, st.index, st.line, attempt, self.lock_timeout,
                watch.seen, None if last else locks.backoff(attempt, self.lock_timeout),
                kept=0 if mode == "transactional" else st.index - 1)
            self.lock_waits.append(wait)
            if last:
                self._lock_exhausted(step, mode, statements, error, wait)
            self.progress(
                f"  [{st.index}/{len(statements)}] line {st.line}: gave up waiting for a lock "
                f"after {self._timeout_text(statements)}: {wait.describe()}; rolled back, retry "
                f"{attempt}/{self.lock_retries} in {wait.retry_in:g} s")
            time.sleep(wait.retry_in or 0)
            attempt += 1

    @contextmanager
    def _online(self, st: Statement, own_timeout: bool) -> Iterator[None]:
        """Run ``st`` without the runner's lock_timeout when it is one of the statements that
        can only run outside a transaction (``CREATE INDEX CONCURRENTLY`` and its kin): they
        wait for older transactions by design without blocking the application, and one that
        gave up would leave an invalid index behind, which ``IF NOT EXISTS`` then skips. A
        file that sets its own lock_timeout keeps it."""
        if st.no_transaction is None or own_timeout or not self.lock_timeout:
            yield
            return
        self.conn.execute(locks.setting(0))  # type: ignore[arg-type]
        try:
            yield
        finally:
            if not (self.conn.closed or self.conn.broken):
                self.conn.execute(locks.setting(self.lock_timeout))  # type: ignore[arg-type]

    def _timeout_text(self, statements: list[Statement]) -> str:
        if any(_OWN_LOCK_TIMEOUT.match(st.sql) for st in statements):
            return "the file's own lock_timeout"
        return f"lock_timeout {self.lock_timeout:g} s" if self.lock_timeout else \
            "a lock request that does not wait (NOWAIT)"

    def _lock_exhausted(self, step: Step, mode: str, statements: list[Statement],
                        err: _StatementError, wait: locks.LockWait) -> NoReturn:
        """No retry left: settle the tracking row so that the next run simply tries again, record
        a ``fail`` event, and raise the one line that says who held the lock."""
        st, exc, m = err.statement, err.error, step.migration
        done = wait.kept
        detail = {"direction": step.direction, "mode": mode, "sqlstate": exc.sqlstate,
                  "message": first_line(exc), "statement": st.index, "line": st.line,
                  "file": str(m.path(step.direction)), "statements_done": done,
                  "lock_timeout_s": self.lock_timeout, "attempts": wait.attempt,
                  "waited_for": wait.waited.as_dict() if wait.waited else None}
        progressed = mode != "transactional" and done > step.start
        if progressed:
            # Statements of this run stay done: recorded as a failure the next run resumes
            # after, without `repair` (the file is not at fault).
            self._record_failure(step, mode, statements, st, exc, done=done, resumable=True)
        else:
            def settle(conn: psycopg.Connection) -> None:
                self._lease_held().check(conn)
                if mode != "transactional":  # the claim committed: back to what it was
                    if step.previous is not None:
                        _restore_row(conn, step.previous)
                    else:
                        conn.execute(f"DELETE FROM {TRACKING_TABLE} WHERE name = %s "
                                     "AND holder = %s", [m.name, self.identity.holder])
                insert_event(conn, self.identity, "fail", m.name, self.reason, detail)

            db.run_transaction(self.conn, settle, **self._retry)
        what = "migration" if step.direction == "up" else "rollback"
        state = _what_stays(step, done, st.index)
        cmd = "up" if step.direction == "up" else "down"
        tries = plural(wait.attempt, "attempt")
        raise MigrationFailed(
            f"{what} {m.name} gave up at statement {st.index} ({m.path(step.direction)}:"
            f"{st.line}) after {tries}, each waiting {self._timeout_text(statements)} for "
            f"{wait.describe()}; {state}; end that transaction or wait for it to finish, then "
            f"run `cesar migrate {cmd}` again (or wait longer: --lock-timeout SECONDS, "
            "--lock-retries N)"
        ) from None

    def _statement_failed(self, step: Step, mode: str, statements: list[Statement],
                          err: _StatementError, *, done: int) -> NoReturn:
        """Record a statement's failure (unless the connection is gone) and raise."""
        st, exc = err.statement, err.error
        if self.conn.closed or self.conn.broken or (exc.sqlstate or "").startswith("08"):
            kept = (f"{first_statements(done)} are recorded and the next run resumes at statement "
                    f"{st.index}" if done else "the next run starts it again")
            if mode == "transactional":
                kept = "its transaction rolled back and the next run starts it again"
            raise OperationFailed(
                f"lost the connection to the database during {step.name} statement {st.index} "
                f"({first_line(exc)}); {kept}, once this runner's lease expires (at most "
                f"{self.lease_seconds:g} s)"
            ) from None
        self._record_failure(step, mode, statements, st, exc, done=done)
        raise self._failed(step, st, exc, kept=done) from None

    def _lease_held(self) -> Lease:
        if self._held is None:
            raise RuntimeError("the migration lease is not held")
        return self._held

    # -- bookkeeping statements
    def _claim(self, conn: psycopg.Connection, step: Step, mode: str,
               statements: list[Statement]) -> bool:
        """Mark the migration running (ours). False when it is no longer to be done."""
        m, start = step.migration, step.start
        values = {
            "name": m.name, "checksum": m.checksum, "direction": step.direction, "mode": mode,
            "attempt": m.file_checksum(step.direction), "total": len(statements),
            "done": start, "progress": prefix_checksum(statements, start) if start else None,
            "host": self.identity.host, "version": __version__, "holder": self.identity.holder,
        }
        if step.direction == "up":
            row = conn.execute(
                f"INSERT INTO {TRACKING_TABLE} AS t (name, checksum, status, direction, mode, "
                "attempt_checksum, statements_total, statements_done, progress_checksum, "
                "started_at, applied_by, applied_from, runner_version, holder) "
                "VALUES (%(name)s, %(checksum)s, 'running', 'up', %(mode)s, %(attempt)s, "
                "%(total)s, %(done)s, %(progress)s, now(), session_user, %(host)s, %(version)s, "
                "%(holder)s) "
                "ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, "
                "status = 'running', direction = 'up', mode = excluded.mode, "
                "attempt_checksum = excluded.attempt_checksum, "
                "statements_total = excluded.statements_total, "
                "statements_done = excluded.statements_done, "
                "progress_checksum = excluded.progress_checksum, started_at = now(), "
                "finished_at = NULL, duration_ms = NULL, applied_by = session_user, "
                "applied_from = excluded.applied_from, runner_version = excluded.runner_version, "
                "holder = excluded.holder, updated_at = now() "
                "WHERE t.status NOT IN ('succeeded', 'baselined') RETURNING name",
                values,
            ).fetchone()
        else:
            row = conn.execute(
                f"UPDATE {TRACKING_TABLE} SET status = 'running', direction = 'down', "
                "mode = %(mode)s, attempt_checksum = %(attempt)s, statements_total = %(total)s, "
                "statements_done = %(done)s, progress_checksum = %(progress)s, "
                "started_at = now(), finished_at = NULL, duration_ms = NULL, "
                "applied_by = session_user, applied_from = %(host)s, runner_version = %(version)s, "
                "holder = %(holder)s, updated_at = now() "
                "WHERE name = %(name)s AND status <> 'rolled_back' RETURNING name",
                values,
            ).fetchone()
        return row is not None

    def _record_progress(self, conn: psycopg.Connection, step: Step,
                         statements: list[Statement], done: int) -> None:
        self._lease_held().check(conn)  # fenced: a runner that lost the lease records nothing
        row = conn.execute(
            f"UPDATE {TRACKING_TABLE} SET statements_done = %s, progress_checksum = %s, "
            "updated_at = now() WHERE name = %s AND holder = %s RETURNING name",
            [done, prefix_checksum(statements, done), step.name, self.identity.holder],
        ).fetchone()
        if row is None:
            self._held.check(conn)  # raises LeaseLost if that is why
            raise OperationFailed(f"the tracking row of {step.name} changed under this runner")

    def finish_step(self, conn: psycopg.Connection, step: Step, mode: str, total: int,
                    started: float) -> None:
        """Mark ``step`` done in the tracking table and release its claim (every statement ran).

        Public as the point a fault test stops a runner at: between the last statement and
        the tracking row's update."""
        # Fenced, and only our own claim: a runner paused past its lease must not mark done
        # (and release) a migration that another runner now holds.
        self._lease_held().check(conn)
        ms = int((time.perf_counter() - started) * 1000)
        status = "succeeded" if step.direction == "up" else "rolled_back"
        row = conn.execute(
            f"UPDATE {TRACKING_TABLE} SET status = %s, statements_done = %s, "
            "progress_checksum = NULL, resumable = false, error_sqlstate = NULL, "
            "error_message = NULL, error_statement = NULL, error_line = NULL, "
            "finished_at = clock_timestamp(), duration_ms = %s, holder = NULL, "
            "updated_at = now() WHERE name = %s AND holder = %s RETURNING name",
            [status, total if step.direction == "up" else 0, ms, step.name,
             self.identity.holder],
        ).fetchone()
        if row is None:
            self._lease_held().check(conn)  # raises LeaseLost if that is why
            raise OperationFailed(f"the tracking row of {step.name} changed under this runner")
        insert_event(conn, self.identity, "apply" if step.direction == "up" else "rollback",
                     step.name, self.reason,
                     {"mode": mode, "statements": total, "duration_ms": ms,
                      "checksum": step.migration.file_checksum(step.direction),
                      "resumed_from_statement": step.start + 1 if step.start else None})

    def _record_failure(self, step: Step, mode: str, statements: list[Statement],
                        st: Statement, exc: psycopg.Error, *, done: int,
                        in_doubt: bool = False, resumable: bool = False) -> None:
        """Write the failure down (in its own transaction, the migration's having failed).

        ``in_doubt``: the statement may have committed (40003), so the row says how far the
        run certainly got and is left resumable: the next run executes that statement again
        and accepts it as done when it fails only because its effect is already there."""
        m = step.migration
        message = first_line(exc)
        detail = {"direction": step.direction, "mode": mode, "sqlstate": exc.sqlstate,
                  "message": message, "statement": st.index, "line": st.line,
                  "file": str(m.path(step.direction)), "statements_done": done}
        if in_doubt:
            detail["in_doubt"] = True

        previous = step.previous
        untouched = (step.direction == "down" and done == 0 and step.resume is None
                     and previous is not None and previous.applied and not in_doubt)

        def work(conn: psycopg.Connection) -> None:
            # Fenced: once another runner holds the lease, the row and its outcome are its own.
            self._lease_held().check(conn)
            if step.direction == "down" and mode == "transactional" and not in_doubt:
                # Nothing was rolled back: the migration stays applied; only the event says so.
                conn.execute(f"UPDATE {TRACKING_TABLE} SET holder = NULL WHERE name = %s",
                             [m.name])
            elif untouched and previous is not None:
                # The first statement of a rollback failed, so the server undid it: nothing
                # was rolled back, and the row goes back to what it was before the claim.
                _restore_row(conn, previous)
            else:
                conn.execute(
                    f"INSERT INTO {TRACKING_TABLE} AS t (name, checksum, status, direction, "
                    "mode, attempt_checksum, statements_total, statements_done, "
                    "progress_checksum, error_sqlstate, error_message, error_statement, "
                    "error_line, started_at, finished_at, applied_by, applied_from, "
                    "runner_version, resumable) "
                    "VALUES (%(name)s, %(checksum)s, 'failed', %(direction)s, "
                    "%(mode)s, %(attempt)s, %(total)s, %(done)s, %(progress)s, %(sqlstate)s, "
                    "%(message)s, %(statement)s, %(line)s, now(), clock_timestamp(), "
                    "session_user, %(host)s, %(version)s, %(resumable)s) "
                    "ON CONFLICT (name) DO UPDATE SET status = 'failed', "
                    "direction = excluded.direction, mode = excluded.mode, "
                    "attempt_checksum = excluded.attempt_checksum, "
                    "statements_total = excluded.statements_total, "
                    "statements_done = excluded.statements_done, "
                    "progress_checksum = excluded.progress_checksum, "
                    "resumable = excluded.resumable, "
                    "error_sqlstate = excluded.error_sqlstate, "
                    "error_message = excluded.error_message, "
                    "error_statement = excluded.error_statement, "
                    "error_line = excluded.error_line, finished_at = clock_timestamp(), "
                    "holder = NULL, updated_at = now()",
                    {"name": m.name, "checksum": m.checksum, "direction": step.direction,
                     "mode": mode, "attempt": m.file_checksum(step.direction),
                     "total": len(statements), "done": done,
                     "progress": prefix_checksum(statements, done), "sqlstate": exc.sqlstate,
                     "message": message, "statement": st.index, "line": st.line,
                     "host": self.identity.host, "version": __version__,
                     "resumable": in_doubt or resumable},
                )
            insert_event(conn, self.identity, "fail", m.name, self.reason, detail)

        db.run_transaction(self.conn, work, **self._retry)

    def _in_doubt(self, step: Step, mode: str, statements: list[Statement],
                  err: _StatementError, *, done: int) -> NoReturn:
        """A statement run on its own ended with 40003 (statement_completion_unknown: on
        CockroachDB, an ambiguous commit): it may or may not have taken effect. Recorded as in
        doubt, not as a failure to fix: the next run executes it again and accepts it as done
        when its effect is already there (the object exists, or is gone)."""
        st, exc = err.statement, err.error
        if self.conn.closed or self.conn.broken:
            return  # the connection-lost path says what is kept
        self._record_failure(step, mode, statements, st, exc, done=done, in_doubt=True)
        m = step.migration
        cmd = "up" if step.direction == "up" else "down --steps 1"
        last = st.index == len(statements)
        settle = (f"; if it cannot run twice and you have checked that its effect is there, "
                  f"`cesar migrate mark-applied {m.name} --reason TEXT`" if last
                  and step.direction == "up" else "")
        raise MigrationFailed(
            f"{'migration' if step.direction == 'up' else 'rollback'} {m.name}: statement "
            f"{st.index} ({m.path(step.direction)}:{st.line}) is in doubt: the server could not "
            f"say whether it committed (SQLSTATE {exc.sqlstate}: {first_line(exc)}); "
            f"{_done(done)}"
            f"`cesar migrate {cmd}` runs it again and accepts it as done if its effect is "
            f"already there (check with `cesar migrate status`){settle}"
        ) from None

    def _failed(self, step: Step, st: Statement, exc: psycopg.Error, *, kept: int
                ) -> MigrationFailed:
        m = step.migration
        path = m.path(step.direction)
        what = "migration" if step.direction == "up" else "rollback"
        state = _what_stays(step, kept, st.index)
        cmd = "up" if step.direction == "up" else "down"
        baseline = (f"; if its objects already exist, `cesar migrate mark-applied {m.name} "
                    "--reason TEXT`" if step.direction == "up" and not kept
                    and exc.sqlstate in _DUPLICATE else "")
        return MigrationFailed(
            f"{what} {m.name} failed at statement {st.index} ({path}:{st.line}) with SQLSTATE "
            f"{exc.sqlstate}: {first_line(exc)}; {state}; fix the file and run "
            f"`cesar migrate {cmd}` again, or `cesar migrate repair {m.name} --reason TEXT`"
            f"{baseline}"
        )


# What re-running a schema change that already took effect reports (PostgreSQL and CockroachDB
# use the same SQLSTATEs): the object exists (for CREATE, ALTER ... ADD) or is gone (DROP,
# ALTER ... DROP/RENAME).
_DUPLICATE = frozenset({"42P07", "42710", "42701", "42P06", "42723", "42P04"})
_UNDEFINED = frozenset({"42P01", "42704", "42703", "3F000", "42883"})


def _already_done(st: Statement, exc: psycopg.Error) -> bool:
    """Whether a DDL statement that may have run before a crash failed only because it did.

    Used for exactly one statement: the first one a resumed *interrupted* run executes (the
    crash happened after it was sent and before its progress was recorded). Statements with
    ``IF [NOT] EXISTS`` never get here; this covers those that cannot have it (CREATE TRIGGER,
    ADD CONSTRAINT, RENAME)."""
    if st.kind != "ddl" or exc.sqlstate is None:
        return False
    if st.keyword in ("CREATE", "ALTER", "COMMENT", "GRANT") and exc.sqlstate in _DUPLICATE:
        return True
    return st.keyword in ("DROP", "ALTER") and exc.sqlstate in _UNDEFINED


#: A migration's statement that sets its own lock_timeout (it then wins over the runner's).
_OWN_LOCK_TIMEOUT = re.compile(r"\s*SET\s+(?:SESSION\s+|LOCAL\s+)?lock_timeout\b", re.I)


class _StatementError(Exception):
    """A migration's own statement failed (as opposed to the runner's bookkeeping)."""

    def __init__(self, statement: Statement, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.statement = statement
        self.error = error


def _check_files(plan: Plan, steps: list[Step]) -> None:
    """For a dry run: each file's refusal becomes a problem of the plan instead of stopping it,
    so that one run reports every file that cannot run."""
    for step in steps:
        try:
            step.migration.script(step.direction)
        except ConfigError as exc:
            step.refused = str(exc)
            plan.problems.append(str(exc))


#: The first CockroachDB release whose sessions start with ``autocommit_before_ddl = on``
#: (https://www.cockroachlabs.com/docs/stable/session-variables, cockroachdb/docs#19352); the
#: setting itself exists since v24.1 (cockroachdb/cockroach#118440), off by default there.
AUTOCOMMIT_BEFORE_DDL_DEFAULT_ON = (25, 1)
_CRDB_RELEASE = re.compile(r"CockroachDB \w+ v(\d+)\.(\d+)")


def transactional_problem(version: str, autocommit_before_ddl: str | None) -> str | None:
    """Why ``--mode transactional`` cannot keep its promise on this server, or None.

    With ``autocommit_before_ddl`` on, CockroachDB commits the open transaction before each
    schema change: a transactional migration would be applied piece by piece while the runner
    believed it all-or-nothing. ``version`` is what ``SELECT version()`` answers;
    ``autocommit_before_ddl`` the session's value (None when the release does not know the
    setting: then the release's default decides)."""
    m = _CRDB_RELEASE.search(version)
    if m is None:
        return None  # PostgreSQL: DDL is transactional
    release = (int(m.group(1)), int(m.group(2)))
    on = (autocommit_before_ddl in ("on", "true") if autocommit_before_ddl is not None
          else release >= AUTOCOMMIT_BEFORE_DDL_DEFAULT_ON)
    if not on:
        return None
    return (f"--mode transactional on CockroachDB v{release[0]}.{release[1]}: its session has "
            "autocommit_before_ddl on (the default since v25.1), which commits the migration's "
            "transaction before every schema change, so a migration would not be all or "
            "nothing; use --mode per-statement (what --mode auto chooses on CockroachDB: "
            "progress is recorded after every statement)")


def step_mode(mode: str, transaction: bool, start: int) -> str:
    """How one file runs: ``no-transaction`` when its header says so, ``per-statement`` in that
    mode or when resuming after statements already done, else ``transactional``."""
    if not transaction:
        return NO_TRANSACTION
    return "per-statement" if (mode == "per-statement" or start) else "transactional"


_RESTORED = ("status", "direction", "mode", "attempt_checksum", "statements_total",
             "statements_done", "progress_checksum", "resumable", "error_sqlstate",
             "error_message", "error_statement", "error_line", "started_at", "finished_at",
             "duration_ms", "applied_by", "applied_from", "runner_version")


def _restore_row(conn: psycopg.Connection, row: Tracked) -> None:
    sets = ", ".join(f"{c} = %({c})s" for c in _RESTORED)
    values = {c: getattr(row, c) for c in _RESTORED}
    conn.execute(f"UPDATE {TRACKING_TABLE} SET {sets}, holder = NULL, updated_at = now() "
                 "WHERE name = %(name)s", {**values, "name": row.name})  # type: ignore[arg-type]


def execute_statement(conn: psycopg.Connection, st: Statement) -> None:
    """Run one statement of a migration; its failure becomes a :class:`_StatementError`
    (40001 stays as it is, for the retry around it)."""
    try:
        conn.execute(st.sql)  # type: ignore[arg-type]
    except pgerrors.SerializationFailure:
        raise
    except psycopg.Error as exc:
        raise _StatementError(st, exc) from exc


def _what_stays(step: Step, kept: int, index: int) -> str:
    """What a failed migration left: the statements that stay done, or nothing."""
    if kept:
        return (f"{first_statements(kept)} {'stays' if kept == 1 else 'stay'} done and the "
                f"next run resumes at statement {index}")
    if step.direction == "down":
        return f"nothing was rolled back and {step.migration.name} stays applied"
    return "nothing of it was applied"


def _done(n: int) -> str:
    return "" if not n else f"{first_statements(n)} {'is' if n == 1 else 'are'} done; "


def _require_reason(reason: str | None, command: str) -> None:
    if not reason or not reason.strip():
        raise ConfigError(f"`cesar migrate {command}` needs --reason TEXT (it is recorded in "
                          f"{EVENTS_TABLE})")



# ==================================================================== one-call entry points
def open_runner(target: str | db.Endpoint, settings: Settings, *, source: str = "--url",
                **options: Any) -> tuple[psycopg.Connection, Runner]:
    """A connection and a Runner on it (the caller closes the connection). ``target``: an
    endpoint, or a bare URL that ``source`` gave."""
    endpoint = endpoint_of(target, settings, source)
    conn = connect(endpoint, settings)
    try:
        runner = Runner(conn, connect=lambda: connect(endpoint, settings), settings=settings,
                        **options)
    except BaseException:
        conn.close()
        raise
    return conn, runner


def apply_all(target: str | db.Endpoint, settings: Settings, *, source: str = "--url",
              migrations_dir: Path | None = None, progress: Progress = _quiet) -> RunReport:
    """``cesar migrate up`` for one database, as ``invoke up`` uses it (``--regional-by-row``
    when ``CESAR_REGIONAL_BY_ROW`` is set)."""
    conn, runner = open_runner(target, settings, source=source, migrations_dir=migrations_dir,
                               progress=progress)
    with conn:
        return runner.up(regional_by_row=settings.regional_by_row)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
