"""``/tasks`` and ``/dispatch``: the work the API accepts and hands to agents.

Routes are thin: validation here (422 naming the field), the work in :mod:`cesar.work`, one
transaction per request. Reads need ``agents:read`` (or ``tasks:read``), writes ``tasks:write``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from cesar import work
from cesar.api import auth, work_http
from cesar.api.work_http import CONFLICT, NOT_FOUND, READ, RESPONSES, WRITE, read, write
from cesar.api.work_types import Payload, Text

TaskStatus = Literal["queued", "assigned", "running", "done", "failed", "cancelled"]

#: 1 to 255 printable ASCII characters (RFC 9110 field value, without control characters).
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7E]{1,255}$"


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Text = Field(min_length=1, max_length=200)
    description: Text = Field("", max_length=10_000)
    priority: int = Field(3, ge=1, le=5, description="1 is the most urgent.")
    payload: Payload = Field(default_factory=dict,
                             description="Free JSON for the agent (at most 64 KiB, no NUL).")
    agent_id: uuid.UUID | None = Field(None, description="The preferred agent: dispatch gives "
                                                         "the task to it while it is active.")


class Task(BaseModel):
    id: uuid.UUID
    title: str
    description: str
    status: TaskStatus
    priority: int
    requested_by: str = Field(description="The API key that created it.")
    payload: dict[str, Any]
    agent_id: uuid.UUID | None = Field(description="The agent of the task's latest owner "
                                                   "assignment; null before dispatch.")
    preferred_agent_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


class TaskPage(BaseModel):
    items: list[Task] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on "
                                                "the last one.")


class AssignmentOut(BaseModel):
    task_id: uuid.UUID
    agent_id: uuid.UUID


class Dispatched(BaseModel):
    assigned: list[AssignmentOut]


router = APIRouter(tags=["tasks"], responses=RESPONSES)


@router.post("/tasks", status_code=201, response_model=Task,
             responses={422: {"description": "A field is invalid, or the Idempotency-Key was "
                                             "used with another body."}},
             summary="Create a task (idempotent with an Idempotency-Key)")
async def create_task(
    request: Request,
    response: Response,
    body: TaskCreate,
    principal: Annotated[auth.Principal, WRITE],
    idempotency_key: Annotated[str | None, Header(
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Retries with the same key and body return the first task "
                    "(`Idempotent-Replayed: true`), here and after a sync on the other "
                    "database.")] = None,
) -> Any:
    spec = body.model_dump(mode="python")
    task, replayed = await write(request, lambda conn: work.create_task(
        conn, actor=principal.actor, key_id=principal.id, spec=spec,
        idempotency_key=idempotency_key))
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return task


@router.get("/tasks", response_model=TaskPage, summary="List tasks, newest first")
async def list_tasks(
    request: Request,
    _principal: Annotated[auth.Principal, READ],
    status: Annotated[TaskStatus | None, Query()] = None,
    agent: Annotated[uuid.UUID | None, Query(description="Tasks this agent has owned.")] = None,
    since: Annotated[dt.datetime | None, Query(
        description="Tasks changed at or after this time (ISO 8601).")] = None,
    page: Annotated[work_http.Page, work_http.PAGE] = work_http.FIRST_PAGE,
) -> Any:
    return await read(request, lambda conn: work.list_tasks(
        conn, status=status, agent=agent, since=since, limit=page.limit, cursor=page.cursor))


@router.get("/tasks/{task_id}", response_model=Task, responses=NOT_FOUND,
            summary="One task")
async def get_task(request: Request, _principal: Annotated[auth.Principal, READ],
                   task_id: Annotated[uuid.UUID, Path()]) -> Any:
    return await work_http.read_one(request, lambda conn: work.get_task(conn, task_id),
                                    f"no task with id {task_id}")


@router.post("/tasks/{task_id}/cancel", response_model=Task,
             responses={**NOT_FOUND, **CONFLICT},
             summary="Cancel a task (409 once done or failed; a cancelled one is returned "
                     "unchanged)")
async def cancel_task(request: Request, principal: Annotated[auth.Principal, WRITE],
                      task_id: Annotated[uuid.UUID, Path()]) -> Any:
    return await write(request, lambda conn: work.cancel_task(
        conn, actor=principal.actor, task_id=task_id))


@router.post("/dispatch", response_model=Dispatched,
             summary="Assign queued tasks to agents (priority, then age)")
async def dispatch(request: Request, principal: Annotated[auth.Principal, WRITE],
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    done = await write(request, lambda conn: work.dispatch(conn, actor=principal.actor,
                                                           limit=limit))
    return {"assigned": [a.as_dict() for a in done]}
