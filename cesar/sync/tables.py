"""Which tables are synced (configured here, in one place) and what the sync knows of each.

:data:`SYNCED_TABLES` lists them parents first (a row's foreign keys point to tables earlier in
the list): inserts and updates are applied in this order, deletes in the reverse order.
``CESAR_SYNC_TABLES`` (comma-separated) narrows or reorders the list; every run validates the
list on both databases before anything moves (:func:`validate`) and refuses with one line naming
the table and the fix when a table is missing, has no single-column primary key ``id``, differs
between the two sides, lacks the capture trigger, or comes before a table it references.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Annotated

import psycopg
from psycopg import sql
from psycopg.adapt import PyFormat
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cesar.config import ENV_FILES, load
from cesar.db.engines import POSTGRESQL, Engine
from cesar.errors import ConfigError
from cesar.schema import SYNCED_TABLES

#: The capture trigger's name on every synced table (migration 011).
CAPTURE_TRIGGER = "sync_capture"
#: A REGIONAL BY ROW table's partition column: CockroachDB reports its primary key as
#: (crdb_region, id). The row's key is still ``id`` (unique across regions); the region is
#: where the row lives, each side's own business, so it is never synced.
REGION_COLUMN = "crdb_region"
#: Primary-key types whose order and text form agree on PostgreSQL and CockroachDB.
PK_TYPES = frozenset({"uuid", "bigint", "integer", "smallint"})


class SyncSettings(BaseSettings):
    """``CESAR_SYNC_*``: read like the rest of the configuration (environment, then
    ``.env.cockroach``, then ``.env``)."""

    model_config = SettingsConfigDict(env_prefix="CESAR_SYNC_", env_file=ENV_FILES,
                                      env_file_encoding="utf-8", extra="ignore", frozen=True)

    tables: Annotated[tuple[str, ...], NoDecode] = Field(
        SYNCED_TABLES, description="CESAR_SYNC_TABLES: comma-separated")
    batch_size: int = Field(5000, ge=1, le=100_000,
                            description="CESAR_SYNC_BATCH_SIZE: keys per target transaction")
    range_size: int = Field(10_000, ge=2, le=1_000_000,
                            description="CESAR_SYNC_RANGE_SIZE: rows per reconcile range and side")
    lock_timeout_ms: int = Field(2000, ge=1,
                                 description="CESAR_SYNC_LOCK_TIMEOUT_MS: longest wait for a lock")
    statement_timeout_ms: int = Field(300_000, ge=0,
                                      description="CESAR_SYNC_STATEMENT_TIMEOUT_MS (0: none)")
    lease_seconds: float = Field(30.0, ge=1, le=600,
                                 description="CESAR_SYNC_LEASE_SECONDS: lease of a running sync")
    lag_limit_seconds: float = Field(600.0, gt=0,
                                     description="CESAR_SYNC_LAG_LIMIT_SECONDS: /health and smoke")
    lock_wait_budget_ms: int = Field(
        10_000, ge=0, description="CESAR_SYNC_LOCK_WAIT_BUDGET_MS: a run's total lock waiting; "
        "spent, every later lock conflict defers its key at once")
    bulk_threshold: int = Field(
        10_000, ge=0, description="CESAR_SYNC_BULK_THRESHOLD: pending upserts of a table from "
        "which a run moves them with COPY and set-based statements (PostgreSQL on both sides; "
        "0: never)")
    bulk_chunk: int = Field(100_000, ge=1_000, le=10_000_000,
                            description="CESAR_SYNC_BULK_CHUNK: keys per bulk transaction")
    orphan_check_seconds: float = Field(
        3600.0, ge=0, description="CESAR_SYNC_ORPHAN_CHECK_SECONDS: longest time between two "
        "searches of a quiet, unchanged table for version rows whose row is gone (0: every run)")
    max_clock_skew_ms: int = Field(
        1000, ge=0, description="CESAR_SYNC_MAX_CLOCK_SKEW_MS: refuse to run when the two "
        "databases' clocks differ by more (last writer wins compares their timestamps)")

    @field_validator("tables", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value


def load_sync_settings(**overrides: object) -> SyncSettings:
    return load(SyncSettings, **overrides)


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # information_schema.columns.data_type, e.g. "uuid", "jsonb", "ARRAY"


@dataclass(frozen=True)
class ForeignKey:
    """A single-column foreign key between two synced tables: ``child.column`` references the
    key ``id`` of ``parent`` (whose key type is ``parent_pk_type``)."""

    child: str
    column: str
    parent: str
    parent_pk_type: str


@dataclass(frozen=True)
class TableSpec:
    """A validated synced table: its columns (same on both sides) and its key's type.

    ``parents``: its foreign keys to other synced tables; ``children``: the synced tables'
    foreign keys to it. A run holds back a row whose parent is not on the target yet, and a
    delete whose key a child row on the target still references (cesar/sync/apply.py)."""

    name: str
    columns: tuple[Column, ...]
    pk_type: str
    parents: tuple[ForeignKey, ...] = ()
    children: tuple[ForeignKey, ...] = ()

    @cached_property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.name)

    @cached_property
    def pk_array_type(self) -> sql.SQL:
        return sql.SQL(f"{self.pk_type}[]")

    @cached_property
    def column_list(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c.name) for c in self.columns)

    @cached_property
    def update_list(self) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c.name))
            for c in self.columns if c.name != "id"
        )

    def canonical_text(self, alias: str = "t") -> sql.Composable:
        """The row as text whose digest is the same on PostgreSQL and CockroachDB wherever
        their text forms agree: timestamps as epoch microseconds, booleans as t/f, NULL as \\N,
        columns separated by U+001F. (JSONB text may still differ: the reconcile then compares
        those rows one by one, so a difference in form costs time, never a wrong repair.)"""
        parts = []
        for c in self.columns:
            col = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c.name))
            if c.data_type.startswith("timestamp"):
                expr = sql.SQL("CAST(CAST(EXTRACT(EPOCH FROM {}) * 1000000 AS BIGINT) AS TEXT)"
                               ).format(col)
            elif c.data_type == "boolean":
                expr = sql.SQL("CASE WHEN {} THEN 't' ELSE 'f' END").format(col)
            else:
                expr = sql.SQL("CAST({} AS TEXT)").format(col)
            parts.append(sql.SQL("COALESCE({}, '\\N')").format(expr))
        return sql.SQL(" || chr(31) || ").join(parts)


def key_range(column: str, array_type: str, param: str = "keys") -> sql.Composable:
    """``column BETWEEN`` the smallest and the largest of the keys ``%(keys)b``.

    The bounds are computed by the database, in its own collation, so they never exclude one
    of the keys. (``ORDER BY ... LIMIT 1``, not ``min()``: PostgreSQL before 18 has no
    ``min(uuid)``.)"""
    keys = _keys(array_type, param)
    return sql.SQL("{c} BETWEEN (SELECT x FROM unnest({k}) AS x ORDER BY x LIMIT 1) "
                   "AND (SELECT x FROM unnest({k}) AS x ORDER BY x DESC LIMIT 1)").format(
        c=sql.SQL(column), k=keys)


def key_filter(column: str, array_type: str, param: str = "keys") -> sql.Composable:
    """``column = ANY(%(keys)b)``: one index probe per key (see ``run.connect`` for why the
    planner is told so on PostgreSQL), so a batch costs its size, never the table's."""
    return sql.SQL("{c} = ANY({k})").format(c=sql.SQL(column), k=_keys(array_type, param))


