"""One lease implementation: one holder at a time per (table, key), with fencing tokens.

CockroachDB has no advisory locks, so a lease is a row: its holder, an expiry computed with the
*database* clock (``now() + seconds``, so the holders' clocks never matter) and a ``generation``
that grows on every take, the fencing token. Whoever uses a lease:

- takes it with :meth:`Lease.acquire` (a live holder: :class:`LeaseBusy` after waiting at most
  ``wait_seconds``); a row whose expiry has passed, or whose holder is a process of this host
  that no longer exists, is taken over at once;
- runs :meth:`Lease.fence` *inside every transaction that writes*, as its last statement
  before the commit: it reads the lease row ``FOR SHARE`` and fails (:class:`LeaseLost`) unless
  the row still names this holder and generation. A takeover updates that row, so it either
  happens before the fence (the fence fails, the transaction rolls back) or waits for the
  transaction to end (its writes are ordered before the takeover). A holder paused past its
  lease (SIGSTOP, a frozen VM) therefore cannot land a write after another took over;
- on another database than the lease's own (the sync writes to two), :meth:`Lease.install`
  first copies the token into that database's lease table; a lower generation is refused
  there, so an old holder that resumes can neither install nor fence;
- calls :meth:`Lease.check` between steps (no round trip): a heartbeat thread renews the expiry
  every third of the lease, and once it has failed for a whole lease (the row may have been
  taken over), ``check`` raises and the work stops.

The table needs these columns (``ddl`` creates one): the key, ``holder``, ``host``, ``pid``,
``acquired_at``, ``renewed_at``, ``expires_at``, ``generation``; extra columns are written from
``values``. Released leases delete their row: the next take starts from the database clock in
microseconds, above any generation a deleted row had (a takeover adds one).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar import db
from cesar.console import first_line
from cesar.errors import OperationFailed

log = logging.getLogger(__name__)

#: In a ``values`` mapping: the column takes ``session_user`` (the login), not a parameter.
SESSION_USER = object()

#: A generation taken on an empty row: the database clock in microseconds, so that a row that
#: was deleted (released, broken) never hands out a generation it handed out before.
_FRESH_GENERATION = "CAST(EXTRACT(EPOCH FROM now()) * 1000000 AS BIGINT)"
_BASE_COLUMNS = ("holder", "host", "pid", "acquired_at", "renewed_at", "expires_at", "generation")


class LeaseLost(OperationFailed):
    """Another holder took the lease over (ours had expired), or it could not be renewed."""


class LeaseBusy(OperationFailed):
    """A live holder still has the lease after the wait; ``info`` names it."""

    def __init__(self, message: str, info: LeaseInfo) -> None:
        super().__init__(message)
        self.info = info


class Owner(Protocol):
    """Who takes a lease (``cesar.migrate.store.Identity`` is one)."""

    @property
    def holder(self) -> str: ...  # unique per take: host, pid and a random token

    @property
    def host(self) -> str: ...

    @property
    def pid(self) -> int: ...


@dataclass(frozen=True)
class Process:
    """This process as a lease owner."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def holder(self) -> str:
        return holder_name(self.host, self.pid, self.token)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): None when there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and parentheses: split after its end
            return f.read().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        return ""


def process_mark(pid: int | None = None) -> str:
    """What tells this process apart from another with the same hostname and pid: the boot,
    the pid namespace (containers, nspawn and pods may share a hostname) and the start time
    (a pid reused after the holder died)."""
    return f"{_boot_id()}.{_pid_namespace()}.{_start_time(pid or os.getpid()) or ''}"


def holder_name(host: str, pid: int, token: str) -> str:
    """``host:pid:token:mark`` (:func:`process_mark`), unique per take."""
    return f"{host}:{pid}:{token}:{process_mark(pid)}"


