"""``cesar migrate up --regional-by-row``: the synced tables as REGIONAL BY ROW on CockroachDB.

The manual multi-region step (``ALTER TABLE agents SET LOCALITY REGIONAL BY ROW``) as a
runner option. After the pending migrations, on a CockroachDB database that has regions (Pulumi's
stack config ``cesar:regions``, docs/infra.md), every table of :data:`REGIONAL_TABLES` that is not
already REGIONAL BY ROW is converted; a second run finds them all converted and does nothing. On
PostgreSQL the option does nothing (it is a CockroachDB feature); on a CockroachDB database
without regions it refuses before applying anything.

This module is the decision (pure: :func:`plan`, :func:`statements_for`, :func:`validate_tables`)
and the two catalog reads it needs (:func:`read_catalog`). The runner (``cesar.migrate``)
executes the plan: under its lease, each statement on its own (CockroachDB runs a locality
change only alone in its implicit transaction), each table recorded in the events table.

Each table is converted in the safe form CockroachDB documents since
cockroachdb/cockroach#150945 (a single ``SET LOCALITY REGIONAL BY ROW`` on an existing table adds
the region column and changes the primary key in one step, during which concurrent UPDATE and
DELETE statements on the table can fail; the API writes all the time), after unlocking it:

0. ``SET (schema_locked = false)``: from v26.1 new tables are schema-locked by default, and
   ``SET LOCALITY`` is one of the changes CockroachDB cannot unlock by itself
   (cockroachdb/docs#21601, cockroachdb/cockroach#164368). It stays unlocked (the project runs
   no changefeed, which is what the lock speeds up);
1. add the hidden region column ``crdb_region``, existing rows in the primary region;
2. make new rows default to the region of the node that writes them;
3. ``SET LOCALITY REGIONAL BY ROW``, which finds the column and partitions by it.

Each is idempotent, so a run interrupted between them is finished by the next.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cesar.console import first_line
from cesar.db import engines
from cesar.errors import ConfigError, OperationFailed
from cesar.schema import SYNCED_TABLES

#: The tables made REGIONAL BY ROW: the synced tables, declared once in cesar.schema.
#: They are the ones written on both sides, with UUID keys chosen by the writer and no unique
#: constraint two regions could break independently. The runner's and the sync's own
#: bookkeeping tables stay in the primary region.
REGIONAL_TABLES: tuple[str, ...] = SYNCED_TABLES
DECLARED_IN = "cesar.schema.SYNCED_TABLES"

REGIONAL_BY_ROW = "REGIONAL BY ROW"
REGION_COLUMN = "crdb_region"
REGION_TYPE = "public.crdb_internal_region"

_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

StatementsFor = Callable[[str, str], tuple[str, ...]]


# ==================================================================== what the engine says
@dataclass(frozen=True)
class Catalog:
    """The database's engine, regions and the locality of each declared table that exists."""

    engine: str
    database: str
    primary_region: str | None = None
    regions: tuple[str, ...] = ()
    localities: dict[str, str | None] = field(default_factory=dict)  # absent: no such table


#: The catalog reads (CockroachDB only): SHOW statements any login may run, as subqueries.
CATALOG_QUERIES = (
    "SELECT primary_region, regions FROM [SHOW DATABASES] "
    "WHERE database_name = current_database()",
    "SELECT table_name, locality FROM [SHOW TABLES] "
    "WHERE schema_name = current_schema() AND type = 'table' AND table_name = ANY(%s)",
)


def read_catalog(conn: psycopg.Connection, engine: str, tables: Sequence[str]) -> Catalog:
    """Two queries on CockroachDB, none on PostgreSQL.

    ``SHOW DATABASES`` and ``SHOW TABLES``: what any login may read on every supported release.
    Not ``crdb_internal`` (refused by default from v26.1, ``allow_unsafe_internals``) and not
    ``SHOW REGIONS FROM DATABASE`` (it needs the admin role: it reads the nodes' localities
    too); the runner logs in as the application (docs/infra.md). A table's ``locality`` reads
    ``REGIONAL BY ROW`` (or ``REGIONAL BY ROW AS col``), ``REGIONAL BY TABLE IN ...``,
    ``GLOBAL``, or NULL outside a multi-region database.
    """
    database = conn.info.dbname
    if not engines.named(engine).multi_region:
        return Catalog(engine, database)
    try:
        row = conn.execute(CATALOG_QUERIES[0]).fetchone()
        rows = conn.execute(CATALOG_QUERIES[1], [list(tables)]).fetchall()
    except psycopg.Error as exc:
        first = first_line(exc)
        raise OperationFailed(
            f"cannot read the regions and table localities of {database} ({first}); the runner "
            "reads SHOW DATABASES and SHOW TABLES: run it as a login with privileges on the "
            "database and its tables"
        ) from None
    primary, regions = (row[0], tuple(row[1] or ())) if row else (None, ())
    return Catalog(engine, database, primary, regions,
                   {str(name): (str(loc) if loc is not None else None) for name, loc in rows})