def _keys(array_type: str, param: str) -> sql.Composable:
    return sql.SQL("CAST({} AS {})").format(sql.Placeholder(param, PyFormat.BINARY),
                                            sql.SQL(array_type))


# ------------------------------------------------------------------------- validation
def _catalog(conn: psycopg.Connection, names: Sequence[str], engine: Engine
             ) -> dict[str, object]:
    hidden = engine.visible_columns_filter
    cols: dict[str, list[Column]] = {}
    for table, column, data_type in conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        f"WHERE table_schema = current_schema() AND table_name = ANY(%s){hidden} "
        "ORDER BY table_name, ordinal_position", [list(names)],
    ).fetchall():
        cols.setdefault(table, []).append(Column(column, data_type))
    # The primary keys, and the tables whose id alone is UNIQUE besides a (crdb_region, id)
    # key: the sync's upserts name `ON CONFLICT (id)`. CockroachDB enforces that uniqueness
    # itself on a REGIONAL BY ROW table (its key is implicitly partitioned by region);
    # PostgreSQL needs a constraint. One query for both: every catalog read is a round trip
    # to the cluster.
    pks: dict[str, list[str]] = {}
    unique_cols: dict[tuple[str, str], list[str]] = {}
    for table, kind, constraint, column in conn.execute(
        "SELECT tc.table_name, tc.constraint_type, tc.constraint_name, kcu.column_name "
        "FROM information_schema.table_constraints AS tc "
        "JOIN information_schema.key_column_usage AS kcu "
        "  ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema "
        " AND kcu.table_name = tc.table_name "
        "WHERE tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE') "
        "  AND tc.table_schema = current_schema() AND tc.table_name = ANY(%s) "
        "ORDER BY tc.table_name, tc.constraint_name, kcu.ordinal_position",
        [list(names)],
    ).fetchall():
        if kind == "PRIMARY KEY":
            pks.setdefault(table, []).append(column)
        else:
            unique_cols.setdefault((table, constraint), []).append(column)
    unique_id = {str(t) for (t, _), columns in unique_cols.items() if columns == ["id"]}
    # CockroachDB lists triggers in pg_trigger only from v25.3 (cockroachdb/cockroach#147248),
    # with tgenabled always 'A'; `cesar doctor` checks it (docs/cockroachdb.md).
    triggers = {
        table: enabled for table, enabled in conn.execute(
            "SELECT c.relname, t.tgenabled FROM pg_catalog.pg_trigger AS t "
            "JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid "
            "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE t.tgname = %s AND n.nspname = current_schema() AND c.relname = ANY(%s)",
            [CAPTURE_TRIGGER, list(names)],
        ).fetchall()
    }
    if engine.statement_capture:
        for table, problem in statement_capture_gaps(conn, names).items():
            triggers[table] = problem
    # Foreign keys between tables (the order inserts are applied in), and among them the
    # single-column ones, with their column (for holding back a child whose parent has not
    # arrived yet). Read from pg_constraint, one row per constraint: a foreign key's name is
    # unique only per table, and information_schema's constraint_column_usage and
    # referential_constraints are keyed by (schema, name), so two tables' same-named
    # constraints would be crossed there. The columns are paired by position (conkey[1] with
    # confkey[1]; a key of several columns only orders the tables). Plain joins, an array
    # subscript and array_length, on both engines: on CockroachDB conkey/confkey are INT2[]
    # since v21.1 (cockroachdb/cockroach#56975) and confkey holds only the key's columns since
    # v2.1 (cockroachdb/cockroach#31610). There conkey holds column IDs, which differ from
    # pg_attribute.attnum after a rewriting ALTER COLUMN TYPE (cockroachdb/cockroach#174715):
    # such a column is not named (LEFT JOIN), so its key orders the tables but is left to the
    # database, like a key of several columns.
    refs: dict[str, set[str]] = {}
    fks: list[tuple[str, str, str, str]] = []
    for table, width, referenced, column, ref_column in conn.execute(
        "SELECT c.relname, array_length(k.conkey, 1), p.relname, a.attname, pa.attname "
        "FROM pg_catalog.pg_constraint AS k "
        "JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid "
        "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_class AS p ON p.oid = k.confrelid "
        " AND p.relnamespace = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.conrelid "
        " AND a.attnum = k.conkey[1] AND NOT a.attisdropped "
        "LEFT JOIN pg_catalog.pg_attribute AS pa ON pa.attrelid = k.confrelid "
        " AND pa.attnum = k.confkey[1] AND NOT pa.attisdropped "
        "WHERE k.contype = 'f' AND n.nspname = current_schema() AND c.relname = ANY(%s)",
        [list(names)],
    ).fetchall():
        refs.setdefault(table, set()).add(referenced)
        if width == 1 and column is not None and ref_column is not None:
            fks.append((table, column, referenced, ref_column))
    fks.sort()  # the catalog's order is not defined: the same keys, the same order, every run
    for table, key in pks.items():
        if key == [REGION_COLUMN, "id"]:  # the partition column is not synced
            cols[table] = [c for c in cols.get(table, []) if c.name != REGION_COLUMN]
    return {"columns": cols, "pks": pks, "triggers": triggers, "refs": refs,
            "unique_id": unique_id, "engine": engine, "fks": fks}


