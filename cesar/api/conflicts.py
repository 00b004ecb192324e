"""``/conflicts``: the two-way sync's ``sync_conflicts`` table, read-only, newest first.

Keyset pagination on ``(detected_at, id)``: the cursor is an opaque token naming the last row
of the previous page, so rows the sync adds meanwhile never shift or repeat a page. The row
images of ``api_keys`` conflicts are withheld: they hold key digests, which a reader of
conflicts (scope ``agents:read``) has no business seeing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from psycopg.rows import dict_row
from pydantic import BaseModel, TypeAdapter

from cesar.api import auth
from cesar.api.agents import UNAVAILABLE, in_thread, reading
from cesar.db import Database

MAX_LIMIT = 200
#: Tables whose row images a conflict listing never shows.
WITHHELD_TABLES = frozenset({"api_keys", "api_key_usage"})

_COLUMNS = ("id, table_name, pk, direction, resolution, incoming_version, incoming_origin, "
            "incoming_row, existing_version, existing_origin, existing_row, reason, sqlstate, "
            "attempts, detected_at, last_seen_at")
_FIRST = f"SELECT {_COLUMNS} FROM sync_conflicts ORDER BY detected_at DESC, id DESC LIMIT %s"
_AFTER = (f"SELECT {_COLUMNS} FROM sync_conflicts WHERE (detected_at, id) < (%s, %s) "
          "ORDER BY detected_at DESC, id DESC LIMIT %s")
_COUNT = "SELECT count(*) FROM sync_conflicts"


class Conflict(BaseModel):
    id: str
    table_name: str
    pk: str
    direction: str
    resolution: str
    incoming_version: datetime | None
    incoming_origin: str | None
    incoming_row: dict[str, Any] | None
    existing_version: datetime | None
    existing_origin: str | None
    existing_row: dict[str, Any] | None
    reason: str | None
    sqlstate: str | None
    attempts: int
    detected_at: datetime
    last_seen_at: datetime


class ConflictPage(BaseModel):
    items: list[Conflict]
    total: int
    next_cursor: str | None


_PAGE_JSON = TypeAdapter(ConflictPage)

router = APIRouter(tags=["sync"], dependencies=[auth.require("agents:read")],
                   responses=auth.RESPONSES)


#: A keyset cursor: the last row's detection time (microseconds since the epoch) and its id
#: (UTF-8, hex). Every string matching the pattern is a position (the OpenAPI document says so
#: and the fuzz test holds the API to it); anything else is 422.
CURSOR_PATTERN = r"^[0-9]{1,16}_(?:[0-9a-f]{2}){1,400}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(detected_at: datetime, conflict_id: str) -> str:
    micros = (detected_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{conflict_id.encode().hex()}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    micros, _, hexid = cursor.partition("_")
    # Bytes that are not UTF-8 still name a position between ids: replaced, never refused.
    return (_EPOCH + timedelta(microseconds=int(micros)),
            bytes.fromhex(hexid).decode("utf-8", errors="replace").replace("\0", "\ufffd"))


def _page(database: Database, limit: int, after: tuple[datetime, str] | None) -> bytes:
    with reading(database) as conn, conn.cursor(row_factory=dict_row) as cur:
        if after is None:
            rows = cur.execute(_FIRST, (limit + 1,)).fetchall()
        else:
            rows = cur.execute(_AFTER, (*after, limit + 1)).fetchall()
        count = conn.execute(_COUNT).fetchone()
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        if row["table_name"] in WITHHELD_TABLES:
            row["incoming_row"] = row["existing_row"] = None
    last = rows[-1] if rows else None
    page = {"items": rows, "total": int(count[0]) if count else 0,
            "next_cursor": encode_cursor(last["detected_at"], last["id"]) if more and last
            else None}
    return _PAGE_JSON.dump_json(_PAGE_JSON.validate_python(page))


@router.get("/conflicts", response_model=ConflictPage, responses=UNAVAILABLE,
            summary="The sync's conflicts, newest first (read-only)")
async def list_conflicts(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Conflicts per page.")] = 50,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN,
                                        description="next_cursor of the previous page.")] = None,
) -> Response:
    after = decode_cursor(cursor) if cursor else None
    body = await in_thread(request, _page, request.app.state.database, limit, after)
    return Response(body, media_type="application/json")