# ==================================================================== the decision
def validate_tables(tables: Sequence[str]) -> tuple[str, ...]:
    """The declared list, checked before anything runs (a bad edit is refused, not half-run)."""
    if not tables:
        raise ConfigError(f"{DECLARED_IN} is empty: --regional-by-row has no table to convert")
    seen: set[str] = set()
    for name in tables:
        if not _PLAIN_NAME.match(name):
            raise ConfigError(f"{DECLARED_IN} names {name!r}, which is not a plain lower-case "
                              "table name; fix the list")
        if name in seen:
            raise ConfigError(f"{DECLARED_IN} names {name!r} twice; fix the list")
        seen.add(name)
    return tuple(tables)


def is_regional_by_row(locality: str | None) -> bool:
    return locality is not None and locality.startswith(REGIONAL_BY_ROW)


def statements_for(table: str, primary_region: str) -> tuple[str, ...]:
    """The statements that make ``table`` REGIONAL BY ROW (see the module's docstring)."""
    t = sql.Identifier(table).as_string(None)
    primary = sql.Literal(primary_region).as_string(None)
    return (
        f"ALTER TABLE {t} SET (schema_locked = false)",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {REGION_COLUMN} {REGION_TYPE} NOT VISIBLE "
        f"NOT NULL DEFAULT {primary}::{REGION_TYPE}",
        f"ALTER TABLE {t} ALTER COLUMN {REGION_COLUMN} SET DEFAULT "
        f"default_to_database_primary_region(gateway_region())::{REGION_TYPE}",
        f"ALTER TABLE {t} SET LOCALITY {REGIONAL_BY_ROW}",
    )


def no_regions_message(database: str) -> str:
    return (f"the CockroachDB database {database} has no regions, so no table can be "
            "REGIONAL BY ROW; add regions first (Pulumi stack config `cesar:regions`, then "
            "`invoke infra.up`; see docs/infra.md, Multi-region), or run without "
            "--regional-by-row / CESAR_REGIONAL_BY_ROW")


@dataclass(frozen=True)
class TableChange:
    """One table to convert: its locality now (``exists`` False: a pending migration creates
    it, which only a dry run can meet) and the statements, in order."""

    table: str
    before: str | None
    statements: tuple[str, ...]
    exists: bool = True


@dataclass
class LocalityPlan:
    """What ``--regional-by-row`` does (or did, ``done``) on one database."""

    engine: str
    database: str
    tables: tuple[str, ...]
    primary_region: str | None = None
    regions: tuple[str, ...] = ()
    changes: list[TableChange] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        return engines.named(self.engine).multi_region

    def regions_text(self) -> str:
        return ", ".join(f"{r} (primary)" if r == self.primary_region else r
                         for r in self.regions)

    def line(self) -> str:
        """The summary line printed after the migrations' ``N/N applied``."""
        if not self.applies:
            return (f"regional-by-row: applies to CockroachDB only; {self.database} is "
                    f"{self.engine}, nothing to do")
        total = len(self.tables)
        converted = len(self.already) + len(self.done)
        state = f"{converted}/{total} tables REGIONAL BY ROW (regions {self.regions_text()})"
        if self.done:
            return f"regional-by-row: set {_tables(len(self.done))}; {state}"
        if not self.changes:
            return f"regional-by-row: {state}, nothing to do"
        return f"regional-by-row: {state}, {_tables(len(self.changes))} to convert"

    def as_dict(self) -> dict[str, Any]:
        return {
            "applies": self.applies, "engine": self.engine, "database": self.database,
            "primary_region": self.primary_region, "regions": list(self.regions),
            "tables": list(self.tables), "already": self.already, "done": self.done,
            "changes": [{"table": c.table, "locality": c.before, "exists": c.exists,
                         "statements": list(c.statements)} for c in self.changes],
            "summary": self.line(),
        }


def plan(catalog: Catalog, tables: Sequence[str], *, pending_migrations: bool = False,
         statements: StatementsFor = statements_for) -> LocalityPlan:
    """Which tables to convert, with which statements; or why not.

    - PostgreSQL (or anything but CockroachDB): nothing, and says so.
    - CockroachDB without regions: :class:`ConfigError` (one line: add regions first).
    - A declared table that does not exist: :class:`OperationFailed`, unless
      ``pending_migrations`` (a dry run before the migrations that create it).
    """
    out = LocalityPlan(catalog.engine, catalog.database, tuple(tables),
                       catalog.primary_region, catalog.regions)
    if not out.applies:
        return out
    if not catalog.regions or catalog.primary_region is None:
        raise ConfigError(no_regions_message(catalog.database))
    for table in tables:
        exists = table in catalog.localities
        if not exists and not pending_migrations:
            raise OperationFailed(
                f"table {table} is declared REGIONAL BY ROW ({DECLARED_IN}) but does not exist "
                f"in {catalog.database}; apply the migration that creates it, or remove it "
                "from the list"
            )
        locality = catalog.localities.get(table)
        if is_regional_by_row(locality):
            out.already.append(table)
        else:
            out.changes.append(TableChange(table, locality,
                                           statements(table, catalog.primary_region), exists))
    return out


def _tables(n: int) -> str:
    return f"{n} table{'' if n == 1 else 's'}"
