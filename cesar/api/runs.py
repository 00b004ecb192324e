"""``/runs``: an agent's executions, their progress events, tokens and cost.

A run starts ``running`` (for a task: the task must be assigned to the agent, and becomes
``running``), takes events while it runs, and finishes once (the database refuses to change a
finished run: 409 with its status). Reads need ``agents:read`` (or ``tasks:read``), writes
``tasks:write``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from cesar import work
from cesar.api import auth, work_http
from cesar.api.work_http import CONFLICT, NOT_FOUND, READ, RESPONSES, WRITE, read, write
from cesar.api.work_types import Cost, Payload, Text

RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
FinalStatus = Literal["succeeded", "failed", "cancelled"]
EventKind = Literal["message", "tool_call", "tool_result", "error", "status"]
#: The largest token count a JSON number carries exactly in every client (JavaScript's
#: Number.MAX_SAFE_INTEGER; the dashboard reads these): larger limits such as the column's
#: 2**63 - 1 are rounded by float-based validators, which then send a refused value as valid.
MAX_TOKENS = 2**53 - 1


class RunStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: uuid.UUID
    task_id: uuid.UUID | None = None


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: EventKind
    payload: Payload = Field(default_factory=dict, description="Free JSON (at most 64 KiB).")


class RunFinish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: FinalStatus
    tokens_in: int = Field(ge=0, le=MAX_TOKENS)
    tokens_out: int = Field(ge=0, le=MAX_TOKENS)
    cost_usd: Cost
    error: Text | None = Field(None, max_length=10_000)


class RunEvent(BaseModel):
    id: uuid.UUID
    run_id: uuid.UUID
    kind: EventKind
    payload: dict[str, Any]
    occurred_at: dt.datetime


class Run(BaseModel):
    id: uuid.UUID
    agent_id: uuid.UUID
    task_id: uuid.UUID | None
    status: RunStatus
    started_at: dt.datetime
    finished_at: dt.datetime | None
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal = Field(description="A decimal string, e.g. \"0.012500\".")
    error: str | None

    @field_serializer("cost_usd")
    def _cost(self, value: Decimal) -> str:
        return str(value)


class RunWithEvents(Run):
    events: list[RunEvent] = Field(description="Oldest first.")


class RunPage(BaseModel):
    items: list[Run] = Field(description="Newest first.")
    next_cursor: str | None


router = APIRouter(tags=["runs"], responses=RESPONSES)


@router.post("/runs", status_code=201, response_model=Run, responses=CONFLICT,
             summary="Start a run of an agent (optionally on its task)")
async def start_run(request: Request, body: RunStart,
                    principal: Annotated[auth.Principal, WRITE]) -> Any:
    return await write(request, lambda conn: work.start_run(
        conn, actor=principal.actor, agent_id=body.agent_id, task_id=body.task_id))


@router.post("/runs/{run_id}/events", status_code=201, response_model=RunEvent,
             responses={**NOT_FOUND, **CONFLICT}, summary="Append a progress event to a run")
async def append_event(request: Request, body: EventIn,
                       principal: Annotated[auth.Principal, WRITE],
                       run_id: Annotated[uuid.UUID, Path()]) -> Any:
    return await write(request, lambda conn: work.append_event(
        conn, actor=principal.actor, run_id=run_id, kind=body.kind, payload=body.payload))


@router.post("/runs/{run_id}/finish", response_model=Run, responses={**NOT_FOUND, **CONFLICT},
             summary="Finish a run: status, tokens, cost, error")
async def finish_run(request: Request, body: RunFinish,
                     principal: Annotated[auth.Principal, WRITE],
                     run_id: Annotated[uuid.UUID, Path()]) -> Any:
    return await write(request, lambda conn: work.finish_run(
        conn, actor=principal.actor, run_id=run_id, status=body.status,
        tokens_in=body.tokens_in, tokens_out=body.tokens_out, cost_usd=body.cost_usd,
        error=body.error))


@router.get("/runs", response_model=RunPage, summary="List runs, newest first")
async def list_runs(
    request: Request,
    _principal: Annotated[auth.Principal, READ],
    agent: Annotated[uuid.UUID | None, Query()] = None,
    status: Annotated[RunStatus | None, Query()] = None,
    task: Annotated[uuid.UUID | None, Query()] = None,
    page: Annotated[work_http.Page, work_http.PAGE] = work_http.FIRST_PAGE,
) -> Any:
    return await read(request, lambda conn: work.list_runs(
        conn, agent=agent, status=status, task=task, limit=page.limit, cursor=page.cursor))


@router.get("/runs/{run_id}", response_model=RunWithEvents, responses=NOT_FOUND,
            summary="One run with its events")
async def get_run(request: Request, _principal: Annotated[auth.Principal, READ],
                  run_id: Annotated[uuid.UUID, Path()]) -> Any:
    return await work_http.read_one(request, lambda conn: work.get_run(conn, run_id, events=True),
                                    f"no run with id {run_id}")
