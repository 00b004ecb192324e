"""Lock waits of a migration: the ``lock_timeout`` its statements run with, and who blocked them.

A schema change waiting for its table lock (``ACCESS EXCLUSIVE`` for most ``ALTER TABLE``,
``SHARE ROW EXCLUSIVE`` for ``CREATE TRIGGER``) behind one long transaction queues every later
reader and writer of that table behind itself: the application stalls for as long as that
transaction lasts. So each statement of a migration waits at most ``lock_timeout``; when it
gives up (SQLSTATE 55P03), the runner rolls the attempt back, which lets the queue through,
waits, and tries again, a bounded number of times.

The server's error says nothing of what was waited for, so while a statement runs longer than
a moment a watcher on its own connection asks the engine (``Engine.lock_waits_query``) what the
runner's session waits for and which sessions hold it. Only the pid, login, application, state
and transaction age of a blocker are read: never its query text, which can hold secrets.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg

from cesar.errors import ConfigError

log = logging.getLogger(__name__)

#: What PostgreSQL and CockroachDB (v21.2+, cockroachdb/cockroach#67514 and #68042) answer when
#: ``lock_timeout`` expires, and for ``NOWAIT`` lock requests.
LOCK_NOT_AVAILABLE = "55P03"
#: The longest wait between two attempts.
MAX_BACKOFF = 30.0


def validate(lock_timeout: float, lock_retries: int) -> None:
    if not math.isfinite(lock_timeout) or lock_timeout < 0:
        raise ConfigError(f"--lock-timeout {lock_timeout:g} is not a number of seconds; use 0 to "
                          "wait for locks without limit, or a positive number of seconds "
                          "(CESAR_MIGRATE_LOCK_TIMEOUT)")
    if lock_retries < 0:
        raise ConfigError(f"--lock-retries {lock_retries} is negative; use 0 to give up at the "
                          "first lock timeout (CESAR_MIGRATE_LOCK_RETRIES)")


def setting(lock_timeout: float) -> str:
    """The ``SET`` statement for ``lock_timeout`` seconds, in whole milliseconds (at least 1
    unless 0, which means no limit), written with its unit as both engines read it."""
    ms = 0 if lock_timeout == 0 else max(1, round(lock_timeout * 1000))
    return f"SET lock_timeout = '{ms}ms'"


def idle_setting(seconds: float) -> str:
    """``idle_in_transaction_session_timeout`` of ``seconds`` (PostgreSQL 9.6+; CockroachDB
    v20.2+, cockroachdb/cockroach#52938): the server ends a session whose transaction was left
    idle that long, releasing the locks it held."""
    return f"SET idle_in_transaction_session_timeout = '{max(1, round(seconds * 1000))}ms'"


def backoff(retry: int, lock_timeout: float) -> float:
    """Seconds to wait before retry ``retry`` (1-based): doubling from the lock timeout (at least
    half a second), capped, so that a holder that stays has the table to itself most of the
    time and the application's queue drains between attempts."""
    return min(MAX_BACKOFF, max(0.5, lock_timeout) * 2 ** (retry - 1))


@dataclass(frozen=True)
class Blocker:
    """A session holding (or queued ahead for) the lock a migration waited for."""

    pid: int
    user: str | None
    application: str | None
    state: str | None  # None: not visible to the runner's login (pg_read_all_stats shows it)
    transaction_seconds: float | None

    def describe(self) -> str:
        parts = [f"pid {self.pid}"]
        if self.user:
            parts.append(f"login {self.user}")
        parts.append(f"application {self.application!r}" if self.application
                     else "no application name")
        if self.state is None:
            parts.append("state not visible to this login (grant it pg_read_all_stats)")
        else:
            parts.append(self.state)
        if self.transaction_seconds is not None:
            parts.append(f"transaction open {self.transaction_seconds:.0f} s")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "user": self.user, "application": self.application,
                "state": self.state,
                "transaction_seconds": None if self.transaction_seconds is None
                else round(self.transaction_seconds, 1)}


