"""The API's work: tasks, their dispatch to agents, and agent runs with their events.

Every function takes a connection inside a transaction the caller runs through
:func:`cesar.db.run_transaction` (SQLSTATE 40001 retried): each function is one whole write or
read, safe to run again. Every write adds one ``audit_log`` row naming ``actor`` (the API key,
or the operator of ``cesar dispatch``) in the same transaction.

The task state machine lives in the database (migration 015, ``task_status_guard``): code here
asks for a transition and maps the refusal (SQLSTATE 55000, DETAIL ``current_status=...``) to
:class:`Conflict`, so an operator's plain SQL meets the same rule as the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cesar.keys import audit

T = TypeVar("T")

TASK_STATUSES = ("queued", "assigned", "running", "done", "failed", "cancelled")
RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")
FINAL_RUN_STATUSES = ("succeeded", "failed", "cancelled")
EVENT_KINDS = ("message", "tool_call", "tool_result", "error", "status")
#: What a task becomes when the run working on it finishes.
TASK_AFTER_RUN = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled"}

#: Namespace of idempotent task ids: uuid5(NAMESPACE, "<api key id>:<Idempotency-Key>"). Fixed
#: forever: both databases of the sync derive the same id from the same retried request.
IDEMPOTENT_TASKS = uuid.UUID("6f1d3c2e-9a4b-5e07-8c61-0b7a2d94e315")


# ================================================================================ errors
class WorkError(Exception):
    """A refusal the API answers with a 4xx (never a 500)."""


class NotFound(WorkError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Conflict(WorkError):
    """409: the row is not in a state that allows the change; ``current_status`` says which."""

    def __init__(self, detail: str, current_status: str) -> None:
        super().__init__(detail)
        self.detail, self.current_status = detail, current_status


class Invalid(WorkError):
    """422 in FastAPI's shape: ``loc`` names the field (``("body", "agent_id")``)."""

    def __init__(self, loc: Sequence[str], msg: str, value: Any = None) -> None:
        super().__init__(msg)
        self.loc, self.msg, self.value = tuple(loc), msg, value


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn`` (a whole transaction), turning the state machine's refusal into Conflict."""
    try:
        return fn()
    except pgerrors.ObjectNotInPrerequisiteState as exc:
        detail = exc.diag.message_detail or ""
        if not detail.startswith("current_status="):
            raise
        primary = exc.diag.message_primary or "illegal status transition"
        raise Conflict(primary, detail.partition("=")[2]) from None


# ================================================================================ input checks
#: The payloads' bound, as encoded JSON: larger ones are refused (422), not stored.
MAX_PAYLOAD_BYTES = 64 * 1024


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as JSONB, or None: NUL characters (neither engine stores
    them in text or JSONB), non-finite numbers (not JSON), or a size beyond the bound."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL characters (\\u0000)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "must not contain NaN or Infinity"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if len(json.dumps(value, separators=(",", ":"))) > MAX_PAYLOAD_BYTES:
        return f"is larger than {MAX_PAYLOAD_BYTES} bytes as JSON"
    return None


# ================================================================================ cursors
#: A keyset cursor: the last row's time (microseconds since the epoch) and id. Every string
#: matching the pattern is a position (the OpenAPI document says so, and the fuzz test holds the
#: API to it); anything else is 422.
CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9a-f]{32}$"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def encode_cursor(at: dt.datetime, row_id: uuid.UUID) -> str:
    micros = (at - _EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros}_{row_id.hex}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        micros, _, hexid = cursor.partition("_")
        return _EPOCH + dt.timedelta(microseconds=int(micros)), uuid.UUID(hex=hexid)
    except (ValueError, OverflowError):
        raise Invalid(("query", "cursor"), "not a cursor this API returned (use next_cursor "
                      "from the previous page)", cursor) from None


# ================================================================================ tasks
_TASK_COLUMNS = """t.id, t.title, t.description, t.status, t.priority, t.requested_by, t.payload,
    t.preferred_agent_id,
    (SELECT a.agent_id FROM task_assignments AS a
      WHERE a.task_id = t.id AND a.role = 'owner'
      ORDER BY a.assigned_at DESC, a.id DESC LIMIT 1) AS agent_id,
    t.created_at, t.updated_at"""


def task_id_for(key_id: uuid.UUID, idempotency_key: str) -> uuid.UUID:
    """The id of the task a request with this key and Idempotency-Key creates, on any side."""
    return uuid.uuid5(IDEMPOTENT_TASKS, f"{key_id}:{idempotency_key}")


