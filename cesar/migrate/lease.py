"""The migration lease: one runner at a time per database (``schema_migration_lease``, id 1).

The lease itself (database-clock expiry, heartbeat, fencing generation, takeover of an expired
or dead holder) is :mod:`cesar.db.lease`; this module adds what only the runner has: the columns
naming the command and the migration being applied, the ``lease-takeover`` event, and
``lock break``. The runner fences every tracking-row write (:meth:`Lease.check` with its
connection, inside that transaction), so a runner paused past its lease cannot record progress,
or commit a transactional migration, after another runner took over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from cesar import db
from cesar.db import lease as base
from cesar.db.lease import LeaseLost
from cesar.errors import ConfigError, OperationFailed
from cesar.migrate.store import LEASE_TABLE, Identity, insert_event

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LEASE_SECONDS", "DEFAULT_WAIT_SECONDS", "MAX_LEASE_SECONDS", "TABLE",
           "Lease", "LeaseInfo", "LeaseLost", "break_lease", "read", "validate_seconds"]

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_WAIT_SECONDS = 300.0
MAX_LEASE_SECONDS = 600.0

TABLE = base.LeaseTable(
    LEASE_TABLE, what="the migration lease", extra=("actor", "command", "migration"),
    after_loss="nothing more was run here; check `cesar migrate status`, then run "
               "`cesar migrate up` again")


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
    generation: int = 0

    @classmethod
    def of(cls, info: base.LeaseInfo) -> LeaseInfo:
        x = info.extra
        return cls(info.holder, x["actor"], info.host, info.pid, x["command"], x["migration"],
                   info.acquired_at, info.renewed_at, info.expires_at, info.seconds_left,
                   info.generation)

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
            "generation": self.generation,
        }


def validate_seconds(lease_seconds: float, wait_seconds: float) -> None:
    if not 1 <= lease_seconds <= MAX_LEASE_SECONDS:
        raise ConfigError(f"--lease-seconds {lease_seconds:g} is out of range; use 1 to "
                          f"{MAX_LEASE_SECONDS:g} (default {DEFAULT_LEASE_SECONDS:g})")
    if wait_seconds < 0:
        raise ConfigError(f"--wait-seconds {wait_seconds:g} is negative; use 0 to fail at once")


def read(conn: psycopg.Connection) -> LeaseInfo | None:
    """The current lease row (None when free or when the table does not exist yet)."""
    info = base.read(conn, TABLE)
    return LeaseInfo.of(info) if info is not None else None


class Lease(base.Lease):
    """The lease held by this runner. Use :meth:`acquire`, then as a context manager."""

    identity: Identity

    @classmethod
    def acquire(  # type: ignore[override]
        cls, conn: psycopg.Connection, connect: Callable[[], psycopg.Connection],
        identity: Identity, *, seconds: float = DEFAULT_LEASE_SECONDS,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        on_wait: Callable[[LeaseInfo], None] | None = None,
    ) -> Lease:
        """Take the lease, waiting (bounded) while a live runner holds it."""

        def takeover(c: psycopg.Connection, previous: base.LeaseInfo) -> None:
            info = LeaseInfo.of(previous)
            why = ("the previous holder's lease expired" if info.expired
                   else "the previous holder's process is gone (same host)")
            insert_event(c, identity, "lease-takeover", info.migration, reason=why,
                         detail={"previous": info.as_dict()})

        try:
            lease = super().acquire(
                conn, connect, TABLE, owner=identity, seconds=seconds, wait_seconds=wait_seconds,
                values={"actor": base.SESSION_USER, "command": identity.command,
                        "migration": None},
                on_wait=(lambda i: on_wait(LeaseInfo.of(i))) if on_wait else None,
                on_takeover=takeover)
        except base.LeaseBusy as busy:
            raise OperationFailed(
                f"the migration lease is still held by {LeaseInfo.of(busy.info).describe()} "
                f"after waiting {wait_seconds:g} s; let that run finish "
                "(`cesar migrate lock status`), or raise --wait-seconds") from None
        assert isinstance(lease, Lease)
        lease.identity = identity
        return lease

    def renew(self, conn: psycopg.Connection | None = None,  # type: ignore[override]
              migration: str | None = None) -> None:
        """Extend the expiry now (and name the migration being applied, for `lock status`)."""
        super().renew(conn, migration=migration)


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
