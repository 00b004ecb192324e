"""``--full``: compare both sides by key and row hash, in ranges, and repair what differs.

Per table, walk the key space in ranges of at most ``range_size`` rows on *each* side: the next
boundary is the smaller of the two sides' ``range_size``-th next key, so a side that has many
rows the other lacks still yields small ranges. For each range both databases compute
``count(*)`` and ``md5(string_agg(md5(<canonical row text>), '' ORDER BY id))``; only a range
whose digests differ is fetched (at most ``range_size`` rows from each side) and compared key by
key. Memory stays bounded by the range size, and an equal range costs two small queries.

Each differing key is settled by the conflict rule: the greater version wins (a tombstone is
a version). With equal versions, or none on either side (rows older than the capture, writes
that bypassed it), a row that exists on one side only is copied to the other (nothing says it
was deleted: no row is dropped on a guess), and of two different rows the cluster's wins. The
winner is written to the other side through the same locked apply as the incremental pass,
over exactly the version the comparison saw (a key written meanwhile is left to the next run),
and the overwritten image is recorded as a ``repaired`` conflict.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from cesar.sync.apply import Outcome, Target, apply_changes
from cesar.sync.capture import Change
from cesar.sync.rule import Version, compare
from cesar.sync.tables import TableSpec


@dataclass
class ReconcileReport:
    table: str
    ranges: int = 0
    ranges_differing: int = 0
    rows_compared: int = 0
    keys_differing: int = 0
    repaired_local: int = 0    # keys written on the local side
    repaired_cluster: int = 0  # keys written on the cluster side
    deferred: int = 0
    failed: int = 0
    conflicts_local: int = 0    # recorded in the local database
    conflicts_cluster: int = 0  # recorded in the cluster database
    seconds: float = 0.0

    @property
    def conflicts(self) -> int:
        return self.conflicts_local + self.conflicts_cluster

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "conflicts": self.conflicts}


@dataclass(frozen=True)
class _Side:
    name: str  # local or cluster
    conn: psycopg.Connection


def _bound_sql(spec: TableSpec, lo: Any, hi: Any) -> tuple[sql.Composable, list[Any]]:
    parts: list[sql.Composable] = []
    params: list[Any] = []
    if lo is not None:
        parts.append(sql.SQL("t.id > %s"))
        params.append(lo)
    if hi is not None:
        parts.append(sql.SQL("t.id <= %s"))
        params.append(hi)
    where = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    return where, params


def next_bound(conn: psycopg.Connection, spec: TableSpec, lo: Any, size: int) -> Any:
    """The ``size``-th key after ``lo`` (None when fewer remain)."""
    where, params = _bound_sql(spec, lo, None)
    row = conn.execute(
        sql.SQL("SELECT t.id FROM {} AS t WHERE {} ORDER BY t.id LIMIT 1 OFFSET %s").format(
            spec.ident, where), [*params, size - 1]).fetchone()
    return row[0] if row else None


def digest(conn: psycopg.Connection, spec: TableSpec, lo: Any, hi: Any) -> tuple[int, str]:
    where, params = _bound_sql(spec, lo, hi)
    row = conn.execute(
        sql.SQL("SELECT count(*), COALESCE(md5(string_agg(md5({canon}), '' ORDER BY t.id)), '') "
                "FROM {t} AS t WHERE {where}").format(
            canon=spec.canonical_text("t"), t=spec.ident, where=where), params).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _rows(conn: psycopg.Connection, spec: TableSpec, lo: Any, hi: Any
          ) -> dict[str, tuple[str, str]]:
    """key -> (row hash, row as JSON) for the range."""
    where, params = _bound_sql(spec, lo, hi)
    return {pk: (h, j) for pk, h, j in conn.execute(
        sql.SQL("SELECT CAST(t.id AS TEXT), md5({canon}), CAST(row_to_json(t.*) AS TEXT) "
                "FROM {t} AS t WHERE {where}").format(
            canon=spec.canonical_text("t"), t=spec.ident, where=where), params).fetchall()}


def _versions(conn: psycopg.Connection, spec: TableSpec, keys: list[str]
              ) -> dict[str, Version]:
    return {pk: (v, o) for pk, v, o in conn.execute(
        "SELECT pk, version, origin FROM sync_versions "
        "WHERE table_name = %s AND pk = ANY(CAST(%b AS TEXT[]))",
        [spec.name, keys]).fetchall()}


def reconcile_table(local: psycopg.Connection, cluster: psycopg.Connection, spec: TableSpec, *,
                    range_size: int, target: Callable[[str], Target], batch_size: int,
                    check: Callable[[], None] = lambda: None) -> ReconcileReport:
    """Compare and repair one table; ``target(side)`` gives the apply settings for that side."""
    import time

    started = time.perf_counter()
    report = ReconcileReport(spec.name)
    sides = (_Side("local", local), _Side("cluster", cluster))
    lo: Any = None
    while True:
        check()
        bounds = [b for b in (next_bound(s.conn, spec, lo, range_size) for s in sides)
                  if b is not None]
        hi = min(bounds) if bounds else None
        report.ranges += 1
        if digest(local, spec, lo, hi) != digest(cluster, spec, lo, hi):
            report.ranges_differing += 1
            _repair_range(sides, spec, lo, hi, report, target, batch_size)
        if hi is None:
            break
        lo = hi
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _repair_range(sides: tuple[_Side, _Side], spec: TableSpec, lo: Any, hi: Any,
                  report: ReconcileReport, target: Callable[[str], Target], batch_size: int,
                  ) -> None:
    local_rows = _rows(sides[0].conn, spec, lo, hi)
    cluster_rows = _rows(sides[1].conn, spec, lo, hi)
    report.rows_compared += len(local_rows) + len(cluster_rows)
    keys = sorted(k for k in local_rows.keys() | cluster_rows.keys()
                  if _differ(local_rows.get(k), cluster_rows.get(k)))
    if not keys:
        return
    report.keys_differing += len(keys)
    versions = {"local": _versions(sides[0].conn, spec, keys),
                "cluster": _versions(sides[1].conn, spec, keys)}
    rows = {"local": local_rows, "cluster": cluster_rows}
    plans: dict[str, tuple[list[Change], dict[str, Version | None]]] = {
        "local": ([], {}), "cluster": ([], {})}
    for key in keys:
        lv, cv = versions["local"].get(key), versions["cluster"].get(key)
        winner = _winner(compare(lv, cv), key in local_rows, key in cluster_rows)
        loser = "cluster" if winner == "local" else "local"
        wv = lv if winner == "local" else cv
        image = rows[winner].get(key)
        change = Change(key, wv[0] if wv else None, wv[1] if wv else "", image is None,
                        image[1] if image else None)
        plans[loser][0].append(change)
        plans[loser][1][key] = versions[loser].get(key)
    for side, (changes, expect) in plans.items():
        for start in range(0, len(changes), batch_size):
            outcome = apply_changes(target(side), spec, changes[start:start + batch_size],
                                    expect=expect)
            _count(report, side, outcome)


def _winner(order: int, in_local: bool, in_cluster: bool) -> str:
    """The side whose state of a differing key wins.

    The greater version wins (a tombstone is a version). With equal versions, or none on either
    side, a row present on one side only wins: the other side has no tombstone, so nothing says
    it was deleted there, and a row is never dropped on a guess. Two different images with equal
    versions: the cluster's."""
    if order:
        return "local" if order > 0 else "cluster"
    if in_local != in_cluster:
        return "local" if in_local else "cluster"
    return "cluster"


def _differ(a: tuple[str, str] | None, b: tuple[str, str] | None) -> bool:
    if a is None or b is None:
        return a is not b
    if a[0] == b[0]:
        return False
    # The hashes differ: compare the values (the two engines may print a type differently).
    return bool(json.loads(a[1]) != json.loads(b[1]))


def _count(report: ReconcileReport, side: str, outcome: Outcome) -> None:
    if side == "local":
        report.repaired_local += len(outcome.applied)
        report.conflicts_local += outcome.conflicts
    else:
        report.repaired_cluster += len(outcome.applied)
        report.conflicts_cluster += outcome.conflicts
    report.deferred += len(outcome.deferred)
    report.failed += len(outcome.failed)
