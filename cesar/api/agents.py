"""``/agents``: the 24 CESAR agents and their mob aliases, read from the ``agents`` table.

Each request checks a connection out of a pool (read replica when configured), runs one
autocommit ``SELECT`` (no BEGIN/COMMIT round trips) and encodes the rows as the response model
does (:class:`RowEncoder`). By default (``CESAR_API_READ_PATH=async``) this runs on the event
loop, on the async pool (:mod:`cesar.api.aio`). With ``threads`` it runs on a worker thread
with the threaded pool; the hops are limited to the pool's size, so surplus requests wait on
the event loop instead of parking threads on the pool.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Annotated, Any, TypeVar

import anyio
import psycopg
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import TypeAdapter

from cesar.api import auth
from cesar.api.aio import AsyncReads
from cesar.api.models import Agent, AgentPage, Error
from cesar.db import Database

T = TypeVar("T")

MAX_LIMIT = 500
#: Far beyond any real table; keeps OFFSET inside the engines' integer range.
MAX_OFFSET = 1_000_000

_FIELDS = ("id", "name", "mob_alias", "role", "status", "created_at", "updated_at")
_COLUMNS = ", ".join(_FIELDS)
_CREATED, _UPDATED, _TOTAL = 5, 6, 7  # positions in a row of _PAGE
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
    with reading(database) as conn, conn.cursor() as cur:
        rows = cur.execute(_PAGE, (limit, offset)).fetchall()
        if rows:
            total = int(rows[0][_TOTAL])
        else:
            row = cur.execute(_COUNT).fetchone()
            total = int(row[0]) if row else 0
    return page_body(rows, total, limit, offset)


def _one(database: Database, agent_id: uuid.UUID) -> bytes | None:
    with reading(database) as conn, conn.cursor() as cur:
        row = cur.execute(_ONE, (agent_id,)).fetchone()
    return None if row is None else ROWS.encode(row)


class RowEncoder:
    """The JSON of one agent row, as the response model encodes it, remembered by the row.

    Validating and encoding a page of 24 agents through :data:`_PAGE_JSON` cost as much CPU as
    reading it from the database. The bytes of an agent depend only on its column values and
    on the UTC offsets its timestamps are shown with, so each distinct row is validated and
    encoded once (by the same model, so the same bytes, and a row the model refuses still
    fails the request) and its bytes reused while the row is unchanged. This is not a cache
    of answers: every request still reads every row, and a row that changed in any column is
    a new key, encoded afresh. At most ``capacity`` rows are kept (then it starts over)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._bytes: dict[tuple[Any, ...], bytes] = {}

    def encode(self, row: Sequence[Any]) -> bytes:
        # Equal aware datetimes can differ in the offset they print (another session time
        # zone, a DST fold): the offsets are part of the key.
        key = (*row[:_TOTAL], row[_CREATED].utcoffset(), row[_UPDATED].utcoffset())
        encoded = self._bytes.get(key)
        if encoded is None:
            agent = dict(zip(_FIELDS, row[:_TOTAL], strict=True))
            encoded = _AGENT_JSON.dump_json(_AGENT_JSON.validate_python(agent))
            if len(self._bytes) >= self.capacity:
                self._bytes.clear()
            self._bytes[key] = encoded
        return encoded


ROWS = RowEncoder()


def page_body(rows: Sequence[Sequence[Any]], total: int, limit: int, offset: int) -> bytes:
    """An :class:`AgentPage` as ``_PAGE_JSON`` encodes it (compact JSON, fields in order)."""
    end = offset + len(rows)
    next_offset = b"%d" % end if end < total else b"null"
    return (b'{"items":[' + b",".join([ROWS.encode(r) for r in rows])
            + b'],"total":%d,"limit":%d,"offset":%d,"next_offset":%s}'
            % (total, limit, offset, next_offset))


async def _page_async(reads: AsyncReads, limit: int, offset: int) -> bytes:
    (rows,) = await reads.fetch([(_PAGE, (limit, offset))])
    if rows:
        total = int(rows[0][_TOTAL])
    else:
        (counted,) = await reads.fetch([(_COUNT, ())])
        total = int(counted[0][0]) if counted else 0
    return page_body(rows, total, limit, offset)


async def _one_async(reads: AsyncReads, agent_id: uuid.UUID) -> bytes | None:
    (rows,) = await reads.fetch([(_ONE, (agent_id,))])
    return ROWS.encode(rows[0]) if rows else None


async def _read(reads: AsyncReads, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
    return await (reads.coalescer.run(key, read) if reads.coalesce else read())


@router.get("/agents", response_model=AgentPage, responses=UNAVAILABLE,
            summary="List the agents, a page at a time")
async def list_agents(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Agents per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Agents to skip.")] = 0,
) -> Response:
    reads: AsyncReads | None = request.app.state.reads
    if reads is not None:
        body = await _read(reads, ("page", limit, offset),
                           lambda: _page_async(reads, limit, offset))
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
        body = await _read(reads, ("one", agent_id), lambda: _one_async(reads, agent_id))
    else:
        body = await in_thread(request, _one, request.app.state.database, agent_id)
    if body is None:
        raise HTTPException(status_code=404, detail=f"no agent with id {agent_id}")
    return Response(body, media_type="application/json")
