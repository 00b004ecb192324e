"""One complete sync pass: both directions, then (``--full``) the reconcile, then the state.

Order of a run:

1. connect to both databases; check the sync tables, the pairing, and every synced table
   (:func:`cesar.sync.tables.validate`): a misconfiguration is one error before anything moves;
2. take the lease (a run already in progress: report it and stop, exit 0);
3. local -> cluster, then cluster -> local: per table, inserts and updates parents first,
   deletes children first, in batches (read on the source, apply on the target, acknowledge on
   the source);
4. ``--full`` (and the first run of a pair): reconcile every table;
5. write ``sync_state`` on both sides; release the lease.

``dry_run`` does all the reading and deciding and writes nothing (no lease, no pairing, no
state), so its report says what would move and what would conflict.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar import db
from cesar.config import Settings
from cesar.console import first_line
from cesar.db import engines, urls
from cesar.errors import ConfigError, OperationFailed
from cesar.sync import bulk, capture, clock, divergence, lease, reconcile, state
from cesar.sync.apply import LockBudget, Outcome, Target, apply_changes
from cesar.sync.capture import Pending
from cesar.sync.tables import SyncSettings, TableSpec, validate

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
#: A run that wrote at least this many rows of a table, and a tenth of it, refreshes its
#: statistics (PostgreSQL).
ANALYZE_AFTER_ROWS = 1_000
#: How long a commit may wait for a lock (see Run._fence): far above any flush, far below a hang;
#: at most a third of the lease (while the commit waits, the fence's share lock on the lease row
#: holds the heartbeat's renewal back).
COMMIT_LOCK_TIMEOUT_S = 10.0
DIRECTIONS = (("local", "cluster", "local_to_cluster"), ("cluster", "local", "cluster_to_local"))


#: A session ended under the run (the server gone, or a transaction idle for one lease ended
#: by the server, reported as 25P03 when its FATAL is read, else as a closed connection).
SESSION_GONE = (psycopg.OperationalError, pgerrors.IdleInTransactionSessionTimeout)


def _quiet(_: str) -> None:
    pass


@dataclass
class Side:
    endpoint: db.Endpoint  # its name is the side's role: local or cluster
    conn: psycopg.Connection
    engine: engines.Engine

    @property
    def role(self) -> str:
        return self.endpoint.name

    @property
    def masked(self) -> str:
        return self.endpoint.masked


@dataclass
class TableReport:
    """One table in one direction."""

    table: str
    direction: str
    applied: int = 0
    unchanged: int = 0
    discarded: int = 0
    deferred: int = 0
    failed: int = 0
    conflicts: int = 0
    acknowledged: int = 0
    bulk_applied: int = 0  # of applied: by the bulk path (cesar/sync/bulk.py)
    #: Bulk chunks rolled back whole (a writer's concurrent key, a lock wait) whose keys took
    #: the batch path instead: the bulk path's speed lost, nothing else.
    bulk_chunks_to_batch: int = 0
    position: datetime | None = None
    pending_after: int | None = 0  # None: not measured (a run that failed before its state)
    oldest_pending_at: datetime | None = None
    seconds: float = 0.0
    error: str | None = None

    def add(self, outcome: Outcome, acknowledged: int) -> None:
        self.applied += len(outcome.applied)
        self.unchanged += len(outcome.same)
        self.discarded += len(outcome.discarded)
        self.deferred += len(outcome.deferred)
        self.failed += len(outcome.failed)
        self.conflicts += outcome.conflicts
        self.acknowledged += acknowledged
        for ch in outcome.settled:
            if ch.written_at is not None and (self.position is None
                                              or ch.written_at > self.position):
                self.position = ch.written_at

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("position", "oldest_pending_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


@dataclass
class RunReport:
    dry_run: bool
    full: bool
    first_pairing: bool = False
    in_progress: dict[str, Any] | None = None  # the holder, when another run had the lease
    tables: list[TableReport] = field(default_factory=list)
    reconcile: list[reconcile.ReconcileReport] = field(default_factory=list)
    seconds: float = 0.0
    local: str = ""
    cluster: str = ""
    clock_skew_ms: float | None = None  # the cluster's clock minus the local database's
    divergence: list[divergence.Found] = field(default_factory=list)
    truncate_guarded: list[str] = field(default_factory=list)  # guards added by this run
    #: Why the run failed (the command line's one line), None when it did not: the counts
    #: are then what it committed before it stopped.
    error: str | None = None

    @property
    def moved(self) -> int:
        return sum(t.applied for t in self.tables) + sum(
            r.repaired_local + r.repaired_cluster for r in self.reconcile)

    @property
    def conflicts(self) -> int:
        return sum(t.conflicts for t in self.tables) + sum(r.conflicts for r in self.reconcile)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.tables) + sum(r.failed for r in self.reconcile)

    @property
    def deferred(self) -> int:
        return sum(t.deferred for t in self.tables) + sum(r.deferred for r in self.reconcile)

    def summary(self) -> str:
        """One line: what the run did (what cron logs, what `invoke up` shows)."""
        verb = "would move" if self.dry_run else "moved"
        parts = [f"{verb} {self.moved} row{'' if self.moved == 1 else 's'}",
                 f"{self.conflicts} conflict{'' if self.conflicts == 1 else 's'}"]
        if self.deferred:
            parts.append(f"{self.deferred} deferred (locked by an open transaction, or "
                         "waiting for its parent or child row: next run)")
        if self.failed:
            parts.append(f"{self.failed} failed (see sync_conflicts; retried every run)")
        differ = [d for d in self.divergence if d.divergent_rows]
        if differ:
            parts.append("the sides DIFFER: " + ", ".join(
                f"{d.table} by {d.divergent_rows} row{'' if d.divergent_rows == 1 else 's'}"
                for d in differ) + " (run `cesar sync run --full`; see docs/sync.md)")
        what = "full sync" if self.full else "sync"
        prefix = "dry run, nothing changed: " if self.dry_run else ""
        if self.error is not None:
            return f"{prefix}{what} failed after {self.seconds:.2f} s: {', '.join(parts)}"
        return f"{prefix}{what} done in {self.seconds:.2f} s: {', '.join(parts)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.error is None, "error": self.error,
            "summary": self.summary(), "dry_run": self.dry_run, "full": self.full,
            "first_pairing": self.first_pairing,
            "in_progress": self.in_progress, "local": self.local, "cluster": self.cluster,
            "moved": self.moved, "conflicts": self.conflicts, "failed": self.failed,
            "deferred": self.deferred, "seconds": round(self.seconds, 3),
            "clock_skew_ms": self.clock_skew_ms,
            "divergence": [d.as_dict() for d in self.divergence],
            "truncate_guarded": self.truncate_guarded,
            "tables": [t.as_dict() for t in self.tables],
            "reconcile": [r.as_dict() for r in self.reconcile],
        }


# ------------------------------------------------------------------------- endpoints
def resolve_endpoints(settings: Settings, local: str | db.Endpoint | None,
                      cluster: str | db.Endpoint | None) -> tuple[db.Endpoint, db.Endpoint]:
    """The two sides: an :class:`~cesar.db.Endpoint` as given (``invoke up`` hands over the
    ones it migrated), a string as the value of ``--local-url`` / ``--remote-url``, else the
    environment (:func:`cesar.db.resolve`).

    The cluster URL goes through the connection layer's routing, so staging and production
    require ``sslmode=verify-full`` exactly as the API does."""
    if not isinstance(local, db.Endpoint):
        local = db.resolve(settings, "local", ("--local-url", local))
    if local is None:
        raise ConfigError("no local database to sync: set LOCAL_DB_URL or pass --local-url "
                          "(in development, `invoke up` provides one)")
    if not isinstance(cluster, db.Endpoint):
        if not cluster and settings.environment in ("staging", "production"):
            cluster = db.route(settings).primary  # verify-full is enforced there
        else:
            cluster = db.resolve(settings, "cluster", ("--remote-url", cluster))
    if cluster is None:
        raise ConfigError("no cluster to sync with: set COCKROACH_DB_URL or pass "
                          "--remote-url (in development, `invoke up` provides one)")
    # Explicit flags go through the same TLS rule as the variables (the local side may be a
    # unix socket or loopback database outside development; the cluster never is exempt).
    db.require_tls(local.url, local.variable, settings.environment, local=True)
    db.require_tls(cluster.url, cluster.variable, settings.environment)
    return local, cluster


class CredentialRefused(OperationFailed):
    """The server refused the login (wrong or removed password): maybe rotated meanwhile."""


def _is_login_refused(exc: psycopg.OperationalError) -> bool:
    # libpq reports a refusal during the connection's start-up as text only (no SQLSTATE on
    # the exception); PostgreSQL and CockroachDB word it the same way (SQLSTATE 28P01).
    return exc.sqlstate in ("28P01", "28000") or "password authentication failed" in str(exc)


def connect(endpoint: db.Endpoint, settings: Settings, sync: SyncSettings
            ) -> psycopg.Connection:
    """An autocommit connection set up the same way on both engines: UTC, read committed
    (CockroachDB: a non-locking read then never waits for a writer), the sync's timeouts."""
    kwargs: dict[str, Any] = {
        **db.connect_kwargs(settings), "autocommit": True,
        "application_name": "cesar-sync",
        # A run paused inside a transaction past its lease has lost the lease and can no longer
        # commit (its writes are fenced), but its row locks would stall the run that took over
        # until its session ended: the server ends such an idle transaction after one lease.
        "options": f"-c statement_timeout={sync.statement_timeout_ms} "
                   f"-c idle_in_transaction_session_timeout={int(sync.lease_seconds * 1000)}",
    }
    try:
        conn = db.dial(endpoint, **kwargs)
    except OperationFailed as exc:
        cause = exc.__cause__
        if isinstance(cause, psycopg.OperationalError) and _is_login_refused(cause):
            raise CredentialRefused(str(exc)) from cause
        raise
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET default_transaction_isolation = 'read committed'")
    for setting in engines.of(conn).sync_session_settings:
        conn.execute(setting)  # type: ignore[arg-type]
    return conn


