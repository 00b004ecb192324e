"""The migration lease: one runner at a time per database, without advisory locks.

CockroachDB has no advisory locks, so the lock is a row (``schema_migration_lease``, id 1):
its holder, and an expiry computed with the *database* clock (``now() + lease``) so that the
runners' clocks never matter. A heartbeat thread, on its own connection, renews the expiry every
third of the lease while the run lasts; a runner killed with SIGKILL stops renewing and the row
can be taken over once it has expired, so a dead runner blocks the next one for at most one
lease. A live runner never loses it to another: takeover requires ``expires_at < now()``.

Holding the lease is re-checked before every statement (:meth:`Lease.check`), so a runner that
was paused past its expiry (a stopped VM, a long GC) finds out and stops instead of running
statements alongside the runner that took over.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cesar import db
from cesar.errors import ConfigError, OperationFailed
from cesar.migrate_store import LEASE_TABLE, Identity, insert_event

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_WAIT_SECONDS = 300.0
MAX_LEASE_SECONDS = 600.0


class LeaseLost(OperationFailed):
    """Another runner took the lease over (ours had expired): stop before the next statement."""


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    actor: str
    host: str
    pid: int
    command: str
    migration: str | None
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    seconds_left: float  # negative once expired (database clock)

    @property
    def expired(self) -> bool:
        return self.seconds_left < 0

    def describe(self) -> str:
        doing = f", applying {self.migration}" if self.migration else ""
        when = (f"expired {-self.seconds_left:.0f} s ago" if self.expired
                else f"expires in {self.seconds_left:.0f} s unless renewed")
        return (f"{self.holder} ({self.actor}, `cesar {self.command}`, pid {self.pid}{doing}; "
                f"{when})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "holder": self.holder, "actor": self.actor, "host": self.host, "pid": self.pid,
            "command": self.command, "migration": self.migration,
            "acquired_at": self.acquired_at.isoformat(), "renewed_at": self.renewed_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "seconds_left": round(self.seconds_left, 1), "expired": self.expired,
        }


def validate_seconds(lease_seconds: float, wait_seconds: float) -> None:
    if not 1 <= lease_seconds <= MAX_LEASE_SECONDS:
        raise ConfigError(f"--lease-seconds {lease_seconds:g} is out of range; use 1 to "
                          f"{MAX_LEASE_SECONDS:g} (default {DEFAULT_LEASE_SECONDS:g})")
    if wait_seconds < 0:
        raise ConfigError(f"--wait-seconds {wait_seconds:g} is negative; use 0 to fail at once")


def read(conn: psycopg.Connection) -> LeaseInfo | None:
    """The current lease row (None when free or when the table does not exist yet)."""
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                f"SELECT holder, actor, host, pid, command, migration, acquired_at, renewed_at, "
                f"expires_at, EXTRACT(EPOCH FROM expires_at - now()) AS seconds_left "
                f"FROM {LEASE_TABLE} WHERE id = 1"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        if not conn.autocommit:
            conn.rollback()
        return None
    if row is None:
        return None
    row["seconds_left"] = float(row["seconds_left"])
    return LeaseInfo(**row)


class Lease:
    """The lease held by this process. Use :meth:`acquire`, then as a context manager."""

    def __init__(self, conn: psycopg.Connection, connect: Callable[[], psycopg.Connection],
                 identity: Identity, seconds: float) -> None:
        self.conn = conn
        self.connect = connect
        self.identity = identity
        self.seconds = seconds
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- acquire / release
    @classmethod
    def acquire(
        cls, conn: psycopg.Connection, connect: Callable[[], psycopg.Connection],
        identity: Identity, *, seconds: float = DEFAULT_LEASE_SECONDS,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        on_wait: Callable[[LeaseInfo], None] | None = None,
    ) -> Lease:
        """Take the lease, waiting (bounded) while a live runner holds it."""
        lease = cls(conn, connect, identity, seconds)
        deadline = time.monotonic() + wait_seconds
        last_notice = 0.0
        while True:
            holder = db.run_transaction(conn, lease._try_take)
            if holder is None:
                lease._start_heartbeat()
                return lease
            now = time.monotonic()
            if now >= deadline:
                raise OperationFailed(
                    f"the migration lease is still held by {holder.describe()} after waiting "
                    f"{wait_seconds:g} s; let that run finish (`cesar migrate lock status`), "
                    "or raise --wait-seconds"
                )
            if on_wait is not None and now - last_notice >= 10:
                on_wait(holder)
                last_notice = now
            pause = min(1.0, seconds / 4, max(0.0, holder.seconds_left) + 0.05)
            time.sleep(min(deadline - now, max(0.05, pause) * random.uniform(0.5, 1.0)))

    def _try_take(self, conn: psycopg.Connection) -> LeaseInfo | None:
        """One attempt, in one transaction: None when taken, else the live holder."""
        current = None
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                f"SELECT holder, expires_at < now() AS expired FROM {LEASE_TABLE} "
                "WHERE id = 1 FOR UPDATE"
            ).fetchone()
        ident = self.identity
        values = [ident.holder, ident.host, ident.pid, ident.command,
                  timedelta(seconds=self.seconds)]
        if row is None:
            taken = conn.execute(
                f"INSERT INTO {LEASE_TABLE} (id, holder, actor, host, pid, command, expires_at) "
                "VALUES (1, %s, session_user, %s, %s, %s, now() + %s) "
                "ON CONFLICT (id) DO NOTHING RETURNING holder", values,
            ).fetchone()
            if taken is not None:
                return None
        elif row["expired"] or row["holder"] == ident.holder:
            previous = read(conn)
            conn.execute(
                f"UPDATE {LEASE_TABLE} SET holder = %s, actor = session_user, host = %s, pid = %s, "
                "command = %s, migration = NULL, acquired_at = now(), renewed_at = now(), "
                "expires_at = now() + %s WHERE id = 1", values,
            )
            if row["holder"] != ident.holder and previous is not None:
                insert_event(conn, ident, "lease-takeover", previous.migration,
                             reason="the previous holder's lease expired",
                             detail={"previous": previous.as_dict()})
            return None
        current = read(conn)
        if current is None:  # released between our two reads: try again at once
            return self._try_take(conn)
        return current

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.seconds)
        try:
            self.conn.execute(f"DELETE FROM {LEASE_TABLE} WHERE id = 1 AND holder = %s",
                              [self.identity.holder])
        except psycopg.Error as exc:  # the lease then simply expires
            log.warning("could not release the migration lease (it expires by itself): %s", exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ---------------------------------------------------------------- while held
    def check(self, conn: psycopg.Connection | None = None) -> None:
        """Raise :class:`LeaseLost` unless we still hold the lease.

        Without ``conn``: what the heartbeat last saw (no round trip). With ``conn`` (inside the
        caller's transaction): a read of the row, so the caller's commit depends on it.
        """
        if self._lost.is_set():
            raise self._lost_error()
        if conn is not None:
            row = conn.execute(f"SELECT holder FROM {LEASE_TABLE} WHERE id = 1").fetchone()
            if row is None or row[0] != self.identity.holder:
                self._lost.set()
                raise self._lost_error()

    def renew(self, conn: psycopg.Connection | None = None, migration: str | None = None) -> None:
        """Extend the expiry now (and name the migration being applied, for `lock status`)."""
        c = conn or self.conn
        row = c.execute(
            f"UPDATE {LEASE_TABLE} SET renewed_at = now(), expires_at = now() + %s, "
            "migration = COALESCE(%s, migration) WHERE id = 1 AND holder = %s RETURNING holder",
            [timedelta(seconds=self.seconds), migration, self.identity.holder],
        ).fetchone()
        if row is None:
            self._lost.set()
            raise self._lost_error()

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(
            f"this runner ({self.identity.holder}) lost the migration lease: it was paused past "
            f"its {self.seconds:g} s lease and another runner took over; nothing more was run "
            "here; check `cesar migrate status`, then run `cesar migrate up` again"
        )

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, name="migrate-lease-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        interval = self.seconds / 3
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.wait(interval):
                try:
                    if conn is None or conn.closed:
                        conn = self.connect()
                    self.renew(conn)
                except LeaseLost:
                    return
                except (psycopg.Error, OperationFailed) as exc:
                    log.warning("migration lease heartbeat failed (will retry): %s", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()


def break_lease(conn: psycopg.Connection, identity: Identity, *, force: bool,
                reason: str | None) -> LeaseInfo | None:
    """Remove the lease row: only an expired one, unless forced with a reason.

    Returns what was broken (None when there was no lease). The event names the previous
    holder and the reason.
    """
    if force and not reason:
        raise ConfigError("`lock break --force` needs --reason TEXT (it is recorded)")

    def work(c: psycopg.Connection) -> LeaseInfo | None:
        info = read(c)
        if info is None:
            return None
        if not info.expired and not force:
            raise OperationFailed(
                f"the migration lease is held by {info.describe()}; a live runner renews it, "
                "so wait for it to finish, or if you are sure that runner is gone: "
                "`cesar migrate lock break --force --reason TEXT`"
            )
        c.execute(f"DELETE FROM {LEASE_TABLE} WHERE id = 1 AND holder = %s", [info.holder])
        insert_event(c, identity, "lock-broken", info.migration,
                     reason=reason or "the lease had expired",
                     detail={"previous": info.as_dict(), "forced": force})
        return info

    return db.run_transaction(conn, work)