#: PostgreSQL's statement-level capture (migration 017): sync_capture serves INSERT only, and
#: these two the other events (transition tables allow one event per trigger).
STATEMENT_COMPANIONS = ("sync_capture_update", "sync_capture_delete")


def statement_capture_gaps(conn: psycopg.Connection, names: Sequence[str]) -> dict[str, str]:
    """Tables whose ``sync_capture`` is a statement-level trigger but one of its companions is
    missing or disabled: table -> the companion's name."""
    rows = conn.execute(
        "SELECT c.relname, t.tgname, t.tgenabled, (t.tgtype & 1) = 1 FROM pg_catalog.pg_trigger t "
        "JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%s) "
        "AND t.tgname = ANY(%s)", [list(names), [CAPTURE_TRIGGER, *STATEMENT_COMPANIONS]],
    ).fetchall()
    found: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, trigger, enabled, per_row in rows:
        found.setdefault(table, {})[trigger] = (enabled, per_row)
    gaps = {}
    for table, have in found.items():
        main = have.get(CAPTURE_TRIGGER)
        if main is None or main[1]:
            continue  # none at all, or the row-level capture of 011: judged by the caller
        for companion in STATEMENT_COMPANIONS:
            if have.get(companion, ("D", False))[0] == "D":
                gaps[table] = companion
                break
    return gaps