# ------------------------------------------------------------------------- the run
@dataclass
class Options:
    #: ``--local-url`` / ``--remote-url``, or the endpoints a caller already resolved.
    local_url: str | db.Endpoint | None = None
    remote_url: str | db.Endpoint | None = None
    full: bool = False
    dry_run: bool = False
    wait: float = 0.0
    tables: tuple[str, ...] | None = None


class Run:
    """One run; :meth:`execute` returns its report (raises CesarError for an operator)."""

    def __init__(self, settings: Settings, sync: SyncSettings, options: Options,
                 progress: Progress = _quiet) -> None:
        self.settings = settings
        self.sync = sync
        self.options = options
        self.progress = progress
        self.retry = {"max_attempts": settings.retry_max_attempts,
                      "base_delay": settings.retry_base_delay,
                      "max_delay": settings.retry_max_delay}
        self.sides: dict[str, Side] = {}
        self.lease: lease.SyncLease | None = None
        # Dry run: per table, the keys the first direction would write on its target and
        # acknowledge on its source (the second direction's source and target).
        self._simulated: dict[str, tuple[set[str], set[str]]] = {}
        self._ack_conns: dict[str, psycopg.Connection] = {}
        self.budget = LockBudget(float(sync.lock_wait_budget_ms))
        self._credentials_stamp = db.credential_files_stamp(settings)
        self._credentials_lock = threading.Lock()
        #: Built as the run goes: when :meth:`execute` raises, it holds what the run had done
        #: (committed) by then, for a report of the failed run.
        self.report = RunReport(dry_run=options.dry_run, full=options.full)
        self._pending_measured = False

    # ---------------------------------------------------------------- plumbing
    def _open(self) -> None:
        """Both sides' connections, opened at the same time (the cluster's is a remote
        server's TLS handshake). A failure is reported for the first side in order (local,
        then cluster); a connection already open is kept in ``sides`` for :meth:`close`."""
        endpoints = resolve_endpoints(self.settings, self.options.local_url,
                                      self.options.remote_url)
        # Named in the report also when a side cannot be reached (masked: no password).
        self.report.local, self.report.cluster = endpoints[0].masked, endpoints[1].masked
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cesar-sync-open") as pool:
            later = [pool.submit(self._open_side, e) for e in endpoints[1:]]
            opened = [self._capture(self._open_side, endpoints[0])]
            opened += [self._capture(f.result) for f in later]
        for result in opened:
            if isinstance(result, Side):
                self.sides[result.endpoint.name] = result
        for result in opened:
            if isinstance(result, BaseException):
                raise result

    @staticmethod
    def _capture(call: Callable[..., Side], *args: object) -> Side | BaseException:
        try:
            return call(*args)
        except BaseException as exc:  # noqa: BLE001 - raised by _open, in the sides' order
            return exc

    def _open_side(self, endpoint: db.Endpoint) -> Side:
        try:
            conn = connect(endpoint, self.settings, self.sync)
        except CredentialRefused:
            # Read a moment ago, and already replaced by a rotation whose grace period has
            # ended since: read once more.
            endpoint = self._resolve_again(endpoint) or endpoint
            conn = connect(endpoint, self.settings, self.sync)
        return Side(endpoint, conn, engines.of(conn))

    def _connect(self, role: str) -> psycopg.Connection:
        """Another connection to a side while the run goes on (the lease heartbeat's, the
        acknowledgements'). A password rotation may have switched the login since the run
        started, and the previous one is refused once its grace period ends: the URL is
        resolved again first when the files credentials come from have changed, and once
        more after a refused login."""
        self._reread_credentials()
        tried = self.sides[role].endpoint
        try:
            return connect(tried, self.settings, self.sync)
        except CredentialRefused:
            # Another thread (heartbeat, acknowledgements) may have adopted the new login
            # between this one's read and its refusal: then that one is tried, else read again.
            self._reread_credentials(force=True)
            now = self.sides[role].endpoint
            if now.url == tried.url:
                raise
            log.warning("the %s database refused the run's login; connecting with the "
                        "credential as it is now", role)
            return connect(now, self.settings, self.sync)

    def _reread_credentials(self, *, force: bool = False) -> None:
        """Resolve both URLs again (from the environment, the env files and the embedded
        stack's state); adopt a URL whose server and database are unchanged (a new login,
        never another target). One thread at a time: the stamp and the endpoints change
        together."""
        with self._credentials_lock:
            stamp = db.credential_files_stamp(self.settings)
            if not force and stamp == self._credentials_stamp:
                return
            self._credentials_stamp = stamp
            for side in self.sides.values():
                fresh = self._resolve_again(side.endpoint)
                if fresh is not None:
                    side.endpoint = fresh

    def _resolve_again(self, endpoint: db.Endpoint) -> db.Endpoint | None:
        """``endpoint``'s side as the settings give it now, if it differs from ``endpoint``
        in its login only (never another server or database); else None."""
        from cesar.config import load_settings

        try:
            fresh = resolve_endpoints(load_settings(), self.options.local_url,
                                      self.options.remote_url)
        except Exception as exc:  # noqa: BLE001 - a file mid-write, unreadable: keep the run's
            log.warning("could not read the credentials again (%s); keeping the run's",
                        first_line(exc))
            return None
        new = fresh[0] if endpoint.name == "local" else fresh[1]
        if new.url == endpoint.url:
            return None
        if not urls.same_target(new.url, endpoint.url):
            log.warning("the %s database's configuration (%s) now names %s, not the run's %s: "
                        "a run never switches servers or databases; keeping the run's",
                        endpoint.name, new.variable, new.masked, endpoint.masked)
            return None
        return new

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        for side in self.sides.values():
            side.conn.close()
        for conn in self._ack_conns.values():
            conn.close()

    def _target(self, role: str, direction: str, table: str | None = None) -> Target:
        written, acked = self._simulated.get(table or "", (set(), set()))
        if direction == "local_to_cluster":
            written, acked = set(), set()
        return Target(self.sides[role].conn, direction, self.sync.lock_timeout_ms,
                      self.retry, self.options.dry_run, frozenset(written), frozenset(acked),
                      fence=self._fence, budget=self.budget)

    def _check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def _fence(self, conn: psycopg.Connection) -> None:
        """Inside a writing transaction on either side, last before its commit: still this
        run's lease? Then the commit's own lock wait gets its own limit."""
        if self.lease is not None:
            self.lease.fence(conn)
            # The short lock_timeout of an apply is for rows an open transaction holds. What
            # a commit can still wait for is PostgreSQL's one cluster-wide lock that orders
            # the commits of transactions that sent NOTIFY (the event log's trigger does, for
            # every writer of a watched table), held by each for its commit's WAL flush: a
            # queue that always moves. Given up on after 1 ms, the commit failed ("canceling
            # statement due to lock timeout" on COMMIT) and its batch was redone key by key.
            wait = min(COMMIT_LOCK_TIMEOUT_S, self.sync.lease_seconds / 3)
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(wait * 1000)}ms"])

    # ---------------------------------------------------------------- steps
    def execute(self) -> RunReport:
        try:
            return self._execute()
        except BaseException:
            if not self._pending_measured:
                # Measured as the run saves its state: unknown for a run stopped before.
                for tr in self.report.tables:
                    tr.pending_after, tr.oldest_pending_at = None, None
            raise

    def _execute(self) -> RunReport:
        started = time.perf_counter()
        opts = self.options
        report = self.report
        try:
            self._open()
            local, cluster = self.sides["local"], self.sides["cluster"]
            nodes = {r: state.read_node(s.conn, r, s.masked) for r, s in self.sides.items()}
            first = state.check_pair(nodes["local"], nodes["cluster"], repair=opts.full,
                                     sources=(local.endpoint.variable,
                                              cluster.endpoint.variable))
            specs = validate(local.conn, cluster.conn, opts.tables or self.sync.tables,
                             engines=(local.engine, cluster.engine))
            skew = clock.measure(local.conn, cluster.conn)
            report.clock_skew_ms = skew.ms
            try:
                clock.check(skew, self.sync.max_clock_skew_ms, local.masked, cluster.masked)
            except OperationFailed as refused:
                if not opts.dry_run:
                    self._record_refusal(specs, str(refused))
                raise
            if not opts.dry_run:
                try:
                    self.lease = lease.SyncLease.acquire(
                        cluster.conn, lambda: self._connect("cluster"),
                        seconds=self.sync.lease_seconds, wait=opts.wait)
                except lease.LeaseBusy as busy:
                    holder = lease.Holder.of(busy.info)
                    report.in_progress = holder.as_dict()
                    if opts.wait:
                        raise OperationFailed(
                            f"another sync run still holds the lease after {opts.wait:g} s: "
                            f"{holder.describe()}") from None
                    return report
                # The local side's writes are fenced too: it learns this run's token.
                self.lease.install(local.conn)
            if not opts.dry_run:
                for side in self.sides.values():
                    if side.engine.truncate_guard:
                        report.truncate_guarded += divergence.ensure_truncate_guard(side.conn,
                                                                                    specs)
            report.first_pairing = first
            if first:
                self.progress("first run of this pair: every table is reconciled (--full)")
            self._incremental(specs, report)
            if opts.full or first:
                report.full = True
                self._reconcile(specs, report)
            if first and not opts.dry_run:
                # Only now: a first run that dies before its reconcile has finished leaves the
                # pair unrecorded, so the next run is a first run again and reconciles.
                state.pair({r: s.conn for r, s in self.sides.items()}, nodes)
            if not opts.dry_run:
                self._refresh_statistics(report)
                self._save_state(specs, report)
            failed = [t for t in report.tables if t.error]
            if failed:
                raise OperationFailed(
                    f"the sync of {failed[0].table} ({failed[0].direction}) failed: "
                    f"{failed[0].error}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1
                                            else "") + "; the other tables were synced; see "
                    "`cesar sync status` (last_error) and rerun with -v")
        except SESSION_GONE as exc:
            # A run paused past its lease inside a transaction finds its session ended.
            lost = self.lease.explain(exc) if self.lease is not None else None
            if lost is None:
                raise
            raise lost from None
        finally:
            report.seconds = time.perf_counter() - started
            self.close()
        return report

    def _incremental(self, specs: list[TableSpec], report: RunReport) -> None:
        for src, dst, direction in DIRECTIONS:
            pending = capture.pending_summary(self.sides[src].conn)
            reports = {s.name: TableReport(s.name, direction) for s in specs}
            report.tables.extend(reports.values())
            # Inserts and updates parents first, deletes children first.
            phases = [(s, False) for s in specs] + [(s, True) for s in reversed(specs)]
            for spec, deleted in phases:
                p = pending.get(spec.name, Pending())
                tr = reports[spec.name]
                if (p.deletes if deleted else p.rows) == 0 or tr.error:
                    continue
                try:
                    if not deleted and self._bulk_applies(src, dst, p.rows):
                        self._bulk(src, dst, spec, tr)
                    self._move(src, dst, spec, deleted, tr)
                except (*SESSION_GONE, lease.LeaseLost) as exc:
                    # A database or this run's session is gone, or the lease: nothing else can
                    # move. The table it was moving is marked in the failed run's report.
                    tr.error = first_line(exc)
                    raise
                except psycopg.Error as exc:
                    # One table's failure (its SQL, not a row: rows are split out and recorded)
                    # must not hold back the others: record it, go on, fail the run at the end.
                    tr.error = first_line(exc)
                    log.error("sync of %s %s failed: %s", spec.name, direction, tr.error)

    def _bulk_applies(self, src: str, dst: str, pending_rows: int) -> bool:
        """A large backlog between two PostgreSQL databases, in a real run."""
        threshold = self.sync.bulk_threshold
        return (not self.options.dry_run and threshold > 0 and pending_rows >= threshold
                and self.sides[src].engine.bulk_copy and self.sides[dst].engine.bulk_copy)

    def _bulk(self, src: str, dst: str, spec: TableSpec, tr: TableReport) -> None:
        """The bulk path first (cesar/sync/bulk.py); the batch path then moves what it left."""
        started = time.perf_counter()
        result = bulk.BulkResult()
        try:
            bulk.move(self.sides[src].conn, self._target(dst, tr.direction, spec.name),
                      spec, chunk=self.sync.bulk_chunk, check=self._check_lease,
                      fence=self._fence, retry=self.retry, progress=self.progress,
                      ack_source=self._ack_conn(src), result=result)
        finally:
            # Also when a later chunk failed: the chunks counted so far are committed.
            tr.applied += result.applied
            tr.bulk_applied += result.applied
            tr.bulk_chunks_to_batch += result.left_to_batches
            tr.acknowledged += result.acknowledged
            if result.position is not None and (tr.position is None
                                                or result.position > tr.position):
                tr.position = result.position
            tr.seconds += time.perf_counter() - started

    def _move(self, src: str, dst: str, spec: TableSpec, deleted: bool,
              tr: TableReport) -> None:
        """Move one kind of pending change of one table, batch by batch, as a pipeline: while
        the target applies batch N, the source reads batch N+1 and acknowledges batch N-1 (on a
        second connection). Each acknowledgement still starts only after its batch's target
        transaction has committed.

        A batch is counted in ``tr`` as soon as its target transaction has committed, and its
        acknowledgement once that has: so when a later step fails, the report of the failed
        run (and the ``sync_state`` saved from it) counts exactly what is on the target."""
        started = time.perf_counter()
        source = self.sides[src].conn
        target = self._target(dst, tr.direction, spec.name)
        size = self.sync.batch_size

        def read(after: str) -> list[capture.Change]:
            return capture.read_pending(source, spec, deleted=deleted, after=after, limit=size)

        def ack(settled: list[capture.Change]) -> int:
            return capture.acknowledge(self._ack_conn(src), spec, settled, fence=self._fence,
                                       **self.retry)

        def acknowledged(future: Future[int]) -> None:
            tr.acknowledged += future.result()

        last_note = started
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="cesar-sync") as pool:
            pending_read: Future[list[capture.Change]] | None = pool.submit(read, "")
            pending_ack: Future[int] | None = None
            try:
                while pending_read is not None:
                    self._check_lease()
                    changes = pending_read.result()
                    pending_read = None
                    if len(changes) == size:
                        pending_read = pool.submit(read, changes[-1].pk)
                    if not changes:
                        break
                    # Each part as it settles: a split batch's parts that committed before a
                    # later one ended the session are on the target, so counted.
                    outcome = Outcome()
                    try:
                        apply_changes(target, spec, changes, committed=outcome)
                    finally:
                        tr.add(outcome, 0)  # committed (a dry run: what it would do)
                    if pending_ack is not None:
                        done, pending_ack = pending_ack, None
                        acknowledged(done)
                    if self.options.dry_run:
                        self._simulate(tr, spec, outcome)
                    else:
                        pending_ack = pool.submit(ack, outcome.settled)
                    if time.perf_counter() - last_note > 2:
                        last_note = time.perf_counter()
                        self.progress(f"  {tr.direction} {spec.name}: {tr.applied} rows so far")
                if pending_ack is not None:
                    done, pending_ack = pending_ack, None
                    acknowledged(done)
            finally:
                if pending_read is not None:
                    pending_read.cancel()
                if pending_ack is not None and not pending_ack.cancel():
                    # Already running when a later step failed: it commits or fails on its
                    # own; what it committed is counted (its failure is not the run's error).
                    try:
                        acknowledged(pending_ack)
                    except Exception as exc:  # noqa: BLE001 - the run is failing already
                        log.warning("the acknowledgement of a %s batch of %s did not commit: %s",
                                    tr.direction, spec.name, first_line(exc))
                tr.seconds += time.perf_counter() - started  # also of a failed table

    def _simulate(self, tr: TableReport, spec: TableSpec, outcome: Outcome) -> None:
        """Dry run: remember what the first direction would have done (see Target)."""
        if tr.direction == "local_to_cluster":
            written, settled = self._simulated.setdefault(spec.name, (set(), set()))
            written.update(ch.pk for ch in outcome.applied)
            settled.update(ch.pk for ch in outcome.settled)

    def _ack_conn(self, role: str) -> psycopg.Connection:
        """A second connection to a side, for acknowledgements running beside the reads."""
        conn = self._ack_conns.get(role)
        if conn is None or conn.closed:
            conn = self._connect(role)
            self._ack_conns[role] = conn
        return conn

    def _reconcile(self, specs: list[TableSpec], report: RunReport) -> None:
        """Each table, parents first; then, if a key was deferred, each table that deferred
        one again, children first. A parent's delete is held while its child is still there
        (the child's comes later in the first pass) and nothing about it is pending, so no
        incremental run would move it: the second pass does, in the same run."""
        local, cluster = self.sides["local"].conn, self.sides["cluster"].conn

        def target(side: str) -> Target:
            return self._target(side, "cluster_to_local" if side == "local"
                                else "local_to_cluster")

        def one(spec: TableSpec) -> reconcile.ReconcileReport:
            return reconcile.reconcile_table(
                local, cluster, spec, range_size=self.sync.range_size, target=target,
                batch_size=self.sync.batch_size, check=self._check_lease)

        reports: dict[str, reconcile.ReconcileReport] = {}
        for spec in specs:
            # In the run's report at once: a run that fails on a later table still reports
            # what this one repaired (the second pass below adds to the same object).
            reports[spec.name] = one(spec)
            report.reconcile.append(reports[spec.name])
        for spec in reversed(specs):
            first = reports[spec.name]
            if not first.deferred:
                continue
            again = one(spec)
            first.repaired_local += again.repaired_local
            first.repaired_cluster += again.repaired_cluster
            first.conflicts_local += again.conflicts_local
            first.conflicts_cluster += again.conflicts_cluster
            first.orphans_settled += again.orphans_settled
            first.failed = again.failed  # a key that failed fails again: counted once
            first.deferred = again.deferred  # what is still left for the next run
            first.seconds += again.seconds
        for rr in reports.values():
            if rr.ranges_differing:
                self.progress(f"  reconcile {rr.table}: {rr.ranges_differing} of {rr.ranges} "
                              f"ranges differ, {rr.repaired_local + rr.repaired_cluster} rows "
                              "repaired")

    def _refresh_statistics(self, report: RunReport) -> None:
        """PostgreSQL: ANALYZE what a large run changed (the version rows on both sides, the
        tables written), so that the next run's plans see the tables as they now are instead of
        waiting for autovacuum (statistics from before a first copy of a million rows make the
        planner read every version row of a table to find a batch's keys). CockroachDB
        refreshes its statistics by itself."""
        written: dict[str, dict[str, int]] = {"local": {}, "cluster": {}}

        def add(role: str, table: str, n: int) -> None:
            written[role][table] = written[role].get(table, 0) + n

        for t in report.tables:
            src, dst = ("local", "cluster") if t.direction == "local_to_cluster" else (
                "cluster", "local")
            add(src, "sync_versions", t.acknowledged)
            add(dst, "sync_versions", t.applied)
            add(dst, t.table, t.applied)
        for r in report.reconcile:
            for role, n in (("local", r.repaired_local), ("cluster", r.repaired_cluster)):
                add(role, "sync_versions", n)
                add(role, r.table, n)
        for role, counts in written.items():
            side = self.sides[role]
            if not side.engine.analyze_after_sync or not any(counts.values()):
                continue
            # Like autovacuum's own rule: a tenth of the table changed (and enough rows).
            sizes = dict(side.conn.execute(
                "SELECT relname, reltuples FROM pg_class WHERE relname = ANY(%s) "
                "AND relnamespace = current_schema()::regnamespace", [list(counts)]).fetchall())
            for table, n in sorted(counts.items()):
                if n >= ANALYZE_AFTER_ROWS and n >= 0.1 * max(float(sizes.get(table, 0)), 0):
                    side.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))

    def _save_state(self, specs: list[TableSpec], report: RunReport) -> None:
        now = datetime.now(UTC)
        after = {role: capture.pending_summary(s.conn) for role, s in self.sides.items()}
        rows = []
        for tr in report.tables:
            src = "local" if tr.direction == "local_to_cluster" else "cluster"
            p = after[src].get(tr.table, Pending())
            tr.pending_after, tr.oldest_pending_at = p.total, p.oldest
            # Repairs count in the direction they were written (the reconcile's conflicts are
            # recorded on the side written, so they count there too).
            repaired = [r for r in report.reconcile if r.table == tr.table]
            moved = tr.applied + sum(r.repaired_cluster if src == "local" else r.repaired_local
                                     for r in repaired)
            conflicts = tr.conflicts + sum(r.conflicts_cluster if src == "local"
                                           else r.conflicts_local for r in repaired)
            rows.append(state.StateRow(tr.table, tr.direction, now, tr.error is None,
                                       tr.position, moved, conflicts, p.total, p.oldest,
                                       tr.error))
        self._pending_measured = True
        # Fenced like the moves: a run paused past its lease must not write its older
        # figures over those of the run that took over (status, /health and /metrics read
        # them).
        for side in self.sides.values():
            state.save_state(side.conn, rows, self._fence, self.retry)
        self._check_divergence(specs, report, set(after["local"]) | set(after["cluster"]))

    def _record_refusal(self, specs: list[TableSpec], error: str) -> None:
        """A run refused before moving anything: ``sync_state.last_error`` says why, so
        `cesar sync status` and /health show it (the lag keeps growing meanwhile)."""
        try:
            holder = lease.read(self.sides["cluster"].conn)
        except psycopg.Error:
            holder = None
        if holder is not None and holder.seconds_left > 0:
            # Another run is under way: its figures are the current ones (this run never held
            # the lease, so it cannot fence its write).
            log.warning("not recording the refusal in sync_state: %s holds the sync lease",
                        holder.describe())
            return
        now = datetime.now(UTC)
        pending = {role: capture.pending_summary(s.conn) for role, s in self.sides.items()}
        rows = [state.StateRow(spec.name, direction, now, False, None, 0, 0,
                               pending[src].get(spec.name, Pending()).total,
                               pending[src].get(spec.name, Pending()).oldest, error)
                for spec in specs for src, _, direction in DIRECTIONS]
        for side in self.sides.values():
            try:
                state.write_state(side.conn, rows)
            except psycopg.Error as exc:
                log.warning("could not record the refusal in sync_state: %s",
                            first_line(exc))

    def _check_divergence(self, specs: list[TableSpec], report: RunReport,
                          pending: set[str] | None = None) -> None:
        """Record how many rows the sides differ by: the count check, and what a reconcile
        found and could not repair (the larger of the two, when both ran)."""
        local, cluster = self.sides["local"], self.sides["cluster"]
        found = {f.table: f for f in divergence.count_check(
            local.conn, cluster.conn, specs, bound_seconds=self.sync.orphan_check_seconds,
            force=report.full,
            # The engine that needs the TRUNCATE guard (PostgreSQL) is the one whose file
            # nodes and per-table counters tell a table that may have lost rows.
            fingerprinted=(local.engine.truncate_guard, cluster.engine.truncate_guard),
            pending=pending)}
        for r in report.reconcile:
            # A deferred key was written meanwhile (or is held by a writer): it moves on the
            # next run, so it is not a divergence the reconcile left behind.
            left = max(0, r.keys_differing - r.repaired_local - r.repaired_cluster
                       - r.deferred)
            counted = found.get(r.table)
            found[r.table] = divergence.Found(
                r.table, max(left, counted.divergent_rows if counted else 0), "full",
                counted.local_rows if counted else None,
                counted.cluster_rows if counted else None,
                counted.orphan_check if counted else {})
        report.divergence = sorted(found.values(), key=lambda f: f.table)
        try:
            divergence.record([s.conn for s in self.sides.values()], report.divergence,
                              fence=self._fence, retry=self.retry)
        except psycopg.errors.UndefinedTable:  # reported in this run's summary all the same
            log.warning("sync_divergence is missing: run `cesar migrate up` (012_sync_safety) "
                        "so that status, /health and /metrics show divergence")


def run(settings: Settings, sync: SyncSettings, options: Options,
        progress: Progress = _quiet) -> RunReport:
    return Run(settings, sync, options, progress).execute()


def run_once(settings: Settings, local: db.Endpoint, cluster: db.Endpoint) -> RunReport:
    """One run with the environment's sync settings (``invoke up``'s pass after migrating)."""
    from cesar.sync.tables import load_sync_settings

    return run(settings, load_sync_settings(), Options(local, cluster))
