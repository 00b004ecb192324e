"""``cesar demo``: realistic activity driven through the API, so a fresh stack has live data.

Every change goes through the HTTP API, as a client would make it (never SQL): tasks are created
at ``--rate`` per second (each with its own Idempotency-Key), ``POST /dispatch`` hands them to
agents, and each assigned task gets a run that reports a few progress events (a message, tool
calls and their results) over the following ticks, then finishes: mostly succeeded, some failed
or cancelled, with tokens and a cost. Anything still running when ``--duration`` is over is
finished (cancelled) before the command returns, so no run is left dangling.

The key: ``CESAR_API_KEY`` when set (it needs ``agents:read`` and ``tasks:write``); else, in
development only, a demo key kept in the state directory (``.cesar/demo-api-key``, mode 0600),
made when missing or no longer valid. Outside development nothing is created.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import httpx
import psycopg

from cesar.config import Settings
from cesar.console import first_line
from cesar.credentials import write_private
from cesar.errors import ConfigError, OperationFailed

DEMO_SCOPES = ["agents:read", "tasks:write"]
DEMO_KEY_FILE = "demo-api-key"
MAX_RATE = 100.0
MAX_SECONDS = 24 * 3600
#: Progress events a run reports before it finishes (one per tick).
STEPS = ("message", "tool_call", "tool_result", "status")
TITLES = ("Summarise the incident report", "Triage new support tickets", "Draft release notes",
          "Review the pull request", "Reconcile the invoices", "Translate the onboarding guide",
          "Answer the customer question", "Plan the sprint backlog", "Audit the access logs",
          "Refactor the billing module")
TOOLS = ("search", "sql", "http_get", "python", "summarise")


@dataclass
class LiveRun:
    id: str
    task_id: str
    steps_left: int


@dataclass
class Tally:
    tasks_created: int = 0
    tasks_assigned: int = 0
    runs_started: int = 0
    events: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0
    runs_cancelled: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: Decimal = Decimal(0)
    refused: int = 0  # 409s: a task cancelled or taken meanwhile (another client, an operator)
    seconds: float = 0.0
    requests: int = 0
    task_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tasks_created": self.tasks_created, "tasks_assigned": self.tasks_assigned,
                "runs_started": self.runs_started, "events": self.events,
                "runs_succeeded": self.runs_succeeded, "runs_failed": self.runs_failed,
                "runs_cancelled": self.runs_cancelled, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out, "cost_usd": str(self.cost_usd),
                "refused": self.refused, "requests": self.requests,
                "seconds": round(self.seconds, 3)}


class Client:
    """The API as the demo calls it: a failed call is one line naming the route and status."""

    def __init__(self, url: str, key: str, tally: Tally) -> None:
        self.url, self.tally = url.rstrip("/"), tally
        self.http = httpx.Client(base_url=self.url, timeout=15.0,
                                 headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201),
             **kwargs: Any) -> httpx.Response:
        self.tally.requests += 1
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OperationFailed(f"the API at {self.url} did not answer {method} {path} "
                                  f"({type(exc).__name__}); is it running (`invoke up`)?") from None
        if r.status_code in ok or r.status_code == 409:
            return r
        if r.status_code in (401, 403):
            raise ConfigError(f"the API refused the demo's key on {method} {path} "
                              f"({r.status_code}); set CESAR_API_KEY to a key with "
                              f"{' and '.join(DEMO_SCOPES)}")
        raise OperationFailed(f"{method} {path} answered {r.status_code}: {_detail(r)}")

    def close(self) -> None:
        self.http.close()


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail"))[:200]
    except (ValueError, AttributeError):
        return r.text[:200]


def run(client: Client, *, rate: float, duration: float, rng: random.Random,
        progress: Any = None) -> Tally:
    """Drive the API for ``duration`` seconds; one tick per second (or per task when faster)."""
    tally = client.tally
    live: list[LiveRun] = []
    agents: dict[str, str] = {}  # task id -> agent id
    tick = min(1.0, 1.0 / rate)
    started = time.monotonic()
    owed = 0.0
    next_report = started + 1.0
    while True:
        now = time.monotonic()
        if now - started >= duration:
            break
        owed += rate * tick
        while owed >= 1.0:
            owed -= 1.0
            _create(client, rng, tally)
        assigned = client.call("POST", "/dispatch").json().get("assigned", [])
        tally.tasks_assigned += len(assigned)
        for a in assigned:
            agents[a["task_id"]] = a["agent_id"]
            r = client.call("POST", "/runs", json={"agent_id": a["agent_id"],
                                                   "task_id": a["task_id"]})
            if r.status_code == 409:
                tally.refused += 1
                continue
            tally.runs_started += 1
            live.append(LiveRun(r.json()["id"], a["task_id"], rng.randint(1, len(STEPS))))
        for item in list(live):
            if item.steps_left > 0:
                _event(client, rng, tally, item)
                item.steps_left -= 1
            else:
                _finish(client, rng, tally, item, None)
                live.remove(item)
        if progress is not None and time.monotonic() >= next_report:
            progress(tally, len(live), time.monotonic() - started)
            next_report += 1.0
        time.sleep(max(0.0, tick - (time.monotonic() - now)))
    for item in live:  # nothing left running
        _finish(client, rng, tally, item, "cancelled")
    tally.seconds = time.monotonic() - started
    return tally


def _create(client: Client, rng: random.Random, tally: Tally) -> None:
    body = {"title": rng.choice(TITLES), "priority": rng.choice((1, 2, 3, 3, 3, 4, 5)),
            "description": "made by cesar demo",
            "payload": {"source": "cesar demo", "estimate_minutes": rng.randint(1, 90)}}
    r = client.call("POST", "/tasks", json=body,
                    headers={"Idempotency-Key": f"demo-{uuid.uuid4()}"})
    tally.tasks_created += 1
    tally.task_ids.append(r.json()["id"])


def _event(client: Client, rng: random.Random, tally: Tally, item: LiveRun) -> None:
    kind = rng.choice(STEPS)
    payload: dict[str, Any] = {"text": "working on it"} if kind == "message" else \
        {"tool": rng.choice(TOOLS), "ms": rng.randint(20, 2000)} if kind.startswith("tool") \
        else {"progress": round(rng.random(), 2)}
    r = client.call("POST", f"/runs/{item.id}/events", json={"kind": kind, "payload": payload})
    if r.status_code == 409:
        tally.refused += 1
        item.steps_left = 0
    else:
        tally.events += 1


def _finish(client: Client, rng: random.Random, tally: Tally, item: LiveRun,
            status: str | None) -> None:
    status = status or rng.choices(("succeeded", "failed", "cancelled"), (85, 10, 5))[0]
    tokens_in, tokens_out = rng.randint(200, 8000), rng.randint(50, 2000)
    # Prices of the order of a hosted model's: dollars per million tokens in and out.
    cost = (Decimal(tokens_in) * Decimal("3") + Decimal(tokens_out) * Decimal("15")) \
        / Decimal(1_000_000)
    body = {"status": status, "tokens_in": tokens_in, "tokens_out": tokens_out,
            "cost_usd": str(cost.quantize(Decimal("0.000001"))),
            "error": "the tool timed out" if status == "failed" else None}
    r = client.call("POST", f"/runs/{item.id}/finish", json=body)
    if r.status_code == 409:
        tally.refused += 1
        return
    setattr(tally, f"runs_{status}", getattr(tally, f"runs_{status}") + 1)
    tally.tokens_in += tokens_in
    tally.tokens_out += tokens_out
    tally.cost_usd += Decimal(body["cost_usd"])


# ================================================================================ the key
def demo_key(settings: Settings) -> str:
    from cesar.api.settings import load_api_settings

    configured = load_api_settings().key
    if configured is not None and configured.get_secret_value().strip():
        return configured.get_secret_value().strip()
    if settings.environment != "development":
        raise ConfigError("no API key for the demo: set CESAR_API_KEY to a key with "
                          "agents:read and tasks:write (`cesar keys create --name demo "
                          "--scopes agents:read,tasks:write`)")
    return _development_key(settings)


def _development_key(settings: Settings) -> str:
    from cesar import db, keys

    path = Path(settings.state_dir) / DEMO_KEY_FILE
    endpoint = db.route(settings).primary
    try:
        with db.connect(endpoint, settings, autocommit=True) as conn:
            if path.is_file():
                stored = path.read_text().strip()
                record = keys.lookup(conn, keys.hash_key(stored)) \
                    if keys.well_formed(stored) else None
                if (record is not None and not record.revoked and record.expires_in is None
                        and set(DEMO_SCOPES) <= record.scopes):
                    return stored
            created = keys.create(conn, "demo", DEMO_SCOPES,
                                  actor=f"cesar demo ({keys.operator()})")
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot make the demo's key in the {endpoint.name} database "
                              f"{endpoint.masked}: {first_line(exc)}; run "
                              "`invoke up` and `invoke migrate`") from None
    write_private(path, created.key + "\n")
    return created.key


def _seconds(_ctx: click.Context, _param: click.Parameter, text: str) -> float:
    from cesar import keys

    cleaned = text.strip()
    try:
        value = float(cleaned)
    except ValueError:
        try:
            value = keys.parse_duration(cleaned).total_seconds()
        except ConfigError:
            raise click.BadParameter(f"{text!r} is not a duration; write seconds (30) or "
                                     "e.g. 90s, 5m, 1h") from None
    if not 0 < value <= MAX_SECONDS:
        raise click.BadParameter(f"{text!r} must be more than 0 s and at most 24 h")
    return value


# ================================================================================ command
@click.command("demo")
@click.option("--rate", type=click.FloatRange(0.01, MAX_RATE), default=2.0, show_default=True,
              help="Tasks created per second.")
@click.option("--duration", default="60", show_default=True, metavar="DURATION",
              callback=_seconds, help="How long: seconds (30) or 90s, 5m, 1h.")
@click.option("--api-url", default=None, metavar="URL",
              help="The API (default: CESAR_API_URL, else the API `invoke up` started).")
@click.option("--seed", type=int, default=None, help="Seed of the random choices.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary at the end.")
def demo_command(rate: float, duration: float, api_url: str | None, seed: int | None,
                 as_json: bool) -> None:
    """Drive realistic activity through the API: tasks, dispatch, runs with progress events,
    tokens and costs, for DURATION at RATE tasks per second."""
    from cesar.config import load_settings
    from cesar.console import emit_json
    from cesar.smoke import default_api_url

    seconds = duration
    settings = load_settings()
    url = (api_url or default_api_url(settings)).rstrip("/")
    key = demo_key(settings)
    tally = Tally()
    client = Client(url, key, tally)

    def progress(t: Tally, running: int, elapsed: float) -> None:
        click.echo(f"demo {elapsed:5.0f}s  tasks {t.tasks_created}  assigned "
                   f"{t.tasks_assigned}  runs {t.runs_started} ({running} running)  events "
                   f"{t.events}  ok/failed/cancelled {t.runs_succeeded}/{t.runs_failed}/"
                   f"{t.runs_cancelled}  cost ${t.cost_usd}", err=as_json)

    if not as_json:
        click.echo(f"demo: {rate:g} task(s)/s for {seconds:g} s through {url}")
    try:
        run(client, rate=rate, duration=seconds, rng=random.Random(seed), progress=progress)
    finally:
        client.close()
    summary = {**tally.as_dict(), "api_url": url, "rate": rate, "duration": seconds}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"demo done in {tally.seconds:.1f} s: {tally.tasks_created} tasks, "
               f"{tally.runs_started} runs ({tally.runs_succeeded} succeeded, "
               f"{tally.runs_failed} failed, {tally.runs_cancelled} cancelled), {tally.events} "
               f"events, {tally.tokens_in + tally.tokens_out} tokens, ${tally.cost_usd}")