def _check_side(side: str, names: Sequence[str], cat: dict[str, object]) -> None:
    cols = cat["columns"]
    pks = cat["pks"]
    triggers = cat["triggers"]
    assert isinstance(cols, dict) and isinstance(pks, dict) and isinstance(triggers, dict)
    for name in names:
        if name not in cols:
            raise ConfigError(
                f"synced table {name!r} does not exist in the {side} database; run "
                "`cesar migrate up` there, or remove it from CESAR_SYNC_TABLES"
            )
        key = pks.get(name)
        regional = key == [REGION_COLUMN, "id"]
        if key != ["id"] and not regional:
            got = ", ".join(pks.get(name, [])) or "none"
            raise ConfigError(
                f"synced table {name!r} in the {side} database has primary key ({got}); the sync "
                f"needs a single-column primary key named id (or ({REGION_COLUMN}, id), a "
                "REGIONAL BY ROW table)"
            )
        unique_id = cat["unique_id"]
        assert isinstance(unique_id, set)
        engine = cat["engine"]
        assert isinstance(engine, Engine)
        if regional and not engine.implicit_unique_id and name not in unique_id:
            raise ConfigError(
                f"synced table {name!r} in the {side} database has primary key "
                f"({REGION_COLUMN}, id) but id alone is not unique; add UNIQUE (id) (CockroachDB "
                "enforces it on a REGIONAL BY ROW table; PostgreSQL needs the constraint)"
            )
        pk_type = next(c.data_type for c in cols[name] if c.name == "id")
        if pk_type not in PK_TYPES:
            raise ConfigError(
                f"synced table {name!r}: primary key type {pk_type} is not supported (use one "
                f"of {', '.join(sorted(PK_TYPES))}: they order the same way on both engines)"
            )
        enabled = triggers.get(name)
        if enabled is not None and enabled.startswith("sync_capture_"):
            raise ConfigError(
                f"the capture trigger {enabled} on {name!r} is missing or disabled in the "
                f"{side} database, so those writes would not be synced; run `cesar migrate up` "
                "there (migration 017_sync_capture_statement), or enable it"
            )
        if enabled is None or enabled == "D":
            state = "disabled" if enabled == "D" else "missing"
            raise ConfigError(
                f"the capture trigger on {name!r} is {state} in the {side} database, so its "
                f"writes would not be synced; run `cesar migrate up` there (migration "
                f"011_sync_capture), or for a new table add its {CAPTURE_TRIGGER} trigger "
                "(docs/sync.md)"
            )


