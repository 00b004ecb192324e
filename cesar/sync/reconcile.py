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

Last, per table and side, the version rows that still say "live" for a key whose row neither
side has (rows deleted behind the capture on both sides alike, which no range comparison sees:
both sides agree) become tombstones, keeping their version; the divergence check would
otherwise report them on every run. Only acknowledged ones: a pending one is a change in
flight, which the incremental pass moves (as a delete). The update re-checks, under the
version row's lock, that it is unchanged and the row still absent, so a writer's concurrent
insert of that key keeps its version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar.sync.apply import Outcome, Target, apply_changes
from cesar.sync.capture import Change
from cesar.sync.rule import Version, compare
from cesar.sync.tables import TableSpec

log = logging.getLogger(__name__)


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
    orphans_settled: int = 0  # live version rows of keys neither side has, made tombstones
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


def read_versions(conn: psycopg.Connection, spec: TableSpec, keys: list[str]
                  ) -> dict[str, Version]:
    """The (version, origin) each of ``keys`` has in ``spec``'s table on one side."""
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
    check()
    report.orphans_settled += settle_orphans(sides, spec, target)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


#: One side's acknowledged live version rows whose row is gone on that side.
_ORPHANS = ("SELECT v.pk, v.version, v.origin FROM sync_versions AS v WHERE v.table_name = {name} "
            "AND NOT v.deleted AND NOT v.pending AND NOT EXISTS "
            "(SELECT 1 FROM {t} AS t WHERE t.id = CAST(v.pk AS {pk_type})) ORDER BY v.pk")
_PRESENT = "SELECT CAST(t.id AS TEXT) FROM {t} AS t WHERE t.id = ANY(CAST(%s AS {pk_type}[]))"
_SETTLE = ("UPDATE sync_versions AS v SET deleted = true FROM "
           "(SELECT unnest(CAST(%s AS TEXT[])) AS pk, "
           "unnest(CAST(%s AS TIMESTAMPTZ[])) AS version, "
           "unnest(CAST(%s AS TEXT[])) AS origin) AS o "
           "WHERE v.table_name = {name} AND v.pk = o.pk AND v.version = o.version "
           "AND v.origin = o.origin AND NOT v.deleted AND NOT v.pending AND NOT EXISTS "
           "(SELECT 1 FROM {t} AS t WHERE t.id = CAST(v.pk AS {pk_type}))")


def settle_orphans(sides: tuple[_Side, _Side], spec: TableSpec,
                   target: Callable[[str], Target]) -> int:
    """Make tombstones of the live version rows of keys that neither side has a row of (see
    the module); returns how many (on a dry run: how many would be)."""
    names = {"name": sql.Literal(spec.name), "t": spec.ident,
             "pk_type": sql.SQL(spec.pk_type)}
    settled = 0
    for side, other in (sides, sides[::-1]):
        orphans = side.conn.execute(sql.SQL(_ORPHANS).format(**names)).fetchall()
        if not orphans:
            continue
        present = {pk for (pk,) in other.conn.execute(
            sql.SQL(_PRESENT).format(**names), [[pk for pk, _, _ in orphans]])}
        gone = [o for o in orphans if o[0] not in present]
        if not gone:
            continue
        tgt = target(side.name)
        if tgt.dry_run:
            settled += len(gone)
            continue
        try:
            with side.conn.transaction():
                side.conn.execute("SELECT set_config('lock_timeout', %s, true)",
                                  [f"{tgt.lock_timeout()}ms"])
                done = side.conn.execute(sql.SQL(_SETTLE).format(**names), [
                    [pk for pk, _, _ in gone], [v for _, v, _ in gone],
                    [o for _, _, o in gone]]).rowcount
                if tgt.fence is not None:
                    tgt.fence(side.conn)
        except (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected,
                pgerrors.SerializationFailure):
            log.info("%s: a writer holds or took version rows of keys gone on both sides (%s "
                     "side); the next --full settles them", spec.name, side.name)
            continue
        settled += done
    return settled