@dataclass(frozen=True)
class LeaseTable:
    """Where a lease lives: ``table`` (row ``key_column = key``), and how it is named."""

    table: str
    key: Any = 1
    key_column: str = "id"
    what: str = "lease"                         # for messages: "the migration lease"
    extra: tuple[str, ...] = ()                 # further columns read into LeaseInfo.extra
    #: The end of the LeaseLost message: what was (not) done and what to do.
    after_loss: str = "nothing more was done here"

    @property
    def ident(self) -> sql.Composable:
        # "schema.table" names two identifiers, not one with a dot in it.
        return sql.Identifier(*self.table.split("."))

    @property
    def key_ident(self) -> sql.Composable:
        return sql.Identifier(self.key_column)


def ddl(table: str, key_type: str = "TEXT") -> str:
    """A lease table for a new subsystem (keys of ``key_type``; one row per key)."""
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n"
            f"    id          {key_type}  PRIMARY KEY,\n"
            "    holder      TEXT        NOT NULL,\n"
            "    host        TEXT        NOT NULL,\n"
            "    pid         INT         NOT NULL,\n"
            "    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now(),\n"
            "    renewed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),\n"
            "    expires_at  TIMESTAMPTZ NOT NULL,\n"
            "    generation  BIGINT      NOT NULL DEFAULT 0\n)")


@dataclass(frozen=True)
class LeaseInfo:
    """A lease row as read (``seconds_left`` by the database clock: negative once expired)."""

    holder: str
    host: str
    pid: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    generation: int
    seconds_left: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def expired(self) -> bool:
        return self.seconds_left < 0

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def holder_is_gone(self) -> bool:
        """Whether the holder is certainly a process that no longer exists: same hostname,
        same boot and pid namespace as this process (seen in its holder name), and its pid is
        absent or belongs to a process started at another time. Anything else (another
        container sharing the hostname, a holder name without that mark) waits for expiry."""
        if not self.on_this_host:
            return False
        parts = self.holder.split(":")
        mark = parts[3].split(".") if len(parts) >= 4 else []
        if len(mark) != 3 or not mark[0] or not mark[1] or not mark[2]:
            return False
        boot, namespace, started = mark
        if boot != _boot_id() or namespace != _pid_namespace():
            return False
        now = _start_time(self.pid)
        return now is None or (now != "" and now != started)

    def describe(self) -> str:
        when = (f"expired {-self.seconds_left:.0f} s ago" if self.expired
                else f"expires in {self.seconds_left:.0f} s unless renewed")
        return (f"{self.holder} (pid {self.pid} on {self.host}, generation {self.generation}; "
                f"{when})")

    def as_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "host": self.host, "pid": self.pid,
                "acquired_at": self.acquired_at.isoformat(),
                "renewed_at": self.renewed_at.isoformat(),
                "expires_at": self.expires_at.isoformat(), "generation": self.generation,
                "seconds_left": round(self.seconds_left, 1), "expired": self.expired,
                **{k: v for k, v in self.extra.items()}}


