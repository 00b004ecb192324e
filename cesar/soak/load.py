"""The load of a soak: readers on the API, plain-SQL writers on each database, probes.

Every write a writer sees acknowledged (its COMMIT returned) goes into the :class:`Ledger` with
the state it wrote; a write whose outcome is unknown (the connection broke after the statement
was sent: it may or may not have committed) widens the row's acceptable states instead of
replacing them. At the end each ledger row must be on both databases in an acceptable state.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from cesar.console import first_line
from cesar.soak.report import Sample

#: What each table's state is compared on (besides its key).
STATE_COLUMNS: dict[str, tuple[str, ...]] = {
    "tasks": ("title", "status", "priority"),
    "agent_runs": ("status", "tokens_in"),
    "agent_run_events": ("kind",),
}


class Log:
    """A soak log file: ``<ISO time> LEVEL source: message`` (read back by logscan)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8", buffering=1)

    def write(self, level: str, source: str, message: str) -> None:
        stamp = datetime.now(UTC).isoformat()
        text = " | ".join(message.strip().splitlines()) or "-"
        with self._lock:
            self._file.write(f"{stamp} {level} {source}: {text}\n")

    def info(self, source: str, message: str) -> None:
        self.write("INFO", source, message)

    def error(self, source: str, message: str) -> None:
        self.write("ERROR", source, message)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Ledger:
    """Acknowledged writes: ``(table, id) -> acceptable states`` (normally exactly one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
        self.acknowledged = 0
        self.in_doubt = 0

    def acked(self, table: str, key: str, state: tuple[Any, ...]) -> None:
        with self._lock:
            self.rows[(table, key)] = {state}
            self.acknowledged += 1

    def doubtful(self, table: str, key: str, state: tuple[Any, ...]) -> None:
        """The write may have committed: both its state and the previous one are acceptable."""
        with self._lock:
            self.in_doubt += 1
            if (table, key) in self.rows:
                self.rows[(table, key)].add(state)

    def snapshot(self) -> dict[tuple[str, str], set[tuple[Any, ...]]]:
        with self._lock:
            return {k: set(v) for k, v in self.rows.items()}


def missing_or_stale(conn: psycopg.Connection, rows: dict[tuple[str, str], set[tuple[Any, ...]]]
                     ) -> list[dict[str, Any]]:
    """The ledger rows that ``conn``'s database lacks or holds in an unacceptable state."""
    out = []
    by_table: dict[str, list[str]] = {}
    for table, key in rows:
        by_table.setdefault(table, []).append(key)
    for table, keys in by_table.items():
        cols = STATE_COLUMNS[table]
        found: dict[str, tuple[Any, ...]] = {}
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            query = (f"SELECT id::text, {', '.join(cols)} FROM {table} "  # noqa: S608 - fixed names
                     "WHERE id = ANY(%s::uuid[])")
            for row in conn.execute(query, [chunk]):
                found[row[0]] = tuple(row[1:])
        for key in keys:
            state = found.get(key)
            if state is None or state not in rows[(table, key)]:
                out.append({"table": table, "id": key, "found": None if state is None
                            else list(state), "expected": [list(s) for s in rows[(table, key)]]})
    return out