def request_digest(spec: dict[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def get_task(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {_TASK_COLUMNS} FROM tasks AS t WHERE t.id = %s",
                           (task_id,)).fetchone()


def _agent_status(conn: psycopg.Connection[Any], agent_id: uuid.UUID) -> str | None:
    row = conn.execute("SELECT status FROM agents WHERE id = %s", (agent_id,)).fetchone()
    return None if row is None else str(row[0])


def create_task(conn: psycopg.Connection[Any], *, actor: str, key_id: uuid.UUID,
                spec: dict[str, Any], idempotency_key: str | None,
                ) -> tuple[dict[str, Any], bool]:
    """Insert the task ``spec`` (title, description, priority, payload, agent_id); returns it
    and whether it was a replay of an earlier request with the same Idempotency-Key."""
    preferred = spec.get("agent_id")
    if preferred is not None and _agent_status(conn, preferred) is None:
        raise Invalid(("body", "agent_id"), f"no agent with id {preferred}", str(preferred))
    if idempotency_key is not None:
        task_id, digest = task_id_for(key_id, idempotency_key), request_digest(spec)
    else:
        task_id, digest = uuid.uuid4(), None
    # ON CONFLICT on the primary key: a concurrent retry waits for the first insert and finds
    # its row (READ COMMITTED), or fails with 40001 and is retried (SERIALIZABLE).
    inserted = conn.execute(
        "INSERT INTO tasks (id, title, description, priority, requested_by, payload, "
        "preferred_agent_id, request_hash, idempotency_key) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
        (task_id, spec["title"], spec.get("description") or "", spec.get("priority", 3), actor,
         Jsonb(spec.get("payload") or {}), preferred, digest, idempotency_key),
    ).fetchone()
    if inserted is None:
        row = conn.execute("SELECT request_hash FROM tasks WHERE id = %s", (task_id,)).fetchone()
        if row is None or row[0] != digest:
            raise Invalid(("header", "idempotency-key"),
                          "this Idempotency-Key was already used with a different request body; "
                          "send a new key for a new task", idempotency_key)
        task = get_task(conn, task_id)
        assert task is not None
        return task, True
    audit(conn, actor=actor, action="task.create", target_type="task", target_id=task_id,
          request_id=idempotency_key,
          detail={"title": spec["title"], "priority": spec.get("priority", 3),
                  "preferred_agent_id": str(preferred) if preferred else None})
    task = get_task(conn, task_id)
    assert task is not None
    return task, False


def list_tasks(conn: psycopg.Connection[Any], *, status: str | None = None,
               agent: uuid.UUID | None = None, since: dt.datetime | None = None,
               limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
    """Newest first (created_at, then id), ``limit`` per page; ``agent``: tasks it has owned;
    ``since``: tasks changed at or after that time."""
    where, args = ["true"], []
    if status is not None:
        where.append("t.status = %s")
        args.append(status)
    if agent is not None:
        where.append("EXISTS (SELECT 1 FROM task_assignments AS x WHERE x.task_id = t.id "
                     "AND x.agent_id = %s AND x.role = 'owner')")
        args.append(agent)
    if since is not None:
        where.append("t.updated_at >= %s")
        args.append(since)
    return _page(conn, f"SELECT {_TASK_COLUMNS} FROM tasks AS t", "t.created_at", "t.id",
                 where, args, limit, cursor)


def _page(conn: psycopg.Connection[Any], select: str, at_column: str, id_column: str,
          where: list[str], args: list[Any], limit: int, cursor: str | None
          ) -> dict[str, Any]:
    """One page, newest first by (``at_column``, ``id_column``): keyset pagination, so a page
    costs the same however deep it is, and rows written meanwhile never shift a later page.
    ``select`` is ``SELECT columns FROM table``; ``where`` the filters already chosen."""
    if cursor is not None:
        at, last = decode_cursor(cursor)
        where = [*where, f"({at_column}, {id_column}) < (%s, %s)"]
        args = [*args, at, last]
    query = (f"{select} WHERE {' AND '.join(where)} "
             f"ORDER BY {at_column} DESC, {id_column} DESC LIMIT %s")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    at_key = at_column.rpartition(".")[2]
    nxt = encode_cursor(rows[-1][at_key], rows[-1]["id"]) if more and rows else None
    return {"items": rows, "next_cursor": nxt}


def cancel_task(conn: psycopg.Connection[Any], *, actor: str,
                task_id: uuid.UUID) -> dict[str, Any]:
    """Cancel the task (a task already cancelled is returned unchanged); its open assignment
    is released. A finished task: Conflict (the database refuses the transition)."""
    row = conn.execute("SELECT status FROM tasks WHERE id = %s FOR UPDATE",
                       (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"no task with id {task_id}")
    if row[0] != "cancelled":
        conn.execute("UPDATE tasks SET status = 'cancelled', updated_at = now() WHERE id = %s",
                     (task_id,))
        _release(conn, task_id)
        audit(conn, actor=actor, action="task.cancel", target_type="task", target_id=task_id,
              detail={"from": row[0]})
    task = get_task(conn, task_id)
    assert task is not None
    return task


def _release(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> None:
    conn.execute("UPDATE task_assignments SET released_at = now(), updated_at = now() "
                 "WHERE task_id = %s AND released_at IS NULL", (task_id,))


# ================================================================================ dispatch
@dataclass(frozen=True)
class Assignment:
    task_id: uuid.UUID
    agent_id: uuid.UUID

    def as_dict(self) -> dict[str, str]:
        return {"task_id": str(self.task_id), "agent_id": str(self.agent_id)}


def dispatch(conn: psycopg.Connection[Any], *, actor: str,
             limit: int = 100) -> list[Assignment]:
    """Assign up to ``limit`` queued tasks, most urgent (priority 1) then oldest first, each to
    its preferred agent when that one is active, else to the least loaded active agent.

    ``FOR UPDATE SKIP LOCKED``: dispatchers running at once lock disjoint tasks, so each task
    goes to exactly one agent; a task another dispatcher assigned and committed no longer
    matches ``status = 'queued'`` when it is re-read under the lock.
    """
    tasks = conn.execute(
        "SELECT id, preferred_agent_id FROM tasks WHERE status = 'queued' "
        "ORDER BY priority, created_at, id LIMIT %s FOR UPDATE SKIP LOCKED", (limit,)).fetchall()
    if not tasks:
        return []
    agents = conn.execute(
        "SELECT id, open_assignments FROM agent_workload WHERE status = 'active' "
        "ORDER BY open_assignments, name, id").fetchall()
    if not agents:
        return []
    rank = {row[0]: i for i, row in enumerate(agents)}
    load = {row[0]: int(row[1]) for row in agents}
    done: list[Assignment] = []
    for task_id, preferred in tasks:
        agent = preferred if preferred in load else min(load, key=lambda a: (load[a], rank[a]))
        load[agent] += 1
        done.append(Assignment(task_id, agent))
    with conn.cursor() as cur:
        cur.executemany("UPDATE tasks SET status = 'assigned', updated_at = now() "
                        "WHERE id = %s", [(a.task_id,) for a in done])
        cur.executemany("INSERT INTO task_assignments (task_id, agent_id, role) "
                        "VALUES (%s, %s, 'owner')", [(a.task_id, a.agent_id) for a in done])
    for a in done:
        audit(conn, actor=actor, action="task.assign", target_type="task", target_id=a.task_id,
              detail={"agent_id": str(a.agent_id)})
    return done


# ================================================================================ runs
_RUN_COLUMNS = ("id, agent_id, task_id, status, started_at, finished_at, tokens_in, "
                "tokens_out, cost_usd, error")
_EVENT_COLUMNS = "id, run_id, kind, payload, occurred_at"


def get_run(conn: psycopg.Connection[Any], run_id: uuid.UUID, *,
            events: bool = False) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        run = cur.execute(f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE id = %s",
                          (run_id,)).fetchone()
        if run is not None and events:
            run["events"] = cur.execute(
                f"SELECT {_EVENT_COLUMNS} FROM agent_run_events WHERE run_id = %s "
                "ORDER BY occurred_at, id", (run_id,)).fetchall()
    return run


def start_run(conn: psycopg.Connection[Any], *, actor: str, agent_id: uuid.UUID,
              task_id: uuid.UUID | None) -> dict[str, Any]:
    """A run of ``agent_id``; with ``task_id``, the task must be assigned to that agent (or
    running on it) and becomes running."""
    agent_status = _agent_status(conn, agent_id)
    if agent_status is None:
        raise Invalid(("body", "agent_id"), f"no agent with id {agent_id}", str(agent_id))
    if agent_status != "active":
        raise Conflict(f"agent {agent_id} is {agent_status}; only an active agent runs",
                       agent_status)
    if task_id is not None:
        row = conn.execute("SELECT status FROM tasks WHERE id = %s FOR UPDATE",
                           (task_id,)).fetchone()
        if row is None:
            raise Invalid(("body", "task_id"), f"no task with id {task_id}", str(task_id))
        owner = conn.execute(
            "SELECT agent_id FROM task_assignments WHERE task_id = %s AND role = 'owner' "
            "AND released_at IS NULL ORDER BY assigned_at DESC, id DESC LIMIT 1",
            (task_id,)).fetchone()
        if owner is not None and owner[0] != agent_id:
            raise Conflict(f"task {task_id} is assigned to agent {owner[0]}, not {agent_id}",
                           str(row[0]))
        conn.execute("UPDATE tasks SET status = 'running', updated_at = now() WHERE id = %s",
                     (task_id,))
    run_id = uuid.uuid4()
    conn.execute("INSERT INTO agent_runs (id, agent_id, task_id) VALUES (%s, %s, %s)",
                 (run_id, agent_id, task_id))
    audit(conn, actor=actor, action="run.start", target_type="agent_run", target_id=run_id,
          detail={"agent_id": str(agent_id), "task_id": str(task_id) if task_id else None})
    run = get_run(conn, run_id)
    assert run is not None
    return run


def append_event(conn: psycopg.Connection[Any], *, actor: str, run_id: uuid.UUID, kind: str,
                 payload: dict[str, Any]) -> dict[str, Any]:
    """One progress event of a running run (a finished run takes none: Conflict)."""
    row = conn.execute("SELECT status FROM agent_runs WHERE id = %s FOR UPDATE",
                       (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"no run with id {run_id}")
    if row[0] != "running":
        raise Conflict(f"run {run_id} is {row[0]}: a finished run takes no more events",
                       str(row[0]))
    event_id = uuid.uuid4()
    with conn.cursor(row_factory=dict_row) as cur:
        event = cur.execute(
            f"INSERT INTO agent_run_events (id, run_id, kind, payload) VALUES (%s, %s, %s, %s) "
            f"RETURNING {_EVENT_COLUMNS}", (event_id, run_id, kind, Jsonb(payload))).fetchone()
    audit(conn, actor=actor, action="run.event", target_type="agent_run", target_id=run_id,
          detail={"event_id": str(event_id), "kind": kind})
    assert event is not None
    return event


def finish_run(conn: psycopg.Connection[Any], *, actor: str, run_id: uuid.UUID, status: str,
               tokens_in: int, tokens_out: int, cost_usd: Decimal,
               error: str | None) -> dict[str, Any]:
    """Finish a running run (the database refuses to change a finished one: Conflict); its
    task, if running, becomes done, failed or cancelled and its assignment is released."""
    row = conn.execute(
        "UPDATE agent_runs SET status = %s, finished_at = now(), tokens_in = %s, "
        "tokens_out = %s, cost_usd = %s, error = %s, updated_at = now() WHERE id = %s "
        "RETURNING task_id", (status, tokens_in, tokens_out, cost_usd, error, run_id)).fetchone()
    if row is None:
        raise NotFound(f"no run with id {run_id}")
    task_id = row[0]
    if task_id is not None:
        moved = conn.execute(
            "UPDATE tasks SET status = %s, updated_at = now() WHERE id = %s "
            "AND status = 'running' RETURNING id", (TASK_AFTER_RUN[status], task_id)).fetchone()
        if moved is not None:
            _release(conn, task_id)
    audit(conn, actor=actor, action="run.finish", target_type="agent_run", target_id=run_id,
          detail={"status": status, "tokens_in": tokens_in, "tokens_out": tokens_out,
                  "cost_usd": str(cost_usd)})
    run = get_run(conn, run_id)
    assert run is not None
    return run


def list_runs(conn: psycopg.Connection[Any], *, agent: uuid.UUID | None = None,
              status: str | None = None, task: uuid.UUID | None = None, limit: int = 50,
              cursor: str | None = None) -> dict[str, Any]:
    """Newest first (started_at, then id)."""
    where, args = ["true"], []
    for column, value in (("agent_id", agent), ("status", status), ("task_id", task)):
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    return _page(conn, f"SELECT {_RUN_COLUMNS} FROM agent_runs", "started_at", "id",
                 where, args, limit, cursor)