def _repair_range(sides: tuple[_Side, _Side], spec: TableSpec, lo: Any, hi: Any,
                  report: ReconcileReport, target: Callable[[str], Target], batch_size: int,
                  ) -> None:
    rows, versions = _snapshot(sides, spec, lo, hi, report)
    keys = sorted(k for k in rows["local"].keys() | rows["cluster"].keys()
                  if _differ(rows["local"].get(k), rows["cluster"].get(k)))
    if not keys:
        return
    report.keys_differing += len(keys)
    plans: dict[str, tuple[list[Change], dict[str, Version | None]]] = {
        "local": ([], {}), "cluster": ([], {})}
    for key in keys:
        lv, cv = versions["local"].get(key), versions["cluster"].get(key)
        winner = _winner(compare(lv, cv), key in rows["local"], key in rows["cluster"])
        loser = "cluster" if winner == "local" else "local"
        wv = lv if winner == "local" else cv
        image = rows[winner].get(key)
        change = Change(key, wv[0] if wv else None, wv[1] if wv else "", image is None,
                        image[1] if image else None)
        plans[loser][0].append(change)
        plans[loser][1][key] = versions[loser].get(key)
    by_name = {s.name: s for s in sides}
    for side, (changes, expect) in plans.items():
        winner = by_name["cluster" if side == "local" else "local"]
        for start in range(0, len(changes), batch_size):
            batch = changes[start:start + batch_size]
            tgt = target(side)
            with winner.conn.transaction():
                # The winner's version rows stay as compared (locked, or still absent) until
                # the target has committed: a key written on the winner's side meanwhile is
                # deferred (its new version is pending there and moves next run), never
                # stamped on the target with the image read before that write.
                still = _still_winning(winner.conn, spec, batch, lock=not tgt.dry_run)
                outcome = apply_changes(tgt, spec, [ch for ch in batch if ch.pk in still],
                                        expect=expect)
            outcome.deferred.extend(ch for ch in batch if ch.pk not in still)
            _count(report, side, outcome)


def _snapshot(sides: tuple[_Side, _Side], spec: TableSpec, lo: Any, hi: Any,
              report: ReconcileReport
              ) -> tuple[dict[str, dict[str, tuple[str, str]]], dict[str, dict[str, Version]]]:
    """Each side's rows of the range and the versions of the keys that differ, read in one
    snapshot per side (a repeatable-read, read-only transaction; CockroachDB runs it
    serializable, also one snapshot): a row's image and its version always belong together,
    whatever an application commits between the two reads."""
    with ExitStack() as stack:
        for s in sides:
            stack.enter_context(s.conn.transaction())
            s.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = {s.name: _rows(s.conn, spec, lo, hi) for s in sides}
        report.rows_compared += sum(len(r) for r in rows.values())
        keys = sorted(k for k in rows["local"].keys() | rows["cluster"].keys()
                      if _differ(rows["local"].get(k), rows["cluster"].get(k)))
        versions = {s.name: read_versions(s.conn, spec, keys) if keys else {} for s in sides}
    return rows, versions


def _still_winning(conn: psycopg.Connection, spec: TableSpec, changes: list[Change], *,
                   lock: bool) -> set[str]:
    """The keys whose version row on the winner's side is still the one compared (absent
    for a change without a version); locked ``FOR UPDATE`` (skipping keys a writer holds,
    which are deferred) until the caller's transaction ends."""
    rows = conn.execute(
        "SELECT pk, version, origin FROM sync_versions WHERE table_name = %s "
        "AND pk = ANY(CAST(%b AS TEXT[]))" + (" FOR UPDATE SKIP LOCKED" if lock else ""),
        [spec.name, [ch.pk for ch in changes]]).fetchall()
    now = {pk: (v, o) for pk, v, o in rows}
    locked_or_absent = {ch.pk for ch in changes if ch.pk not in now}
    present = {pk for pk in now}
    if lock and locked_or_absent:
        # A key missing from the locked read is either absent or held by a writer.
        present |= {pk for (pk,) in conn.execute(
            "SELECT pk FROM sync_versions WHERE table_name = %s "
            "AND pk = ANY(CAST(%b AS TEXT[]))", [spec.name, sorted(locked_or_absent)])}
    still = set()
    for ch in changes:
        if ch.written_at is None:
            if ch.pk not in present:
                still.add(ch.pk)
        elif now.get(ch.pk) == ch.version:
            still.add(ch.pk)
    return still


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