class SqlWriter(threading.Thread):
    """Inserts and updates its own rows in one database at a steady rate, with plain SQL."""

    def __init__(self, side: str, url: Callable[[], str], ledger: Ledger, log: Log,
                 stop: threading.Event, *, rate: float, seed: int) -> None:
        super().__init__(name=f"writer-{side}", daemon=True)
        self.side, self.url, self.ledger, self.log, self.stop = side, url, ledger, log, stop
        self.interval = 1.0 / rate
        self.rng = random.Random(seed)
        self.tasks: list[tuple[str, tuple[Any, ...]]] = []
        self.runs: list[tuple[str, tuple[Any, ...]]] = []
        self.n = 0
        self.failures = 0
        self.paused = threading.Event()  # set: write nothing (the end of the soak)

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self.stop.is_set():
            started = time.monotonic()
            if not self.paused.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.url(), connect_timeout=3,
                                               application_name=f"soak-writer-{self.side}")
                    self._one(conn)
                except (psycopg.Error, OSError) as exc:
                    self.failures += 1
                    first = first_line(exc)
                    self.log.error(f"writer-{self.side}",
                                   f"{type(exc).__name__}: {first}")
                    if conn is not None:
                        conn.close()
                    conn = None
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    def _one(self, conn: psycopg.Connection) -> None:
        self.n += 1
        roll = self.rng.random()
        if roll < 0.5 or not self.tasks:
            self._insert(conn)
        elif roll < 0.85:
            self._update_task(conn)
        else:
            self._finish_run(conn)

    def _insert(self, conn: psycopg.Connection) -> None:
        title = f"soak {self.side} {self.n}"
        priority = self.rng.randint(1, 5)
        with_run = self.rng.random() < 0.4
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO tasks (title, priority, requested_by, payload) "
                "VALUES (%s, %s, 'soak', %s) RETURNING id::text, status",
                [title, priority, json.dumps({"writer": self.side, "n": self.n})],
            ).fetchone()
            assert row is not None
            task_id, status = row
            run = event = None
            if with_run:
                got = conn.execute(
                    "INSERT INTO agent_runs (agent_id, task_id) SELECT id, %s FROM agents "
                    "ORDER BY id OFFSET %s LIMIT 1 RETURNING id::text, status, tokens_in",
                    [task_id, self.rng.randint(0, 23)]).fetchone()
                if got is not None:
                    run = (got[0], (got[1], got[2]))
                    ev = conn.execute(
                        "INSERT INTO agent_run_events (run_id, kind, payload) "
                        "VALUES (%s, 'message', %s) RETURNING id::text",
                        [run[0], json.dumps({"text": title})]).fetchone()
                    event = ev[0] if ev else None
        # Only once COMMIT returned: an insert in doubt is not recorded (it was not
        # acknowledged; if it did commit, nothing requires it).
        state = (title, status, priority)
        self.ledger.acked("tasks", task_id, state)
        self.tasks.append((task_id, state))
        if run is not None:
            self.ledger.acked("agent_runs", run[0], run[1])
            self.runs.append(run)
            if event is not None:
                self.ledger.acked("agent_run_events", event, ("message",))

    #: The next status of a task (the database's guard allows only these transitions).
    NEXT = {"queued": "assigned", "assigned": "running", "running": "done"}

    def _update_task(self, conn: psycopg.Connection) -> None:
        i = self.rng.randrange(len(self.tasks))
        task_id, (title, status, _) = self.tasks[i]
        if status in self.NEXT and self.rng.random() < 0.6:
            status = self.NEXT[status]
        state = (title, status, self.rng.randint(1, 5))
        self._update(conn, "tasks", task_id, state,
                     "UPDATE tasks SET status = %s, priority = %s, updated_at = now() "
                     "WHERE id = %s", [state[1], state[2], task_id])
        self.tasks[i] = (task_id, state)

    def _finish_run(self, conn: psycopg.Connection) -> None:
        if not self.runs:
            return self._insert(conn)
        i = self.rng.randrange(len(self.runs))
        run_id, _ = self.runs.pop(i)  # a finished run is final: never updated again
        state = (self.rng.choice(["succeeded", "failed"]), self.rng.randint(1, 10_000))
        self._update(conn, "agent_runs", run_id, state,
                     "UPDATE agent_runs SET status = %s, tokens_in = %s, finished_at = now(), "
                     "updated_at = now() WHERE id = %s", [state[0], state[1], run_id])
        return None

    def _update(self, conn: psycopg.Connection, table: str, key: str,
                state: tuple[Any, ...], query: str, params: list[Any]) -> None:
        try:
            with conn.transaction():
                conn.execute(query, params)
        except (psycopg.OperationalError, OSError):
            self.ledger.doubtful(table, key, state)  # COMMIT may have landed
            raise
        self.ledger.acked(table, key, state)