def validate(local: psycopg.Connection, remote: psycopg.Connection, names: Sequence[str],
             *, engines: tuple[Engine, Engine] = (POSTGRESQL, POSTGRESQL)) -> list[TableSpec]:
    """The specs of ``names`` after checking both databases; :class:`ConfigError` otherwise."""
    if not names:
        raise ConfigError("CESAR_SYNC_TABLES is empty: name at least one table")
    if len(set(names)) != len(names):
        raise ConfigError(f"CESAR_SYNC_TABLES names a table twice: {', '.join(names)}")
    # The two sides' catalogs are read at the same time, each on its own connection: the
    # cluster is a remote server, and a run's validation costs its round trips, not the sum.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cesar-sync-catalog") as pool:
        remote_catalog = pool.submit(_catalog, remote, names, engines[1])
        cats = {"local": _catalog(local, names, engines[0]), "cluster": remote_catalog.result()}
    for side, cat in cats.items():
        _check_side(side, names, cat)
    local_cols, remote_cols = cats["local"]["columns"], cats["cluster"]["columns"]
    assert isinstance(local_cols, dict) and isinstance(remote_cols, dict)
    specs = []
    for name in names:
        mine = {c.name: c.data_type for c in local_cols[name]}
        theirs = {c.name: c.data_type for c in remote_cols[name]}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))
            shown = ", ".join(f"{n} {t}" for n, t in diff[:4])
            raise ConfigError(
                f"synced table {name!r} differs between the local database and the cluster "
                f"({shown}); bring both to the same migration (`cesar migrate status` on each)"
            )
        pk_type = mine["id"]
        specs.append(TableSpec(name, tuple(local_cols[name]), pk_type))
    # Both sides' foreign keys: a constraint either side has is one a write to that side must
    # respect (a side may have lost one, or gained one by hand or by a migration in flight).
    refs: dict[str, set[str]] = {}
    fks: set[tuple[str, str, str, str]] = set()
    for cat in cats.values():
        assert isinstance(cat["refs"], dict) and isinstance(cat["fks"], list)
        for table, parents in cat["refs"].items():
            refs.setdefault(table, set()).update(parents)
        fks.update(cat["fks"])
    position = {n: i for i, n in enumerate(names)}
    for name in names:
        for parent in sorted(refs.get(name, set())):
            if parent in position and position[parent] > position[name]:
                raise ConfigError(
                    f"CESAR_SYNC_TABLES lists {name!r} before {parent!r}, which it references; "
                    "list parents first (inserts are applied in that order)"
                )
    return _with_foreign_keys(specs, sorted(fks))


def _with_foreign_keys(specs: list[TableSpec], found: object) -> list[TableSpec]:
    """The specs with their foreign keys between synced tables (to another table's ``id``; a
    self-reference is left to the database: one batch may hold both rows)."""
    assert isinstance(found, list)
    by_name = {s.name: s for s in specs}
    fks = [ForeignKey(child, column, parent, by_name[parent].pk_type)
           for child, column, parent, ref_column in found
           if child in by_name and parent in by_name and child != parent and ref_column == "id"]
    return [replace(s, parents=tuple(f for f in fks if f.child == s.name),
                    children=tuple(f for f in fks if f.parent == s.name)) for s in specs]
