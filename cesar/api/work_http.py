"""What the work routes (``/tasks``, ``/runs``, ``/dispatch``) share: the read scope, one
transaction per request through the 40001 retry helper, and the mapping of refusals to 404, 409
and 422 (FastAPI's shape, naming the field)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import Depends, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cesar import work
from cesar.api import auth
from cesar.api.agents import in_thread
from cesar.api.models import Error
from cesar.db import Database

T = TypeVar("T")

#: Reading tasks and runs: ``agents:read`` (the agreed contract) or ``tasks:read``.
READ_SCOPES = frozenset({"agents:read", "tasks:read"})


class ConflictError(BaseModel):
    """409: the change is not allowed from the row's current state."""

    detail: str = Field(description="What was refused and why.")
    current_status: str = Field(description="The row's status now (for an inactive agent, the "
                                            "agent's).")


RESPONSES: dict[int | str, dict[str, Any]] = {
    **auth.RESPONSES,
    400: {"model": Error, "description": "The body could not be read (not UTF-8)."},
    503: {"model": Error, "description": "The database is unavailable."},
}
NOT_FOUND = {404: {"model": Error, "description": "No such row."}}
CONFLICT = {409: {"model": ConflictError, "description": "Not allowed in the current state."}}


async def read_access(request: Request, _credentials: auth.BearerCredentials) -> auth.Principal:
    """A valid key with ``agents:read`` or ``tasks:read`` (401/403/429 otherwise)."""
    authenticator: auth.Authenticator = request.app.state.auth
    address = auth.client_address(request)
    authenticator.check_throttle(address)
    token = authenticator.token(request, address)
    principal = await authenticator.authenticate(request, token, address)
    if not principal.scopes & READ_SCOPES:
        authenticator.authorize(principal, "agents:read")  # raises the 403
    request.state.principal = principal
    return principal


READ = Security(read_access, scopes=["agents:read"])
WRITE = auth.require("tasks:write")


@dataclass(frozen=True)
class Page:
    """A list route's page: how many rows, and after which (the previous page's cursor)."""

    limit: int
    cursor: str | None


def page(
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=work.CURSOR_PATTERN, description="The "
                                        "`next_cursor` of the previous page.")] = None,
) -> Page:
    return Page(limit, cursor)


#: The paging parameters of every list route (``limit``, ``cursor``), declared once.
PAGE = Depends(page)
#: A list route's default (FastAPI always passes what ``page`` returns).
FIRST_PAGE = Page(50, None)


def _database(request: Request) -> Database:
    return request.app.state.database  # type: ignore[no-any-return]


async def write(request: Request, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
    """``fn`` as one transaction (40001 retried), on a worker thread; the state machine's
    refusal becomes :class:`cesar.work.Conflict`."""
    database = _database(request)
    return await in_thread(request, lambda: work.guarded(lambda: database.transaction(fn)))


async def read(request: Request, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
    database = _database(request)
    return await in_thread(request, lambda: database.transaction(fn, read_only=True))


async def read_one(request: Request, fn: Callable[[psycopg.Connection[Any]], T | None],
                   missing: str) -> T:
    """One row by ``fn``; none is a 404 whose detail is ``missing``."""
    row = await read(request, fn)
    if row is None:
        raise work.NotFound(missing)
    return row


async def work_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, work.NotFound):
        return JSONResponse({"detail": exc.detail}, status_code=404)
    if isinstance(exc, work.Conflict):
        return JSONResponse({"detail": exc.detail, "current_status": exc.current_status},
                            status_code=409)
    assert isinstance(exc, work.Invalid)
    return JSONResponse({"detail": [{"type": "value_error", "loc": list(exc.loc),
                                     "msg": exc.msg, "input": exc.value}]}, status_code=422)


class _AsciiJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, rendered with ``\\u`` escapes: the error echoes the input, and an input
    holding a lone surrogate (``"\\ud800"`` in the JSON) cannot be encoded as UTF-8 (a 500)."""
    assert isinstance(exc, RequestValidationError)
    return _AsciiJSON({"detail": jsonable_encoder(exc.errors())}, status_code=422)
