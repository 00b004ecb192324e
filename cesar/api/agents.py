"""``/agents``: the 24 CESAR agents and their mob aliases, read from the ``agents`` table.

Each request makes one hop to a worker thread, which checks a connection out of the pool (read
replica when configured), runs one autocommit ``SELECT`` (no BEGIN/COMMIT round trips),
validates the rows against the response model and encodes the JSON; the event loop only sends
the bytes. The hops are limited to the pool's size, so surplus requests wait on the event loop
instead of parking threads on the pool. With ``CESAR_API_READ_PATH=async`` the same work runs
on the event loop instead, on the async pool (:mod:`cesar.api.aio`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any, TypeVar

import anyio
import psycopg
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from psycopg.rows import dict_row
from pydantic import TypeAdapter

from cesar.api import auth
from cesar.api.aio import AsyncReads
from cesar.api.models import Agent, AgentPage, Error
from cesar.db import Database

T = TypeVar("T")

MAX_LIMIT = 500
#: Far beyond any real table; keeps OFFSET inside the engines' integer range.
MAX_OFFSET = 1_000_000

_COLUMNS = "id, name, mob_alias, role, status, created_at, updated_at"
# One round trip for the page and the total; an empty page (offset past the end) asks again.
_PAGE = (f"SELECT {_COLUMNS}, count(*) OVER () AS total FROM agents "
         "ORDER BY name, id LIMIT %s OFFSET %s")
_COUNT = "SELECT count(*) AS count FROM agents"
_ONE = f"SELECT {_COLUMNS} FROM agents WHERE id = %s"

_PAGE_JSON = TypeAdapter(AgentPage)
_AGENT_JSON = TypeAdapter(Agent)

UNAVAILABLE = {503: {"model": Error, "description": "The database is unavailable."}}

router = APIRouter(tags=["agents"], dependencies=[auth.require("agents:read")],
                   responses=auth.RESPONSES)


@contextmanager
def reading(database: Database) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection in autocommit for the duration of one read, then restored."""
    with database.connection(read_only=True) as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            with suppress(psycopg.Error):  # a broken connection is the pool's to discard
                conn.autocommit = False


async def in_thread(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking database work on a worker thread, at most pool-size at a time."""
    limiter: anyio.CapacityLimiter = request.app.state.db_limiter
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)


def _page(database: Database, limit: int, offset: int) -> bytes:
    with reading(database) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_PAGE, (limit, offset)).fetchall()
        if rows:
            total = int(rows[0]["total"])
        else:
            row = cur.execute(_COUNT).fetchone()
            total = int(row["count"]) if row else 0
    return _page_body(rows, total, limit, offset)


def _one(database: Database, agent_id: uuid.UUID) -> bytes | None:
    with reading(database) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_ONE, (agent_id,)).fetchone()
    return None if row is None else _AGENT_JSON.dump_json(_AGENT_JSON.validate_python(row))


def _page_body(rows: list[dict[str, Any]], total: int, limit: int, offset: int) -> bytes:
    end = offset + len(rows)
    page = {"items": rows, "total": total, "limit": limit, "offset": offset,
            "next_offset": end if end < total else None}
    return _PAGE_JSON.dump_json(_PAGE_JSON.validate_python(page))


async def _page_async(reads: AsyncReads, limit: int, offset: int) -> bytes:
    (rows,) = await reads.fetch([(_PAGE, (limit, offset))])
    if rows:
        total = int(rows[0]["total"])
    else:
        (counted,) = await reads.fetch([(_COUNT, ())])
        total = int(counted[0]["count"]) if counted else 0
    return _page_body(rows, total, limit, offset)


async def _one_async(reads: AsyncReads, agent_id: uuid.UUID) -> bytes | None:
    (rows,) = await reads.fetch([(_ONE, (agent_id,))])
    return _AGENT_JSON.dump_json(_AGENT_JSON.validate_python(rows[0])) if rows else None


@router.get("/agents", response_model=AgentPage, responses=UNAVAILABLE,
            summary="List the agents, a page at a time")
async def list_agents(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Agents per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Agents to skip.")] = 0,
) -> Response:
    reads: AsyncReads | None = request.app.state.reads
    if reads is not None:
        body = await _page_async(reads, limit, offset)
    else:
        body = await in_thread(request, _page, request.app.state.database, limit, offset)
    return Response(body, media_type="application/json")


@router.get("/agents/{agent_id}", response_model=Agent,
            responses={404: {"model": Error, "description": "No agent has this id."},
                       **UNAVAILABLE},
            summary="One agent by id")
async def get_agent(
    request: Request,
    agent_id: Annotated[uuid.UUID, Path(description="The agent's UUID.")],
) -> Response:
    reads: AsyncReads | None = request.app.state.reads
    if reads is not None:
        body = await _one_async(reads, agent_id)
    else:
        body = await in_thread(request, _one, request.app.state.database, agent_id)
    if body is None:
        raise HTTPException(status_code=404, detail=f"no agent with id {agent_id}")
    return Response(body, media_type="application/json")
