"""The target side of a run: applying a batch of changes in one transaction.

In that transaction, with ``cesar.sync_apply = on`` (so the capture trigger ignores these writes:
no echo), the target's rows and version rows of the batch's keys are locked with ``FOR UPDATE
SKIP LOCKED``; a key that an open transaction holds is *deferred* (the run never waits for an
application). Each remaining key is decided by :func:`cesar.sync.rule.decide`; winners are
written (rows from ``json_populate_recordset``, tombstones as ``DELETE``) together with their
version rows, which take the incoming ``(version, origin)`` and ``pending = false``; every lost
version whose image differs is recorded in ``sync_conflicts``.

A batch that fails (a unique or foreign-key violation, a lock wait past ``lock_timeout``) is
split in halves, each in its own transaction, until the failing key is alone: that key is
recorded as ``failed`` (or deferred, for a lock) and everything else is applied.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from cesar import db
from cesar.console import first_line
from cesar.errors import RetryExhausted
from cesar.sync.capture import Change
from cesar.sync.rule import Action, Existing, Version, compare, decide
from cesar.sync.tables import TableSpec, key_filter, key_range

#: Errors that concern some rows of a batch, not the run: split the batch to find them.
ROW_ERRORS: tuple[type[BaseException], ...] = (
    pgerrors.IntegrityError, pgerrors.DataError, pgerrors.LockNotAvailable,
    pgerrors.DeadlockDetected, pgerrors.QueryCanceled, RetryExhausted,
)
#: Of those, the ones that mean "busy", not "wrong": the key is retried next run.
BUSY_ERRORS: tuple[type[BaseException], ...] = (
    pgerrors.LockNotAvailable, pgerrors.DeadlockDetected, pgerrors.QueryCanceled, RetryExhausted,
)


@dataclass
class Outcome:
    """What happened to each change of a batch."""

    applied: list[Change] = field(default_factory=list)    # written on the target
    same: list[Change] = field(default_factory=list)       # the target already had it
    discarded: list[Change] = field(default_factory=list)  # the target's version is newer
    deferred: list[Change] = field(default_factory=list)   # busy on the target: next run
    failed: list[Change] = field(default_factory=list)     # cannot be applied: recorded
    conflicts: int = 0                                     # rows added to sync_conflicts
    #: Failures found before writing (a foreign key the data breaks): key -> reason, recorded
    #: after the batch's transaction without running the statement that would fail.
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def settled(self) -> list[Change]:
        """The changes the source may stop sending (acknowledge)."""
        return self.applied + self.same + self.discarded

    def merge(self, other: Outcome) -> Outcome:
        for name in ("applied", "same", "discarded", "deferred", "failed"):
            getattr(self, name).extend(getattr(other, name))
        self.conflicts += other.conflicts
        self.refused.update(other.refused)
        return self


@dataclass
class LockBudget:
    """A run's lock waiting: each wait that ended in a lock timeout is spent from it; once it
    is spent, a lock conflict defers its keys at once (``lock_timeout`` of 1 ms)."""

    remaining_ms: float
    spent_ms: float = 0.0
    waits: int = 0

    def timeout_ms(self, configured: int) -> int:
        return max(1, min(configured, int(self.remaining_ms)))

    def spend(self, ms: float) -> None:
        self.waits += 1
        self.spent_ms += ms
        self.remaining_ms = max(0.0, self.remaining_ms - ms)


@dataclass(frozen=True)
class Target:
    """Where and how a batch is applied."""

    conn: psycopg.Connection
    direction: str                 # local_to_cluster or cluster_to_local
    lock_timeout_ms: int
    retry: dict[str, Any] = field(default_factory=dict)  # run_transaction's bounds
    dry_run: bool = False
    #: Dry run only: what the other direction would already have done to this target's keys
    #: (written: the key now holds the other side's version; acknowledged: no longer pending),
    #: so that a dry run reports what a real run would do, not each conflict twice.
    simulated_written: frozenset[str] = frozenset()
    simulated_acknowledged: frozenset[str] = frozenset()
    #: Run inside every transaction that writes, last before its commit: raises unless this
    #: run still holds the lease (cesar.db.lease.Lease.fence), so a paused run's late apply fails.
    fence: Callable[[psycopg.Connection], None] | None = None
    #: Shared by the run's targets (None: wait up to lock_timeout_ms every time).
    budget: LockBudget | None = None
    #: Inside a batch that already waited once: never wait again (halves of a split).
    nowait: bool = False

    def lock_timeout(self) -> int:
        if self.nowait:
            return 1
        if self.budget is not None:
            return self.budget.timeout_ms(self.lock_timeout_ms)
        return self.lock_timeout_ms


@dataclass(frozen=True)
class Conflict:
    spec_name: str
    pk: str
    resolution: str  # incoming_won, existing_won, failed, repaired
    incoming: Version | None
    incoming_row: str | None
    existing: Version | None
    existing_row: str | None
    reason: str | None = None
    sqlstate: str | None = None

    @property
    def id(self) -> str:
        """Derived from both versions: the same conflict found twice is recorded once."""
        raw = "\x1f".join(str(x) for x in (self.spec_name, self.pk, self.resolution,
                                             _vtext(self.incoming), _vtext(self.existing),
                                             self.sqlstate or ""))
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _vtext(v: Version | None) -> str:
    return "" if v is None else f"{v[0].isoformat()}@{v[1]}"


# ------------------------------------------------------------------------- entry point
def apply_changes(target: Target, spec: TableSpec, changes: Sequence[Change],
                  expect: dict[str, Version | None] | None = None, *,
                  committed: Outcome | None = None) -> Outcome:
    """Apply ``changes`` (one table) to the target; never raises for a bad or busy row.

    ``expect`` (the reconcile's repairs): the target version each key had when the reconcile
    compared it; the change is applied over exactly that version (whatever the rule says, since
    the reconcile has decided), and deferred if the key changed since.

    ``committed``: each part's outcome is merged into it once that part is settled (its
    transaction committed, or its failure recorded). A batch split to find a bad row commits
    in parts: when a later part raises (its session ended), what the earlier parts committed is
    there for the caller to count."""
    if not changes:
        return Outcome()
    return _apply_parts(target, spec, changes, expect, committed)


def _apply_parts(target: Target, spec: TableSpec, changes: Sequence[Change],
                 expect: dict[str, Version | None] | None,
                 committed: Outcome | None) -> Outcome:
    def settled(out: Outcome) -> Outcome:
        if committed is not None:
            committed.merge(out)
        return out

    started = time.monotonic()
    try:
        out = db.run_transaction(
            target.conn, lambda c: _apply(c, target, spec, changes, expect), **target.retry)
    except ROW_ERRORS as exc:
        if target.dry_run:
            raise
        if isinstance(exc, pgerrors.LockNotAvailable) and not target.nowait:
            # It waited once (up to lock_timeout): the halves that look for the held key
            # must not wait again at every level of the split.
            if target.budget is not None:
                target.budget.spend((time.monotonic() - started) * 1000)
            target = replace(target, nowait=True)
        if len(changes) > 1:
            half = len(changes) // 2
            first = _apply_parts(target, spec, changes[:half], expect, committed)
            return first.merge(_apply_parts(target, spec, changes[half:], expect, committed))
        if isinstance(exc, BUSY_ERRORS):
            return settled(Outcome(deferred=list(changes)))
        return settled(Outcome(failed=list(changes),
                               conflicts=_record_failure(target, spec, changes[0],
                                                         first_line(exc),
                                                         getattr(exc, "sqlstate", None))))
    # Outside the batch's handler: the batch has committed, and a failure to record a refused
    # key must never make the committed batch be applied again in halves.
    try:
        if not target.dry_run:
            for ch in out.failed:
                if ch.pk in out.refused:
                    out.conflicts += _record_failure(target, spec, ch, out.refused[ch.pk],
                                                     FOREIGN_KEY_VIOLATION)
    finally:
        settled(out)  # committed, whether or not its refused keys could be recorded
    return out


# ------------------------------------------------------------------------- one transaction
def _apply(conn: psycopg.Connection, target: Target, spec: TableSpec,
           changes: Sequence[Change], expect: dict[str, Version | None] | None) -> Outcome:
    keys = [ch.pk for ch in changes]
    existing, busy = _lock(conn, target, spec, keys)
    out = Outcome()
    to_apply: list[Change] = []
    conflicts: list[tuple[Change, str]] = []  # (change, resolution) whose images may differ
    plain = not existing and not busy and expect is None and not target.simulated_written
    if plain:  # the target has none of these keys: each is applied (rule.decide, no version)
        to_apply = list(changes)
    for ch in () if plain else changes:
        if ch.pk in busy:
            out.deferred.append(ch)
            continue
        if ch.pk in target.simulated_written:
            continue  # the other direction wrote it: its version row is no longer pending here
        ex = existing.get(ch.pk)
        if ex is not None and ch.pk in target.simulated_acknowledged:
            ex = Existing(ex.version, ex.deleted, pending=False, present=ex.present)
        if expect is not None:
            current = ex.version if ex is not None else None
            if compare(current, expect.get(ch.pk)) != 0:
                out.deferred.append(ch)  # changed since the reconcile looked: next run
                continue
            to_apply.append(ch)
            if ex is not None and (ex.present or ex.version is not None):
                conflicts.append((ch, "repaired"))
            continue
        decision = decide(ch.version, ch.deleted, ex)
        if decision.action is Action.APPLY:
            to_apply.append(ch)
            if decision.conflict:
                conflicts.append((ch, "incoming_won"))
        elif decision.action is Action.SAME:
            out.same.append(ch)
        else:
            out.discarded.append(ch)
            if decision.conflict:
                conflicts.append((ch, "existing_won"))
    held, refused = _held_by_foreign_keys(conn, spec, to_apply, dry_run=target.dry_run)
    if held or refused:
        out.deferred.extend(ch for ch in to_apply if ch.pk in held and ch.pk not in refused)
        out.failed.extend(ch for ch in to_apply if ch.pk in refused)
        out.refused.update(refused)
        to_apply = [ch for ch in to_apply if ch.pk not in held and ch.pk not in refused]
        conflicts = [(ch, r) for ch, r in conflicts if ch.pk not in held | set(refused)]
    records = _conflict_records(conn, spec, conflicts, existing)
    if target.dry_run:
        out.applied.extend(to_apply)
        out.conflicts = len(records)
        return out
    applied = write_changes(conn, spec, to_apply, existing)
    out.applied.extend(ch for ch in to_apply if ch.pk in applied)
    out.deferred.extend(ch for ch in to_apply if ch.pk not in applied)
    out.conflicts = _insert_conflicts(conn, target.direction,
                                      [r for r in records if r.pk in applied
                                       or r.resolution == "existing_won"])
    if target.fence is not None:
        target.fence(conn)
    return out


def _lock(conn: psycopg.Connection, target: Target, spec: TableSpec,
          keys: list[str]) -> tuple[dict[str, Existing], set[str]]:
    """Lock the keys' rows and version rows (rows first, like a writer); read their state.

    Returns the target's state per key and the keys held by another transaction. Three ways,
    cheapest first: a key range the target has never seen (a table's first copy) needs no lock
    and no lookup; otherwise one ``FOR UPDATE NOWAIT`` read of each kind succeeds when nobody
    holds those rows (the usual case); if someone does, ``SKIP LOCKED`` reads tell which keys
    are busy. A dry run takes no locks and writes nothing."""
    params = {"table": spec.name, "keys": keys}
    rows_q = sql.SQL("SELECT CAST(id AS TEXT) FROM {} WHERE {}").format(
        spec.ident, key_filter("id", f"{spec.pk_type}[]"))
    meta_q = sql.SQL("SELECT pk, version, origin, deleted, pending FROM sync_versions "
                     "WHERE table_name = %(table)s AND {}").format(key_filter("pk", "TEXT[]"))
    if target.dry_run:
        present = {k for (k,) in conn.execute(rows_q, params).fetchall()}
        return _state(keys, present, {r[0]: r for r in conn.execute(meta_q, params)}), set()
    conn.execute("SELECT set_config('cesar.sync_apply', 'on', true), "
                 "set_config('lock_timeout', %s, true)", [f"{target.lock_timeout()}ms"])
    if _range_is_new(conn, spec, params):
        return {}, set()
    try:
        with conn.transaction():  # a savepoint: NOWAIT fails at once on a held row
            locked = {k for (k,) in conn.execute(rows_q + sql.SQL(" FOR UPDATE NOWAIT"),
                                                 params).fetchall()}
            meta = {r[0]: r for r in conn.execute(meta_q + sql.SQL(" FOR UPDATE NOWAIT"),
                                                  params).fetchall()}
        return _state(keys, locked, meta), set()
    except pgerrors.LockNotAvailable:
        pass
    present = {k for (k,) in conn.execute(rows_q, params).fetchall()}
    locked = {k for (k,) in conn.execute(rows_q + sql.SQL(" FOR UPDATE SKIP LOCKED"),
                                         params).fetchall()}
    meta_present = {r[0] for r in conn.execute(meta_q, params).fetchall()}
    meta = {r[0]: r for r in conn.execute(meta_q + sql.SQL(" FOR UPDATE SKIP LOCKED"),
                                          params).fetchall()}
    return _state(keys, locked, meta), (present - locked) | (meta_present - set(meta))


def _held_by_foreign_keys(conn: psycopg.Connection, spec: TableSpec, changes: list[Change],
                          *, dry_run: bool) -> tuple[set[str], dict[str, str]]:
    """The keys of ``changes`` that would violate a foreign key between synced tables on the
    target now: ``(held, refused)``.

    A run moves parents before children and child deletes before parent deletes, but a writer
    that commits both between the two tables' passes hands it the child alone (or the parent's
    delete while the child is still here). Such a key is *held*: it stays pending for the next
    run, which moves the other one first, instead of failing on the target's constraint (an
    ERROR in its log, a failure recorded for a race). A real conflict is *refused*: recorded as
    failed (SQLSTATE 23503) without running the statement that would fail, exactly when this
    side's own unsent change breaks it: the parent's tombstone here is still pending (deleted
    here, not sent yet), or a child here still pending references the parent deleted there.

    The parents found are locked ``FOR KEY SHARE`` (as the constraint's own check locks them):
    a target writer cannot delete one before this transaction commits; one that a writer holds
    (``SKIP LOCKED``) counts as absent, so the child waits instead of the run."""
    held: set[str] = set()
    refused: dict[str, str] = {}
    live = [ch for ch in changes if not ch.deleted and ch.row is not None]
    for fk in spec.parents if live else ():
        rows = {ch.pk: json.loads(ch.row) for ch in live if ch.row is not None}
        wanted = {str(v) for r in rows.values() if (v := r.get(fk.column)) is not None}
        if not wanted:
            continue
        lock = "" if dry_run else " FOR KEY SHARE SKIP LOCKED"
        present = {k for (k,) in conn.execute(
            sql.SQL("SELECT CAST(id AS TEXT) FROM {} WHERE {}" + lock).format(
                sql.Identifier(fk.parent), key_filter("id", f"{fk.parent_pk_type}[]")),
            {"keys": sorted(wanted)}).fetchall()}
        missing = wanted - present
        if not missing:
            continue
        deleted_here = {k for (k,) in conn.execute(
            sql.SQL("SELECT pk FROM sync_versions WHERE table_name = %(table)s AND {} "
                    "AND deleted AND pending").format(key_filter("pk", "TEXT[]")),
            {"table": fk.parent, "keys": sorted(missing)}).fetchall()}
        for pk, r in rows.items():
            value = r.get(fk.column)
            if value is None or str(value) not in missing:
                continue
            if str(value) in deleted_here:
                refused[pk] = (f"{spec.name}.{fk.column} references {fk.parent} {value}, which "
                               "this database deleted (not yet sent): the foreign key forbids "
                               "the row; fix the data on one side")
            else:
                held.add(pk)
    gone = sorted(ch.pk for ch in changes if ch.deleted)
    for fk in spec.children if gone else ():
        col = sql.Identifier(fk.column)
        for parent, pending in conn.execute(
            sql.SQL("SELECT CAST(c.{col} AS TEXT), bool_or(coalesce(v.pending, false)) "
                    "FROM {t} AS c LEFT JOIN sync_versions AS v ON v.table_name = %(child)s "
                    "AND v.pk = CAST(c.id AS TEXT) WHERE {f} GROUP BY c.{col}").format(
                col=col, t=sql.Identifier(fk.child),
                f=key_filter(f"c.{col.as_string(conn)}", f"{fk.parent_pk_type}[]")),
            {"keys": gone, "child": fk.child}).fetchall():
            if pending:
                refused[parent] = (f"{fk.child} rows of this database not yet sent reference "
                                   f"{spec.name} {parent} through {fk.column}: the foreign key "
                                   "forbids its delete; fix the data on one side")
            else:
                held.add(parent)
    return held, refused


def _range_is_new(conn: psycopg.Connection, spec: TableSpec, params: dict[str, Any]) -> bool:
    """Whether the target has no row and no version row anywhere in the keys' range: two
    index probes instead of one lookup per key. (A writer inserting into that range meanwhile
    is still safe: new version rows are inserted with ON CONFLICT DO NOTHING, see write_changes.)"""
    row = conn.execute(
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {t} WHERE {r}) AND NOT EXISTS "
                "(SELECT 1 FROM sync_versions WHERE table_name = %(table)s AND {m})").format(
            t=spec.ident, r=key_range("id", f"{spec.pk_type}[]"),
            m=key_range("pk", "TEXT[]")), params).fetchone()
    return bool(row and row[0])


def _state(keys: list[str], locked: set[str], meta: dict[str, Any]) -> dict[str, Existing]:
    state: dict[str, Existing] = {}
    for key in keys:
        m = meta.get(key)
        if m is None and key not in locked:
            continue
        state[key] = Existing(
            version=(m[1], m[2]) if m is not None else None,
            deleted=bool(m[3]) if m is not None else False,
            pending=bool(m[4]) if m is not None else False,
            present=key in locked,
        )
    return state


def write_changes(conn: psycopg.Connection, spec: TableSpec, changes: list[Change],
                  existing: dict[str, Existing]) -> set[str]:
    """Write the winners and their version rows; returns the keys written. Public as the point
    a fault test kills a sync at: written in the target's transaction, not yet committed.

    A key with no version row on the target gets one with ``ON CONFLICT DO NOTHING``: if a
    writer created it meanwhile, that key is left out (deferred) rather than overwritten."""
    if not changes:
        return set()
    new, old = [], []
    for ch in changes:
        ex = existing.get(ch.pk)
        (old if ex is not None and ex.version is not None else new).append(ch)
    written = {ch.pk for ch in old}
    # A change without a version (a repair of a row older than the capture) gets no version row.
    written |= {ch.pk for ch in new if ch.written_at is None}
    new = [ch for ch in new if ch.written_at is not None]
    if new:
        rows = conn.execute(VERSIONS_UPSERT + "DO NOTHING RETURNING pk",
                            [spec.name, _versions_json(new)]).fetchall()
        written |= {pk for (pk,) in rows}
    if old:  # their version rows are locked by this transaction (_lock)
        conn.execute(VERSIONS_UPSERT + "DO UPDATE SET version = excluded.version, "
                     "origin = excluded.origin, deleted = excluded.deleted, pending = false",
                     [spec.name, _versions_json(old)])
    live = [ch for ch in changes if ch.pk in written and not ch.deleted]
    gone = [ch.pk for ch in changes if ch.pk in written and ch.deleted]
    if live:
        conn.execute(
            sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM "
                    "json_populate_recordset(CAST(NULL AS {t}), CAST(%s AS JSON)) "
                    "ON CONFLICT (id) DO UPDATE SET {updates}").format(
                t=spec.ident, cols=spec.column_list, updates=spec.update_list),
            ["[" + ",".join(ch.row or "null" for ch in live) + "]"],
        )
    if gone:
        conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(
            spec.ident, key_filter("id", f"{spec.pk_type}[]")), {"keys": gone})
    return written


#: The target's version rows of a batch, from one JSON array ([pk, version, origin, deleted]
#: per change): cheaper to build than four typed arrays, and the same on both engines. (JSON,
#: not JSONB, for everything that is only parsed once: PostgreSQL parses it faster.)
VERSIONS_UPSERT = (
    "INSERT INTO sync_versions (table_name, pk, version, origin, deleted, pending) "
    "SELECT %s, e->>0, CAST(e->>1 AS TIMESTAMPTZ), e->>2, CAST(e->>3 AS BOOLEAN), false "
    "FROM json_array_elements(CAST(%s AS JSON)) AS e ON CONFLICT (table_name, pk) "
)


def _versions_json(changes: list[Change]) -> str:
    return json.dumps([[ch.pk, ch.written_at.isoformat() if ch.written_at else None, ch.origin,
                        ch.deleted] for ch in changes])


# ------------------------------------------------------------------------- conflicts
def _images(conn: psycopg.Connection, spec: TableSpec, keys: list[str],
            incoming: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The target's current rows, and the incoming rows as the target would store them (so
    that two images compare equal whenever the target would hold the same values)."""
    current = dict(conn.execute(
        sql.SQL("SELECT CAST(id AS TEXT), CAST(row_to_json(t.*) AS TEXT) FROM {} AS t "
                "WHERE id = ANY(CAST(%b AS {}))").format(spec.ident, spec.pk_array_type),
        [keys]).fetchall())
    normalised: dict[str, str] = {}
    if incoming:
        normalised = dict(conn.execute(
            sql.SQL("SELECT CAST(x.id AS TEXT), CAST(row_to_json(x.*) AS TEXT) FROM "
                    "json_populate_recordset(CAST(NULL AS {}), CAST(%s AS JSON)) AS x").format(
                spec.ident), ["[" + ",".join(incoming) + "]"]).fetchall())
    return current, normalised


def _conflict_records(conn: psycopg.Connection, spec: TableSpec,
                      candidates: list[tuple[Change, str]],
                      existing: dict[str, Existing]) -> list[Conflict]:
    """The candidates whose two images really differ, as conflict records."""
    if not candidates:
        return []
    current, normalised = _images(conn, spec, [ch.pk for ch, _ in candidates],
                                  [ch.row for ch, _ in candidates if ch.row is not None])
    records = []
    for ch, resolution in candidates:
        mine = normalised.get(ch.pk) if ch.row is not None else None
        theirs = current.get(ch.pk)
        if _same_image(mine, theirs):
            continue
        ex = existing.get(ch.pk)
        records.append(Conflict(spec.name, ch.pk, resolution, ch.version, ch.row,
                                ex.version if ex else None, theirs))
    return records


def _same_image(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(json.loads(a) == json.loads(b))


def _insert_conflicts(conn: psycopg.Connection, direction: str, records: list[Conflict]) -> int:
    """Insert the records; returns how many were new (a conflict seen again is not counted)."""
    new = 0
    for r in records:
        row = conn.execute(
            "INSERT INTO sync_conflicts (id, table_name, pk, direction, resolution, "
            "incoming_version, incoming_origin, incoming_row, existing_version, existing_origin, "
            "existing_row, reason, sqlstate) VALUES (%s, %s, %s, %s, %s, %s, %s, "
            "CAST(%s AS JSONB), %s, %s, CAST(%s AS JSONB), %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET attempts = sync_conflicts.attempts + 1, "
            "last_seen_at = now(), reason = excluded.reason RETURNING attempts",
            [r.id, r.spec_name, r.pk, direction, r.resolution,
             *(_vparts(r.incoming)), r.incoming_row, *(_vparts(r.existing)), r.existing_row,
             r.reason, r.sqlstate],
        ).fetchone()
        new += 1 if row is not None and row[0] == 1 else 0
    return new


def _vparts(v: Version | None) -> tuple[Any, Any]:
    return (None, None) if v is None else (v[0], v[1])


#: SQLSTATE of a foreign-key violation, for the ones found before writing.
FOREIGN_KEY_VIOLATION = "23503"


def _record_failure(target: Target, spec: TableSpec, ch: Change, reason: str,
                    sqlstate: str | None) -> int:
    """Record a change that cannot be applied, with the reason, in its own transaction."""

    def work(c: psycopg.Connection) -> int:
        current = c.execute(
            sql.SQL("SELECT CAST(row_to_json(t.*) AS TEXT) FROM {} AS t "
                    "WHERE id = CAST(%s AS {})").format(spec.ident, sql.SQL(spec.pk_type)),
            [ch.pk]).fetchone()
        meta = c.execute("SELECT version, origin FROM sync_versions "
                         "WHERE table_name = %s AND pk = %s", [spec.name, ch.pk]).fetchone()
        record = Conflict(spec.name, ch.pk, "failed", ch.version, ch.row,
                          (meta[0], meta[1]) if meta else None,
                          current[0] if current else None, reason=reason, sqlstate=sqlstate)
        new = _insert_conflicts(c, target.direction, [record])
        if target.fence is not None:
            target.fence(c)
        return new

    return db.run_transaction(target.conn, work, **target.retry)
