"""``/agents`` answers with exactly the bytes the response model encodes, on every read path.

The rows are encoded once per distinct content (cesar/api/agents.py, RowEncoder); these tests
hold that to the response model's own encoding (``TypeAdapter(AgentPage)``, validated) on real
PostgreSQL, with rows made to trip an encoder: quotes, backslashes, control characters,
non-ASCII text, microseconds, time zones with other offsets and a daylight-saving fold (the
same wall-clock time twice, an hour apart), and a row rewritten between two reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import TypeAdapter

from cesar.api import agents, aio
from cesar.api.models import Agent, AgentPage
from tests.api.helpers import ApiServer, serve, settings_for
from tests.helpers import PgStack

NAMES = ['Quote "q" and back\\slash', "Tab\tnew\nline\x01ctl\x1f", "Ünïcödé 名前 🤖", "Zeta",
         "</script><b>&amp;", "a" * 300]
#: 00:30 and 01:30 UTC on 2026-10-25 are both 02:30 in Berlin (+02:00, then +01:00).
FOLD_FIRST, FOLD_SECOND = "2026-10-25 00:30:00+00", "2026-10-25 01:30:00+00"
ZONES = ("UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu")
COLUMNS = "id, name, mob_alias, role, status, created_at, updated_at"
ORDERED = f"SELECT {COLUMNS} FROM agents ORDER BY name, id LIMIT %s OFFSET %s"
#: The rows as the route reads them: the page's columns, then the total.
WITH_TOTAL = (f"SELECT {COLUMNS}, count(*) OVER () FROM agents ORDER BY name, id "
              "LIMIT %s OFFSET %s")


def _add_agents(url: str) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in NAMES]
    with psycopg.connect(url, autocommit=True) as conn:
        for i, (agent_id, name) in enumerate(zip(ids, NAMES, strict=True)):
            conn.execute(
                "INSERT INTO agents (id, name, mob_alias, role, status, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (agent_id, name, f"alias {i} ⚡", "role\\x", ("active", "paused", "retired")[i % 3],
                 FOLD_FIRST if i % 2 else "2026-03-29 00:59:59.999999+00",
                 "1999-12-31 23:59:59.000001+00"))
    return ids


def _reference_page(url: str, zone: str, limit: int, offset: int) -> bytes:
    """The page as the response model encodes it, from rows read in session time zone ``zone``."""
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(zone)))
        rows = cur.execute(ORDERED, (limit, offset)).fetchall()
        total = cur.execute("SELECT count(*) AS n FROM agents").fetchone()["n"]  # type: ignore[index]
    end = offset + len(rows)
    page = {"items": rows, "total": total, "limit": limit, "offset": offset,
            "next_offset": end if end < total else None}
    adapter: Any = TypeAdapter(AgentPage)
    return adapter.dump_json(adapter.validate_python(page))  # type: ignore[no-any-return]


def _rows(url: str, zone: str, limit: int, offset: int) -> tuple[list[Any], int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(zone)))
        rows = conn.execute(WITH_TOTAL, (limit, offset)).fetchall()
        total = conn.execute("SELECT count(*) FROM agents").fetchone()[0]  # type: ignore[index]
    return rows, total


def test_the_encoder_gives_the_models_bytes_in_every_zone_and_after_a_rewrite(
        migrated_db: str) -> None:
    """The same rows read in four session time zones in turn (equal instants, other offsets),
    then a row moved across the daylight-saving fold: each page equals the model's bytes."""
    ids = _add_agents(migrated_db)
    for zone in (*ZONES, "UTC"):
        for limit, offset in ((500, 0), (7, 3), (5, 28), (3, 1000)):
            rows, total = _rows(migrated_db, zone, limit, offset)
            assert agents.page_body(rows, total, limit, offset) == \
                _reference_page(migrated_db, zone, limit, offset), (zone, limit, offset)
    # Same id, same wall-clock time in Berlin, another offset (the fold), then other columns.
    for change in ({"created_at": FOLD_SECOND}, {"name": "Renamed ✓"}, {"status": "retired"}):
        column, value = next(iter(change.items()))
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            conn.execute(sql.SQL("UPDATE agents SET {} = %s WHERE id = %s")
                         .format(sql.Identifier(column)), (value, ids[1]))
        for zone in ("Europe/Berlin", "UTC"):
            rows, total = _rows(migrated_db, zone, 500, 0)
            assert agents.page_body(rows, total, 500, 0) == \
                _reference_page(migrated_db, zone, 500, 0), (change, zone)


def test_the_default_read_path_is_async(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CESAR_API_READ_PATH", raising=False)
    assert aio.ReadSettings(_env_file=None).read_path == "async"  # type: ignore[call-arg]


@pytest.fixture
def berlin_db(migrated_db: str, pg_stack: PgStack) -> Iterator[tuple[str, list[uuid.UUID]]]:
    """A migrated database whose sessions are in Europe/Berlin, with the tricky agents."""
    dbname = psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"]
    with pg_stack.superuser() as su:
        su.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = 'Europe/Berlin'")
                   .format(sql.Identifier(str(dbname))))
    yield migrated_db, _add_agents(migrated_db)


@pytest.mark.parametrize("read_path", ["", "threads"])
def test_each_read_path_answers_the_models_bytes(berlin_db: tuple[str, list[uuid.UUID]],
                                                  read_path: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTP, the default path (async) and ``threads``: pages, one agent, a write seen by
    the next read."""
    url, ids = berlin_db
    if read_path:
        monkeypatch.setenv("CESAR_API_READ_PATH", read_path)
    with serve(settings_for(url, tmp_path)) as server, \
            httpx.Client(headers=server.headers, timeout=5) as client:
        reads = server.server.config.app.state.reads  # type: ignore[attr-defined]
        assert (reads is None) == (read_path == "threads")
        for limit, offset in ((50, 0), (7, 3), (5, 28), (2, 29), (3, 1000)):
            got = client.get(f"{server.url}/agents", params={"limit": limit, "offset": offset})
            assert got.status_code == 200
            assert got.headers["content-type"] == "application/json"
            assert got.content == _reference_page(url, "Europe/Berlin", limit, offset)
        _one_agent_matches(server, client, url, ids[1])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE agents SET created_at = %s, mob_alias = 'moved' WHERE id = %s",
                         (FOLD_SECOND, ids[1]))
        _one_agent_matches(server, client, url, ids[1])
        got = client.get(f"{server.url}/agents", params={"limit": 500})
        assert got.content == _reference_page(url, "Europe/Berlin", 500, 0)
        assert b'"mob_alias":"moved"' in got.content


def _one_agent_matches(server: ApiServer, client: httpx.Client, url: str,
                       agent_id: uuid.UUID) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {COLUMNS} FROM agents WHERE id = %s", (agent_id,)).fetchone()
    adapter: Any = TypeAdapter(Agent)
    got = client.get(f"{server.url}/agents/{agent_id}")
    assert got.status_code == 200
    assert got.content == adapter.dump_json(adapter.validate_python(row))