class Reader(threading.Thread):
    """GET /agents at a steady rate with an API key; every read is a :class:`Sample`."""

    def __init__(self, n: int, base_url: str, key: str, stop: threading.Event, *,
                 rate: float, path: str = "/agents") -> None:
        super().__init__(name=f"reader-{n}", daemon=True)
        self.base_url, self.key, self.stop, self.path = base_url, key, stop, path
        self.interval = 1.0 / rate
        self.samples: list[Sample] = []

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=5.0) as client:
            while not self.stop.is_set():
                at = time.time()
                started = time.perf_counter()
                try:
                    ok = client.get(self.path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                ms = (time.perf_counter() - started) * 1000
                self.samples.append(Sample(at, ms, ok))
                self.stop.wait(max(0.0, self.interval - ms / 1000))


class Poller(threading.Thread):
    """Calls ``probe()`` every ``interval`` seconds and keeps ``(epoch, value)``."""

    def __init__(self, name: str, probe: Callable[[], Any], stop: threading.Event,
                 interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.probe, self.stop, self.interval = probe, stop, interval
        self.values: list[tuple[float, Any]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            at = time.time()
            try:
                value = self.probe()
            except Exception:  # noqa: BLE001 - a failed probe is a measurement, not a crash
                value = None
            self.values.append((at, value))
            self.stop.wait(self.interval)


class ApiWriter(threading.Thread):
    """Writes through the API as an agent's client would: POST /tasks (with an
    Idempotency-Key, retried with the same key until acknowledged), then a run with an event,
    finished. Only what the API answered 2xx for goes into the ledger."""

    ATTEMPTS = 8

    def __init__(self, base_url: str, key: str, ledger: Ledger, log: Log,
                 stop: threading.Event, *, rate: float, seed: int) -> None:
        super().__init__(name="writer-api", daemon=True)
        self.base_url, self.key, self.ledger, self.log, self.stop = (
            base_url, key, ledger, log, stop)
        self.interval = 1.0 / rate
        self.rng = random.Random(seed)
        self.created: list[str] = []  # task ids the API acknowledged (the subscriber's check)
        self.failures = 0
        self.gave_up = 0
        self.paused = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=5.0) as client:
            agents: list[str] = []
            n = 0
            while not self.stop.is_set():
                started = time.monotonic()
                if not self.paused.is_set():
                    try:
                        if not agents:
                            page = self._call(client, "GET", "/agents", None, None)
                            agents = [a["id"] for a in (page or {}).get("items", [])
                                      if a.get("status") == "active"]
                        n += 1
                        self._one(client, n, agents)
                    except _GaveUp as exc:
                        self.gave_up += 1
                        self.log.error("writer-api", f"gave up: {exc}")
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _one(self, client: httpx.Client, n: int, agents: list[str]) -> None:
        title = f"soak api {n}"
        body = {"title": title, "priority": self.rng.randint(1, 5), "payload": {"n": n}}
        task = self._call(client, "POST", "/tasks", body, str(uuid.uuid4()))
        if task is None:
            return
        self.ledger.acked("tasks", task["id"], (task["title"], task["status"],
                                                task["priority"]))
        self.created.append(task["id"])
        if not agents or self.rng.random() < 0.5:
            return
        run = self._call(client, "POST", "/runs", {"agent_id": self.rng.choice(agents)}, None)
        if run is None:
            return
        self.ledger.acked("agent_runs", run["id"], (run["status"], run["tokens_in"]))
        event = self._call(client, "POST", f"/runs/{run['id']}/events",
                           {"kind": "message", "payload": {"text": title}}, None)
        if event is not None:
            self.ledger.acked("agent_run_events", event["id"], (event["kind"],))
        tokens = self.rng.randint(1, 9999)
        done = self._call(client, "POST", f"/runs/{run['id']}/finish",
                          {"status": "succeeded", "tokens_in": tokens, "tokens_out": 1,
                           "cost_usd": "0.001000"}, None)
        if done is not None:
            self.ledger.acked("agent_runs", done["id"], (done["status"], done["tokens_in"]))
        else:  # the finish may have committed before its answer was lost
            self.ledger.doubtful("agent_runs", run["id"], ("succeeded", tokens))

    def _call(self, client: httpx.Client, method: str, path: str, body: Any,
              idempotency_key: str | None) -> Any:
        """The answer's JSON; a failure is retried (POST /tasks with the same key; the other
        writes are retried only when nothing reached the server: a refused connection)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        for attempt in range(self.ATTEMPTS):
            try:
                r = client.request(method, path, json=body, headers=headers)
            except httpx.ConnectError as exc:
                self._failed(method, path, f"{type(exc).__name__}: {exc}")
            except httpx.HTTPError as exc:
                self._failed(method, path, f"{type(exc).__name__}: {exc}")
                if idempotency_key is None and method != "GET":
                    return None  # may have been applied: not acknowledged, so not owed
            else:
                if r.status_code < 300:
                    return r.json()
                self._failed(method, path, f"HTTP {r.status_code}: {r.text[:200]}")
                if r.status_code < 500 or (idempotency_key is None and method != "GET"):
                    return None
            if self.stop.wait(min(2.0, 0.2 * 2 ** attempt)):
                return None
        raise _GaveUp(f"{method} {path} failed {self.ATTEMPTS} times")

    def _failed(self, method: str, path: str, why: str) -> None:
        self.failures += 1
        self.log.error("writer-api", f"{method} {path}: {why}")


class _GaveUp(Exception):
    pass


class Subscriber(threading.Thread):
    """Follows GET /events (SSE) and resumes with Last-Event-ID after any disconnect; keeps
    the primary keys it saw per table, so every acknowledged write can be looked for."""

    def __init__(self, base_url: str, key: str, log: Log, stop: threading.Event) -> None:
        super().__init__(name="subscriber", daemon=True)
        self.base_url, self.key, self.log, self.stop = base_url, key, log, stop
        self.seen: dict[str, set[str]] = {}
        self.events = 0
        self.reconnects = 0
        self.resets = 0
        # From the log's start: a write made before the first connection is still seen.
        self.last_id: str | None = "0"

    def run(self) -> None:
        while not self.stop.is_set():
            headers = {"Authorization": f"Bearer {self.key}", "Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                with httpx.stream("GET", self.base_url + "/events", headers=headers,
                                  timeout=httpx.Timeout(5.0, read=30.0)) as r:
                    if r.status_code != 200:
                        raise httpx.HTTPError(f"HTTP {r.status_code}")
                    self._read(r.iter_lines())
            except httpx.HTTPError as exc:
                if self.stop.is_set():
                    return
                self.log.info("subscriber", f"stream ended ({type(exc).__name__}: {exc}); "
                                            f"resuming after {self.last_id}")
            self.reconnects += 1
            self.stop.wait(0.5)

    def _read(self, lines: Any) -> None:
        event_type, event_id = "message", None
        for line in lines:
            if self.stop.is_set():
                return
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                event_type = line[6:].strip()
            elif line.startswith("data:"):
                if event_type == "reset":
                    self.resets += 1
                    self.log.info("subscriber", "reset: the stream asks for a reload")
                else:
                    data = json.loads(line[5:])
                    self.seen.setdefault(data.get("table", "?"), set()).add(str(data.get("pk")))
                    self.events += 1
                if event_id is not None:
                    self.last_id = event_id
            elif line == "":
                event_type, event_id = "message", None
