"""The two databases' clocks: how far apart they are, and the bound last-writer-wins needs.

A version is the ``clock_timestamp()`` of the database where the write happened, so "last
writer wins" between a write on the local database and one on the cluster compares two clocks.
When they are ``s`` seconds apart, of two writes to one key less than ``s`` apart in real time
the earlier can win. A run measures the offset of each database's clock from this host's clock
(best of a few round trips; the uncertainty is half the round trip) and refuses to move
anything when the two offsets differ by more than ``CESAR_SYNC_MAX_CLOCK_SKEW_MS`` beyond that
uncertainty: the guarantee is then "of two writes to one key further apart than the bound, the
later wins".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from cesar.errors import OperationFailed

SAMPLES = 3


@dataclass(frozen=True)
class Skew:
    seconds: float      # cluster clock minus local clock
    uncertainty: float  # half the round trips of the readings, both sides

    @property
    def ms(self) -> float:
        return round(self.seconds * 1000, 1)


def offset(conn: psycopg.Connection) -> tuple[float, float]:
    """``(database clock - this host's clock, uncertainty)`` in seconds, best of SAMPLES."""
    best: tuple[float, float] | None = None
    for _ in range(SAMPLES):
        t0 = time.time()
        row = conn.execute("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS FLOAT8)"
                           ).fetchone()
        t1 = time.time()
        assert row is not None
        sample = (float(row[0]) - (t0 + t1) / 2, (t1 - t0) / 2)
        if best is None or sample[1] < best[1]:
            best = sample
    assert best is not None
    return best


def measure(local: psycopg.Connection, cluster: psycopg.Connection) -> Skew:
    lo, lu = offset(local)
    co, cu = offset(cluster)
    return Skew(co - lo, lu + cu)


def check(skew: Skew, max_ms: int, local: str, cluster: str) -> None:
    """Raise unless the clocks are within ``max_ms`` of each other (beyond the uncertainty)."""
    if abs(skew.seconds) - skew.uncertainty > max_ms / 1000:
        ahead = "cluster" if skew.seconds > 0 else "local database"
        raise OperationFailed(
            f"the clocks of the local database ({local}) and the cluster ({cluster}) differ by "
            f"{abs(skew.seconds):.1f} s (the {ahead} is ahead), more than "
            f"CESAR_SYNC_MAX_CLOCK_SKEW_MS={max_ms}: last writer wins compares their "
            "timestamps, so an older write could win; nothing was moved. Fix the servers' time "
            "synchronisation (NTP/chrony), or raise the bound knowing that writes to one key "
            "closer together than it may resolve the wrong way")
