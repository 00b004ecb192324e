"""``/events``: every change to agents, tasks, assignments, runs, run events and the sync's state
and conflicts, as it commits, in id order, resumable. One path, three ways to read it:

- ``Accept: text/event-stream``: Server-Sent Events (the dashboard's transport: plain HTTP, so
  proxies, the Bearer header and fetch streaming work as for every other route; resume is part
  of the protocol). Each event is ``id: N`` and ``data: {"id", "table", "op", "pk", "row",
  "at"}``; ``: ping`` every ``CESAR_EVENTS_HEARTBEAT_SECONDS`` (15) while idle; ``event: reset``
  when the client must reload. Resume with ``Last-Event-ID`` or ``?after=ID``.
- a WebSocket upgrade: the same events as JSON text messages with ``"type": "event"``, plus
  ``{"type": "ping"}`` and ``{"type": "reset", "id": N}``. Authenticated by the Authorization
  header (non-browser clients) or, since browsers cannot set headers on a WebSocket, by a first
  message ``{"type": "auth", "key": "...", "after": N?}`` within 10 s. Never a key in a URL.
- anything else: one JSON page of the events after ``?after`` (a polling client, or a check).

Scope ``agents:read``. The events come from the process's :class:`~cesar.events.hub.Hub`;
a resuming client first gets its backlog from the log (up to the hub's position), then the live
events after it, so nothing is lost or repeated across the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from cesar.api import auth
from cesar.api.agents import UNAVAILABLE, in_thread, reading
from cesar.events import log as elog
from cesar.events.hub import Hub, Item, Subscriber

#: Events per backlog page (and the most a JSON page holds).
PAGE = 500
#: How long a WebSocket client has to send its auth message.
WS_AUTH_SECONDS = 10.0
#: How long a new subscriber waits for the reader's first position before a 503.
READY_SECONDS = 10.0
#: How often an open stream checks that its key is still valid (revoked, expired: it ends).
RECHECK_SECONDS = 5.0
SSE = "text/event-stream"


class Event(BaseModel):
    id: int = Field(description="Monotonic: resume after it with Last-Event-ID or ?after=.")
    table: str = Field(description="The table: " + ", ".join(elog.WATCHED_TABLES) + ".")
    op: str = Field(description="insert, update or delete.")
    pk: str = Field(description="The row's key (sync_state: `table/direction`).")
    row: dict[str, Any] | None = Field(description="The row after the change; null: deleted.")
    at: str = Field(description="When the change was written (ISO 8601).")


class EventPage(BaseModel):
    items: list[Event]
    next_after: int = Field(description="Pass as ?after= to read on.")
    reset: bool = Field(description="True: events after ?after may be gone (pruned, or the id "
                                    "was never issued here): reload, then read from next_after.")


router = APIRouter(tags=["events"])

_AFTER = Query(ge=0, le=2**63 - 1, description="Resume after this event id (either transport).")


def _hub(request: Request | WebSocket) -> Hub:
    hub: Hub = request.app.state.events
    return hub


async def _ready(hub: Hub) -> None:
    if not await hub.wait_ready(READY_SECONDS):
        raise HTTPException(503, "the event stream is not ready (its database reader has not "
                                 "started); retry shortly", headers={"Retry-After": "1"})


async def _key_refused(conn: Request | WebSocket, token: str) -> str | None:
    """Why the stream's key no longer reads events (revoked, expired, scope gone), or None.
    A database outage is not a refusal: the stream goes on and a later check decides."""
    authenticator: auth.Authenticator = conn.app.state.auth
    address = conn.client.host if conn.client else "unknown"
    try:
        principal = await authenticator.authenticate(conn, token, address,  # type: ignore[arg-type]
                                                     stale_ok=True)
        authenticator.authorize(principal, "agents:read")
    except HTTPException as exc:
        return str(exc.detail)
    except Exception:  # noqa: BLE001 - the database is away: not the key's fault
        return None
    return None


def _parse_last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    # ASCII digits only: str.isdigit() also accepts "²" (a header byte 0xB2), which int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > 2**63 - 1:
        raise HTTPException(422, "Last-Event-ID must be an event id (a non-negative integer)")
    return int(text)


class _Pruned(Exception):
    """A prune took events of the backlog being read: the client must reload (reset)."""


def _backlog_page(request: Request | WebSocket, after: int, through: int,
                  limit: int = PAGE) -> list[elog.Event]:
    """Events after ``after``; :class:`_Pruned` when some of them may be gone. The bounds are
    read after the page (autocommit: a later snapshot), so a prune that took any of the page's
    events has committed by then and shows in ``pruned_through``."""
    with reading(request.app.state.database) as conn:
        page = elog.read_range(conn, after, through, limit)
        if after < elog.bounds(conn).pruned_through:
            raise _Pruned
        return page


def _bounds(request: Request | WebSocket) -> elog.Bounds:
    with reading(request.app.state.database) as conn:
        return elog.bounds(conn)


async def _start(request: Request | WebSocket, after: int | None
                 ) -> tuple[Subscriber, bool, int]:
    """Subscribe; returns the subscriber, whether the client must reset, and where its
    backlog starts."""
    hub = _hub(request)
    reset = False
    if after is not None:
        bounds = await in_thread(request, _bounds, request)  # type: ignore[arg-type]
        reset = elog.needs_reset(after, bounds)
    sub = hub.subscribe()
    start = sub.live_from if after is None or reset else after
    return sub, reset, start


async def _backlog(request: Request | WebSocket, start: int, through: int
                   ) -> AsyncIterator[elog.Event]:
    """The events in ``(start, through]``; raises :class:`_Pruned` when a prune took some."""
    after = start
    while after < through:
        page = await in_thread(request, _backlog_page, request, after, through)  # type: ignore[arg-type]
        if not page:
            return
        for event in page:
            yield event
        after = page[-1].id


# ----------------------------------------------------------------------------- SSE and JSON
@router.get(
    "/events", response_model=EventPage,
    dependencies=[auth.require("agents:read")],
    responses={**auth.RESPONSES, **UNAVAILABLE,
               200: {"description": "A JSON page, or (with `Accept: text/event-stream`) the "
                                    "live stream.",
                     "content": {SSE: {"schema": {"type": "string"}}}}},
    summary="Changes as they commit: Server-Sent Events, a WebSocket, or a JSON page")
async def events(
    request: Request,
    after: Annotated[int | None, _AFTER] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE, description="JSON page: events at most.")] = 100,
) -> Any:
    hub = _hub(request)
    await _ready(hub)
    resume = _parse_last_event_id(last_event_id)
    if resume is None:
        resume = after
    if SSE not in request.headers.get("accept", ""):
        return await _page(request, hub, resume, limit)
    token = request.app.state.auth.token(request, auth.client_address(request))
    sub, reset, start = await _start(request, resume)
    return StreamingResponse(_sse(request, hub, sub, reset, start, token), media_type=SSE,
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _page(request: Request, hub: Hub, after: int | None, limit: int) -> JSONResponse:
    position = hub.position or 0
    reset = False
    if after is None:
        after = position
    else:
        bounds = await in_thread(request, _bounds, request)
        if elog.needs_reset(after, bounds):
            reset, after = True, position
    try:
        events = await in_thread(request, _backlog_page, request, after,
                                 max(after, position), limit)
    except _Pruned:
        reset, after = True, position
        events = await in_thread(request, _backlog_page, request, after, position, limit)
    next_after = events[-1].id if events else after
    body = {"items": [e.as_dict() for e in events], "next_after": next_after, "reset": reset}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def _sse(request: Request, hub: Hub, sub: Subscriber, reset: bool,
               start: int, token: str) -> AsyncIterator[bytes]:
    heartbeat = hub.settings.heartbeat_seconds
    try:
        # A comment first: headers and a byte reach the client (and any proxy) at once.
        yield f": cesar events (worker {os.getpid()})\nretry: 1000\n\n".encode()
        if reset:
            yield f"id: {sub.live_from}\nevent: reset\ndata: {{}}\n\n".encode()
        last = start
        try:
            async for event in _backlog(request, start, sub.live_from):
                yield Item(event.id, event.data()).sse
                last = event.id
        except _Pruned:
            yield f"id: {sub.live_from}\nevent: reset\ndata: {{}}\n\n".encode()
        last = max(last, sub.live_from)
        checked = asyncio.get_running_loop().time()
        while True:
            item = await sub.next(heartbeat)
            if asyncio.get_running_loop().time() - checked >= RECHECK_SECONDS:
                checked = asyncio.get_running_loop().time()
                refused = await _key_refused(request, token)
                if refused is not None:
                    yield f": closed: {refused}\n\n".encode()
                    return
            if sub.dropped:
                yield (b": dropped: more than the queue's events behind; reconnect with "
                       b"Last-Event-ID\n\n")
                return
            if sub.closed:
                return
            if item is None:
                yield b": ping\n\n"
                continue
            if item.id <= last:
                continue
            last = item.id
            yield item.sse
    finally:
        hub.unsubscribe(sub)


# ----------------------------------------------------------------------------- WebSocket
@router.websocket("/events")
async def events_ws(websocket: WebSocket,
                    after: Annotated[int | None, _AFTER] = None) -> None:
    await websocket.accept()
    try:
        resume, token = await _ws_auth(websocket, after)
    except HTTPException as exc:
        await websocket.close(code=4000 + exc.status_code, reason=str(exc.detail)[:120])
        return
    except (WebSocketDisconnect, TimeoutError, ValueError):
        await _close_quietly(websocket, 4401, "send {\"type\": \"auth\", \"key\": ...} first")
        return
    hub = _hub(websocket)
    if not await hub.wait_ready(READY_SECONDS):
        await websocket.close(code=1013, reason="the event stream is not ready; retry")
        return
    sub, reset, start = await _start(websocket, resume)
    sender = asyncio.create_task(_ws_send(websocket, hub, sub, reset, start, token))
    try:
        while True:  # the client's messages are not used; this notices it leaving
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    finally:
        sender.cancel()
        hub.unsubscribe(sub)


async def _close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError):  # the client has gone already
        await websocket.close(code=code, reason=reason)


async def _ws_auth(websocket: WebSocket, after: int | None) -> tuple[int | None, str]:
    authenticator: auth.Authenticator = websocket.app.state.auth
    address = websocket.client.host if websocket.client else "unknown"
    authenticator.check_throttle(address)
    if "authorization" in websocket.headers:
        token = authenticator.token(websocket, address)  # type: ignore[arg-type]
    else:
        # receive(), not receive_text(): a binary frame has no "text" (KeyError there).
        first = await asyncio.wait_for(websocket.receive(), WS_AUTH_SECONDS)
        if first["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(first.get("code", 1000))
        if not isinstance(first.get("text"), str):
            raise ValueError("not a text message")
        message = json.loads(first["text"])
        if not isinstance(message, dict) or message.get("type") != "auth" \
                or not isinstance(message.get("key"), str):
            raise ValueError("not an auth message")
        token = message["key"]
        given = message.get("after")
        if given is not None:
            if not isinstance(given, int) or isinstance(given, bool) or not 0 <= given < 2**63:
                raise HTTPException(422, "after must be an event id (a non-negative integer)")
            after = given
    principal = await authenticator.authenticate(websocket, token, address)  # type: ignore[arg-type]
    authenticator.authorize(principal, "agents:read")
    return after, token


async def _ws_send(websocket: WebSocket, hub: Hub, sub: Subscriber, reset: bool,
                   start: int, token: str) -> None:
    heartbeat = hub.settings.heartbeat_seconds
    try:
        if reset:
            await websocket.send_text(json.dumps({"type": "reset", "id": sub.live_from}))
        last = start
        try:
            async for event in _backlog(websocket, start, sub.live_from):
                await websocket.send_text(_ws_text(event.data()))
                last = event.id
        except _Pruned:
            await websocket.send_text(json.dumps({"type": "reset", "id": sub.live_from}))
        last = max(last, sub.live_from)
        checked = asyncio.get_running_loop().time()
        while True:
            item = await sub.next(heartbeat)
            if asyncio.get_running_loop().time() - checked >= RECHECK_SECONDS:
                checked = asyncio.get_running_loop().time()
                refused = await _key_refused(websocket, token)
                if refused is not None:
                    await websocket.close(code=4401, reason=refused[:120])
                    return
            if sub.dropped:
                await websocket.close(code=4408, reason="too slow: reconnect with ?after=")
                return
            if sub.closed:
                await websocket.close(code=1001)
                return
            if item is None:
                await websocket.send_text('{"type": "ping"}')
                continue
            if item.id <= last:
                continue
            last = item.id
            await websocket.send_text(_ws_text(item.data))
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        hub.unsubscribe(sub)


def _ws_text(data: str) -> str:
    return '{"type": "event", ' + data[1:]
