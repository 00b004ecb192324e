"""A REGIONAL BY ROW table on the cluster side: CockroachDB reports its primary key as
``(crdb_region, id)``. The same key shape, on PostgreSQL: the cluster side's ``items`` gets a
region column with a default and the primary key ``(crdb_region, id)`` (plus ``UNIQUE (id)``,
which CockroachDB enforces by itself on such a table). The row's key stays ``id``; the region is
never synced and never overwritten."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cesar.errors import ConfigError
from tests.sync.helpers import Pair

REGIONAL = (
    "ALTER TABLE items ADD COLUMN crdb_region TEXT NOT NULL DEFAULT 'us-east1'",
    "ALTER TABLE items DROP CONSTRAINT items_pkey",
    "ALTER TABLE items ADD PRIMARY KEY (crdb_region, id)",
)
UNIQUE_ID = "ALTER TABLE items ADD CONSTRAINT items_id_key UNIQUE (id)"


def regional(pair: Pair, *, unique_id: bool = True) -> None:
    for statement in (*REGIONAL, *((UNIQUE_ID,) if unique_id else ())):
        pair.sql("cluster", statement)


def items(pair: Pair, side: str) -> dict[str, dict[str, Any]]:
    return {k: {c: v for c, v in row.items() if c != "crdb_region"}
            for k, row in pair.rows(side, "items").items()}


def region(pair: Pair, key: str) -> str:
    return str(pair.sql("cluster", "SELECT crdb_region FROM items WHERE id = %s", [key])[0][0])


def test_a_regional_by_row_table_syncs_by_id_and_keeps_each_rows_region(pair: Pair) -> None:
    regional(pair)
    pair.sync()
    here, there = str(uuid.uuid4()), str(uuid.uuid4())
    pair.sql("local", "INSERT INTO items (id, val) VALUES (%s, 'written locally')", [here])
    pair.sql("cluster", "INSERT INTO items (id, val, crdb_region) VALUES "
             "(%s, 'written in europe', 'europe-west1')", [there])
    report = pair.sync()
    assert report.failed == 0 and report.moved == 2
    assert items(pair, "local") == items(pair, "cluster")
    assert region(pair, here) == "us-east1"  # the cluster side's own default
    assert region(pair, there) == "europe-west1"
    # An update made locally reaches the row in its region without moving it.
    pair.sql("local", "UPDATE items SET val = 'edited locally' WHERE id = %s", [there])
    pair.sync()
    assert items(pair, "cluster")[there]["val"] == "edited locally"
    assert region(pair, there) == "europe-west1"
    # Deletes and a full reconcile: nothing left to repair, the regions untouched.
    pair.sql("cluster", "DELETE FROM items WHERE id = %s", [here])
    pair.sync()
    assert here not in items(pair, "local")
    full = pair.sync(full=True)
    assert full.failed == 0 and full.conflicts == 0
    assert items(pair, "local") == items(pair, "cluster")
    assert region(pair, there) == "europe-west1"


def test_the_same_shape_without_a_unique_id_is_refused_on_postgresql(pair: Pair) -> None:
    regional(pair, unique_id=False)
    with pytest.raises(ConfigError, match=r"has primary key \(crdb_region, id\) but id alone is "
                                          r"not unique; add UNIQUE \(id\)"):
        pair.sync()


@pytest.mark.parametrize("key", ["(id, crdb_region)", "(crdb_region, id, val)"])
def test_other_composite_keys_are_still_refused(pair: Pair, key: str) -> None:
    pair.sql("cluster", REGIONAL[0])
    pair.sql("cluster", REGIONAL[1])
    pair.sql("cluster", f"ALTER TABLE items ADD PRIMARY KEY {key}")
    pair.sql("cluster", UNIQUE_ID)
    with pytest.raises(ConfigError, match="needs a single-column primary key named id"):
        pair.sync()