@dataclass(frozen=True)
class Waited:
    """What a statement was seen waiting for: the lock, and who held it."""

    locktype: str
    mode: str | None
    relation: str | None
    blockers: tuple[Blocker, ...] = ()

    def lock(self) -> str:
        what = f"{self.mode} on {self.relation}" if self.relation else f"{self.mode}"
        return what if self.locktype == "relation" else f"{what} ({self.locktype} lock)"

    def holders(self) -> str:
        if not self.blockers:
            return "held by a session that had ended when it was looked up"
        return "held by " + "; ".join(b.describe() for b in self.blockers)

    def as_dict(self) -> dict[str, Any]:
        return {"locktype": self.locktype, "mode": self.mode, "relation": self.relation,
                "blockers": [b.as_dict() for b in self.blockers]}


@dataclass
class LockWait:
    """One attempt of a migration that gave up on a lock (``--json``: ``lock_waits``)."""

    migration: str
    direction: str
    statement: int
    line: int
    attempt: int
    lock_timeout: float
    waited: Waited | None
    retry_in: float | None  # None: no retry left
    kept: int = 0  # statements of the migration done and kept (per-statement modes)

    def describe(self) -> str:
        """The lock and its holders, as far as they were seen."""
        if self.waited is None:
            return ("a lock whose holder was not seen (the wait was shorter than the watcher's "
                    "first look, or the engine cannot say)")
        return f"{self.waited.lock()}, {self.waited.holders()}"

    def as_dict(self) -> dict[str, Any]:
        return {"migration": self.migration, "direction": self.direction,
                "statement": self.statement, "line": self.line, "attempt": self.attempt,
                "lock_timeout_s": self.lock_timeout,
                "waited_for": self.waited.as_dict() if self.waited else None,
                "retry_in_s": self.retry_in, "statements_kept": self.kept}


def parse(rows: list[tuple[Any, ...]]) -> Waited | None:
    """The rows of ``Engine.lock_waits_query`` as one :class:`Waited` (None: not waiting)."""
    if not rows:
        return None
    locktype, mode, relation = rows[0][:3]
    blockers = tuple(
        Blocker(int(pid), user, application, state,
                None if age is None else float(age))
        for _, _, _, pid, user, application, state, age in rows if pid is not None)
    return Waited(str(locktype), mode, relation, blockers)


class LockWatch:
    """Looks, on its own connection, at what the runner's session waits for while one of its
    statements runs longer than ``grace`` seconds; :attr:`seen` keeps the last answer.

    The connection is opened at the first look and kept for the next statements; a failure to
    look is logged and the statement goes on (the report then says the holder was not seen).
    """

    def __init__(self, connect: Callable[[], psycopg.Connection], query: str | None,
                 *, grace: float = 0.2, interval: float = 0.25) -> None:
        self._connect = connect
        self._query = query
        self.grace = grace
        self.interval = interval
        self._conn: psycopg.Connection | None = None
        self.seen: Waited | None = None

    @contextmanager
    def watching(self, pid: int | None) -> Iterator[None]:
        """Watch session ``pid`` for the duration of the block."""
        self.seen = None
        if self._query is None or pid is None:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._watch, args=(pid, stop), daemon=True,
                                  name="cesar-migrate-lock-watch")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _watch(self, pid: int, stop: threading.Event) -> None:
        if stop.wait(self.grace):
            return
        while not stop.is_set():
            try:
                seen = self._look(pid)
            except psycopg.Error as exc:
                log.info("cannot see what the migration waits for: %s", exc)
                self.close()
                return
            if seen is not None:
                self.seen = seen
            stop.wait(self.interval)

    def _look(self, pid: int) -> Waited | None:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            # As the login itself rather than a group role it may default to, so that its own
            # other sessions show their state (pg_stat_activity shows it to the same role only).
            with suppress(psycopg.Error):
                self._conn.execute("SET ROLE NONE")
        assert self._query is not None
        return parse(self._conn.execute(self._query, [pid]).fetchall())  # type: ignore[arg-type]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()
