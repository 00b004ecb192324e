"""One sync run at a time: the lease row ``sync_lease`` (id 1) of :mod:`cesar.db.lease`.

The lease is taken in the cluster database, which every run of a pair reaches; its token is
then installed in the local database's ``sync_lease`` too, so that the writes on *both* sides
(applies, acknowledgements, repairs, state) are fenced in their own transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from cesar.db import lease as base
from cesar.db.lease import LeaseBusy, LeaseLost

__all__ = ["TABLE", "Holder", "LeaseBusy", "LeaseLost", "SyncLease", "new_holder_name", "read"]

TABLE = base.LeaseTable(
    "sync_lease", what="the sync lease",
    after_loss="it stopped before its next write (nothing is lost: what it did not acknowledge "
               "is sent again by the run that took over)")


@dataclass(frozen=True)
class Holder:
    holder: str
    host: str
    pid: int
    acquired_at: datetime
    seconds_left: float
    generation: int = 0

    @classmethod
    def of(cls, info: base.LeaseInfo) -> Holder:
        return cls(info.holder, info.host, info.pid, info.acquired_at, info.seconds_left,
                   info.generation)

    def describe(self) -> str:
        return (f"{self.holder} (pid {self.pid} on {self.host}, running since "
                f"{self.acquired_at:%Y-%m-%d %H:%M:%S %Z}, lease expires in "
                f"{max(self.seconds_left, 0):.0f} s unless renewed)")

    def as_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "host": self.host, "pid": self.pid,
                "acquired_at": self.acquired_at.isoformat(),
                "seconds_left": round(self.seconds_left, 1), "generation": self.generation}


def read(conn: psycopg.Connection) -> Holder | None:
    info = base.read(conn, TABLE)
    return Holder.of(info) if info is not None else None


def new_holder_name() -> str:
    return base.Process().holder


class SyncLease(base.Lease):
    """The lease of this run (``acquire`` raises :class:`LeaseBusy` while another run has it)."""

    @property
    def name(self) -> str:
        return self.holder

    @classmethod
    def acquire(  # type: ignore[override]
        cls, conn: psycopg.Connection, connect: Any, *, seconds: float, wait: float,
    ) -> SyncLease:
        lease = super().acquire(conn, connect, TABLE, seconds=seconds, wait_seconds=wait)
        assert isinstance(lease, SyncLease)
        return lease