def read(conn: psycopg.Connection, table: LeaseTable) -> LeaseInfo | None:
    """The lease row (None when free, or when the table does not exist yet).

    ``generation`` is read through the row's JSON, so a table created before that column
    existed reads as generation 0 instead of failing (the first take adds the column)."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in _BASE_COLUMNS[:-1] + table.extra)
    query = sql.SQL(
        "SELECT {}, COALESCE(CAST(row_to_json(l.*) ->> 'generation' AS BIGINT), 0), "
        "EXTRACT(EPOCH FROM expires_at - now()) FROM {} AS l WHERE {} = %s").format(
        cols, table.ident, table.key_ident)
    try:
        row = conn.execute(query, [table.key]).fetchone()
    except pgerrors.UndefinedTable:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise  # inside the caller's transaction: it is aborted, the caller decides
        return None
    if row is None:
        return None
    n = len(_BASE_COLUMNS) - 1
    return LeaseInfo(row[0], row[1], int(row[2]), row[3], row[4], row[5], int(row[-2]),
                     float(row[-1]), dict(zip(table.extra, row[n:-2], strict=True)))


def ensure_generation(conn: psycopg.Connection, table: LeaseTable) -> None:
    """Add ``generation`` to a lease table created before it existed (autocommit connection)."""
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL "
                         "DEFAULT 0").format(table.ident))


class Lease:
    """A lease held by this process: :meth:`acquire`, then use as a context manager."""

    def __init__(self, table: LeaseTable, conn: psycopg.Connection,
                 connect: Callable[[], psycopg.Connection], owner: Owner, seconds: float,
                 values: Mapping[str, Any] | None = None) -> None:
        self.table = table
        self.conn = conn
        self.connect = connect
        self.owner = owner
        self.seconds = seconds
        self.values = dict(values or {})
        self.generation = 0
        self.previous: LeaseInfo | None = None  # the holder taken over, if any
        self._lost = threading.Event()
        self._lost_reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed = time.monotonic()

    @property
    def holder(self) -> str:
        return self.owner.holder

    # ---------------------------------------------------------------- acquire / release
    @classmethod
    def acquire(
        cls, conn: psycopg.Connection, connect: Callable[[], psycopg.Connection],
        table: LeaseTable, *, owner: Owner | None = None, seconds: float,
        wait_seconds: float = 0.0, values: Mapping[str, Any] | None = None,
        on_wait: Callable[[LeaseInfo], None] | None = None,
        on_takeover: Callable[[psycopg.Connection, LeaseInfo], None] | None = None,
    ) -> Lease:
        """Take the lease, waiting up to ``wait_seconds`` while a live holder has it.

        ``conn`` is an autocommit connection to the lease's database; ``connect`` opens another
        (the heartbeat's). ``on_takeover(conn, previous)`` runs inside the transaction that takes
        over an expired or dead holder's row (to record it). Raises :class:`LeaseBusy`."""
        lease = cls(table, conn, connect, owner or Process(), seconds, values)
        deadline = time.monotonic() + wait_seconds
        last_notice = 0.0
        added_column = False
        while True:
            try:
                holder = db.run_transaction(conn, lambda c: lease._try_take(c, on_takeover))
            except pgerrors.UndefinedColumn:
                if added_column:
                    raise
                ensure_generation(conn, table)
                added_column = True
                continue
            if holder is None:
                lease._renewed = time.monotonic()
                lease._start_heartbeat()
                return lease
            now = time.monotonic()
            if now >= deadline:
                raise LeaseBusy(f"{table.what} is held by {holder.describe()}", holder)
            if on_wait is not None and now - last_notice >= 10:
                on_wait(holder)
                last_notice = now
            pause = min(1.0, seconds / 4, max(0.0, holder.seconds_left) + 0.05)
            time.sleep(min(deadline - now, max(0.05, pause) * random.uniform(0.5, 1.0)))

    def _assignments(self) -> tuple[sql.Composable, list[Any]]:
        parts, params = [], []
        for column, value in self.values.items():
            if value is SESSION_USER:
                parts.append(sql.SQL("{} = session_user").format(sql.Identifier(column)))
            else:
                parts.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        return sql.SQL("").join(sql.SQL(", ") + p for p in parts), params

    def _try_take(self, conn: psycopg.Connection,
                  on_takeover: Callable[[psycopg.Connection, LeaseInfo], None] | None
                  ) -> LeaseInfo | None:
        """One attempt, in one transaction: None when taken, else the live holder."""
        t = self.table
        # A writer fencing with this row holds it FOR SHARE until its commit: do not queue
        # behind it (a paused writer would hold us for ever); it is busy, try again shortly.
        conn.execute("SELECT set_config('lock_timeout', '500ms', true)")
        try:
            with conn.transaction():
                current = read(conn, t)
                if current is not None:
                    conn.execute(sql.SQL("SELECT 1 FROM {} WHERE {} = %s FOR UPDATE").format(
                        t.ident, t.key_ident), [t.key])
                    current = read(conn, t)
        except (pgerrors.LockNotAvailable, pgerrors.QueryCanceled):
            busy = read(conn, t)
            if busy is None:
                return self._try_take(conn, on_takeover)
            return LeaseInfo(busy.holder, busy.host, busy.pid, busy.acquired_at,
                             busy.renewed_at, busy.expires_at, busy.generation,
                             max(busy.seconds_left, 0.5), busy.extra)
        extra_set, extra_params = self._assignments()
        base = [self.holder, self.owner.host, self.owner.pid, timedelta(seconds=self.seconds)]
        if current is None:
            cols = [sql.Identifier(c) for c in self.values]
            vals = [sql.SQL("session_user") if v is SESSION_USER else sql.Placeholder()
                    for v in self.values.values()]
            row = conn.execute(
                sql.SQL("INSERT INTO {t} ({k}, holder, host, pid, expires_at, generation{c}) "
                        "VALUES (%s, %s, %s, %s, now() + %s, " + _FRESH_GENERATION + "{v}) "
                        "ON CONFLICT ({k}) DO NOTHING RETURNING generation").format(
                    t=t.ident, k=t.key_ident,
                    c=sql.SQL("").join(sql.SQL(", ") + c for c in cols),
                    v=sql.SQL("").join(sql.SQL(", ") + v for v in vals)),
                [t.key, *base, *extra_params]).fetchone()
            if row is None:  # another taker inserted it first
                return read(conn, t) or self._try_take(conn, on_takeover)
            self.generation = int(row[0])
            return None
        gone = current.holder_is_gone()
        if not (current.expired or gone or current.holder == self.holder):
            return current
        row = conn.execute(
            sql.SQL("UPDATE {t} SET holder = %s, host = %s, pid = %s, acquired_at = now(), "
                    "renewed_at = now(), expires_at = now() + %s, generation = GREATEST("
                    "generation + 1, " + _FRESH_GENERATION + "){extra} WHERE {k} = %s "
                    "RETURNING generation").format(t=t.ident, k=t.key_ident, extra=extra_set),
            [*base, *extra_params, t.key]).fetchone()
        assert row is not None
        self.generation = int(row[0])
        if current.holder != self.holder:
            self.previous = current
            why = "its holder's process is gone" if gone and not current.expired else "it expired"
            log.warning("took over %s of %s: %s", t.what, current.holder, why)
            if on_takeover is not None:
                on_takeover(conn, current)
        return None

    def install(self, conn: psycopg.Connection) -> None:
        """Copy this lease's token into ``conn``'s lease table (another database whose writes
        :meth:`fence` guards), in its own transaction. Raises :class:`LeaseLost` when that
        database already has a newer generation (a holder that took over after us)."""
        t = self.table

        def work(c: psycopg.Connection) -> Any:
            self.check()
            return c.execute(
                sql.SQL("INSERT INTO {t} AS l ({k}, holder, host, pid, expires_at, generation) "
                        "VALUES (%s, %s, %s, %s, now() + %s, %s) ON CONFLICT ({k}) DO UPDATE "
                        "SET holder = excluded.holder, host = excluded.host, pid = excluded.pid, "
                        "acquired_at = now(), renewed_at = now(), "
                        "expires_at = excluded.expires_at, generation = excluded.generation "
                        "WHERE l.generation < excluded.generation OR "
                        "(l.generation = excluded.generation AND l.holder = excluded.holder) "
                        "RETURNING generation").format(t=t.ident, k=t.key_ident),
                [t.key, self.holder, self.owner.host, self.owner.pid,
                 timedelta(seconds=self.seconds), self.generation]).fetchone()

        try:
            row = db.run_transaction(conn, work)
        except pgerrors.UndefinedColumn:
            ensure_generation(conn, t)
            row = db.run_transaction(conn, work)
        if row is None:
            self._lose("a newer holder has already written to that database")
            raise self._lost_error()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.seconds)
        t = self.table
        try:
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s AND holder = %s").format(
                t.ident, t.key_ident), [t.key, self.holder])
        except psycopg.Error as exc:  # the lease then simply expires
            log.warning("could not release %s (it expires by itself): %s", t.what, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ---------------------------------------------------------------- while held
    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self, conn: psycopg.Connection | None = None) -> None:
        """Raise :class:`LeaseLost` unless the lease is still ours.

        Without ``conn``: what the heartbeat last saw (no round trip). With ``conn``: a
        :meth:`fence` on it (inside the caller's transaction, its commit depends on it)."""
        if self._lost.is_set():
            raise self._lost_error()
        if conn is not None:
            self.fence(conn)

    def explain(self, exc: psycopg.Error) -> LeaseLost | None:
        """A connection of this holder's work failed: the :class:`LeaseLost` it amounts to when
        the lease is lost or has gone unrenewed for a whole lease by this process's clock (a
        holder paused inside a transaction finds its session ended by the server, which ends
        transactions idle for one lease: see ``idle_in_transaction_session_timeout`` in
        cesar.sync.run); None when the lease was renewed in time (then the failure is the
        database's, not the lease's)."""
        # Only a session that ended (no SQLSTATE: the connection closed under the client;
        # 25P03: the server ended the idle transaction): a canceled statement or a lock not
        # granted is the database's answer, whatever the heartbeat's state.
        if exc.sqlstate not in (None, "25P03"):
            return None
        if not self._lost.is_set():
            unrenewed = time.monotonic() - self._renewed
            if unrenewed < self.seconds:
                return None
            self._lose(f"not renewed for {unrenewed:.0f} s; the database ended its session: "
                       f"{first_line(exc)}")
        return self._lost_error()

    def fence(self, conn: psycopg.Connection) -> None:
        """Inside the caller's writing transaction: fail unless this holder and generation
        still hold the row, and keep it that way until the commit (``FOR SHARE``)."""
        if self._lost.is_set():
            raise self._lost_error()
        t = self.table
        row = conn.execute(
            sql.SQL("SELECT generation FROM {} WHERE {} = %s AND holder = %s "
                    "AND generation = %s FOR SHARE").format(t.ident, t.key_ident),
            [t.key, self.holder, self.generation]).fetchone()
        if row is None:
            self._lose("another holder took it over")
            raise self._lost_error()

    def renew(self, conn: psycopg.Connection | None = None, **values: Any) -> None:
        """Extend the expiry now; ``values`` update extra columns (``None`` keeps a value)."""
        c = conn or self.conn
        t = self.table
        sets = sql.SQL("").join(
            sql.SQL(", {c} = COALESCE(%s, {c})").format(c=sql.Identifier(k)) for k in values)
        row = c.execute(
            sql.SQL("UPDATE {t} SET renewed_at = now(), expires_at = now() + %s{sets} "
                    "WHERE {k} = %s AND holder = %s AND generation = %s RETURNING holder").format(
                t=t.ident, k=t.key_ident, sets=sets),
            [timedelta(seconds=self.seconds), *values.values(), t.key, self.holder,
             self.generation]).fetchone()
        if row is None:
            self._lose("another holder took it over")
            raise self._lost_error()

    def _lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(
            f"{self.holder} lost {self.table.what} ({self._lost_reason}): it was held for "
            f"{self.seconds:g} s at a time and not renewed in time (a pause, a frozen VM, a "
            f"database out of reach); {self.table.after_loss}")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name=f"{self.table.table}-heartbeat")
        self._thread.start()

    def _heartbeat(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.wait(self.seconds / 3):
                attempt = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        conn = self.connect()
                        # Behind a writer's FOR SHARE: wait at most a moment, then try again.
                        conn.execute("SET lock_timeout = '1s'")
                    self.renew(conn)
                    self._renewed = attempt
                except LeaseLost:
                    return
                except Exception as exc:  # noqa: BLE001 - any failure is a missed renewal
                    if time.monotonic() - self._renewed >= self.seconds:
                        # The row may have expired and been taken: stop the work.
                        first = first_line(exc)
                        self._lose(f"its heartbeat failed for {self.seconds:g} s: {first}")
                        return
                    log.warning("%s heartbeat failed (will retry): %s", self.table.what, exc)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
