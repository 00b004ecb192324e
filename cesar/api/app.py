"""The FastAPI application: routes, lifespan (database pool), error bodies, request metrics.

``create_app()`` is the factory uvicorn calls (``cesar api``); tests pass their own settings.
The database pool opens with ``wait=False``: the service starts while the database is down and
recovers by itself (``/health`` says 503 meanwhile). No input yields a 500: a database that is
down or not migrated is a 503 with a JSON body; only a bug is a 500 (logged with its traceback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import psycopg
from fastapi import Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg import errors as pgerrors
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cesar import __version__, metrics
from cesar.api import (
    accesslog,
    agents,
    aio,
    auth,
    conflicts,
    credentials,
    dashboard,
    worker_gc,
)
from cesar.api import events as events_routes
from cesar.api import runs as work_runs
from cesar.api import tasks as work_tasks
from cesar.api.health import HealthChecker
from cesar.api.models import Error, Health, Liveness, PublicHealth
from cesar.api.settings import AuthSettings, load_auth_settings
from cesar.api.work_http import validation_error, work_error
from cesar.config import Settings, load_settings
from cesar.db import Database
from cesar.errors import OperationFailed
from cesar.events.hub import Hub
from cesar.events.settings import EventSettings, load_event_settings
from cesar.work import WorkError

log = logging.getLogger("cesar.api")

DESCRIPTION = """The CESAR agents and the health of the service that serves them.

`/health` is the readiness probe (200, or 503 when the database is unreachable);
`/health/live` the liveness probe (never touches the database); `/metrics` is for Prometheus.

Every other route needs an API key, sent as `Authorization: Bearer KEY`, whose scopes include
the route's. Without a key, `/health` shows only `status` and `components.database`; its details
need the scope `health:detail`.
"""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NO_STORE = {"Cache-Control": "no-store"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings or load_settings()
    # Settings read from the environment and files are re-read when those files change, so a
    # password rotation reaches new connections without a restart (cesar/rotate/rotator.py).
    database = Database(settings, reloadable=app.state.settings is None).open(wait=False)
    # The hot reads (/agents, the key lookup) on the event loop: cesar/api/aio.py.
    read_settings = app.state.read_settings or aio.load_read_settings()
    reads = await aio.open_reads(database, read_settings)
    app.state.reads = reads
    pools: list[Any] = [p for p in (database.pool, database.read_pool) if p is not None]
    watcher = metrics.PoolWatcher([*pools, *(reads.pools if reads else [])]).start()
    if reads is not None:
        reads.on_replace = watcher.replace
    checker = HealthChecker(database, watcher)
    app.state.database, app.state.health = database, checker
    # Worker threads doing database work: no more than the pool has connections.
    app.state.db_limiter = anyio.CapacityLimiter(settings.pool_max_size)
    app.state.auth = auth.Authenticator(app.state.auth_settings or load_auth_settings(),
                                        database, app.state.db_limiter, reads)
    app.state.auth.usage.start()
    app.state.events = _event_hub(app, database)
    # Every pool drained once a rotation changes the credential files: cesar/api/credentials.py.
    follower = credentials.CredentialFollower(database, reads).start()
    log.info("serving the %s database %s (%s)", database.endpoint.name,
             database.endpoint.masked, settings.environment)
    # Last, once everything start-up allocates exists: cesar/api/worker_gc.py.
    restore_gc = worker_gc.tune(read_settings.gc)
    try:
        yield
    finally:
        restore_gc()
        try:
            await follower.stop()
            app.state.events.stop()
            app.state.auth.usage.stop()
            checker.close()
            watcher.stop()
            if reads is not None:
                await reads.close()
            database.close()
            metrics.mark_worker_dead()
        finally:
            # Whatever failed above: the process may end by its re-raised SIGTERM, without
            # atexit, and the buffered access lines must be written first.
            accesslog.flush_all()


def create_app(settings: Settings | None = None,
               auth_settings: AuthSettings | None = None,
               event_settings: EventSettings | None = None,
               read_settings: aio.ReadSettings | None = None) -> FastAPI:
    """The application; ``settings`` default to the environment (read at start-up)."""
    app = FastAPI(title="CESAR API", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.auth_settings = auth_settings
    app.state.event_settings = event_settings
    app.state.read_settings = read_settings
    app.include_router(agents.router)
    app.include_router(events_routes.router)
    app.include_router(work_tasks.router)
    app.include_router(work_runs.router)
    app.include_router(conflicts.router)
    # A key is optional here: the security requirement lists "none" as an alternative.
    app.add_api_route("/health", health, methods=["GET"], response_model=Health | PublicHealth,
                      tags=["operations"], summary="Readiness: the database and the schema",
                      openapi_extra={"security": [{}, {auth.SCHEME_NAME: []}]},
                      responses={503: {"model": Health | PublicHealth,
                                       "description": "The database is unreachable."},
                                 401: auth.RESPONSES[401], 429: auth.RESPONSES[429]})
    app.add_api_route("/health/live", live, methods=["GET"], response_model=Liveness,
                      tags=["operations"], summary="Liveness: the process answers")
    app.add_api_route("/metrics", prometheus_metrics, methods=["GET"],
                      response_class=PlainTextResponse, tags=["operations"],
                      dependencies=[Security(auth.metrics_access)], responses=auth.JSON_RESPONSES,
                      summary="Prometheus metrics (text exposition format 0.0.4); the scope "
                              "metrics:read, or the Prometheus credential")
    dashboard.mount(app)  # the dashboard's static export under /ui/, same origin as the API
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(WorkError, work_error)
    app.add_exception_handler(OperationFailed, _unavailable)
    app.add_exception_handler(psycopg.Error, _database_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(RequestMetrics)
    return app


def _event_hub(app: FastAPI, database: Database) -> Hub:
    """The process's one reader of the event log (``/events``)."""
    return Hub(database, app.state.event_settings or load_event_settings()).start()


# ----------------------------------------------------------------------------- routes
async def health(request: Request, response: Response,
                 principal: Annotated[auth.Principal | None, Depends(auth.optional_principal)],
                 ) -> Health | PublicHealth:
    checker: HealthChecker = request.app.state.health
    report = await checker.check()
    response.status_code = checker.http_status(report)
    response.headers.update(_NO_STORE)
    if principal is None or "health:detail" not in principal.scopes:
        return PublicHealth.model_validate(
            {"status": report.status, "components": {"database": report.components.database}})
    return report


async def live() -> dict[str, str]:
    return {"status": "alive"}


async def prometheus_metrics(request: Request) -> Response:
    await request.app.state.health.check()  # fresh database, pool and migration gauges
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=metrics.CONTENT_TYPE, headers=_NO_STORE)


# ----------------------------------------------------------------------------- errors
def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(Error(detail=detail).model_dump(), status_code=status, headers=headers)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return _error(503, "the database is unavailable; see /health", {"Retry-After": "1"})


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, psycopg.OperationalError):
        return await _unavailable(request, exc)
    if isinstance(exc, pgerrors.UndefinedTable):
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return _error(503, "the database schema is not migrated; see /health",
                      {"Retry-After": "30"})
    return await _internal_error(request, exc)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error; the service log has the details")


# ----------------------------------------------------------------------------- metrics
class RequestMetrics:
    """Observes ``cesar_http_request_duration_seconds`` for every HTTP request.

    The ``route`` label is the route's template (``/agents/{agent_id}``), never the raw path,
    and ``unmatched`` for paths no route serves, so the label set stays small whatever clients
    send; unusual methods are ``other``. A pure ASGI middleware: no per-request task or copy.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            recorded = True
            method = scope["method"] if scope["method"] in _METHODS else "other"
            metrics.HTTP_REQUEST_DURATION.labels(method, _route_label(scope), str(status)) \
                .observe(time.perf_counter() - started)

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record()  # before the last byte leaves: a client's next scrape sees it
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if not recorded:  # no complete response: the client went away, or a crash
                record()


def _route_label(scope: Scope) -> str:
    route: Any = scope.get("route")
    if route is not None:
        return str(route.path_format)
    app = scope.get("app")
    for candidate in getattr(app, "routes", ()):  # plain Starlette routes: /openapi.json, /docs
        match, _ = candidate.matches(scope)
        if match is not Match.NONE:
            return str(getattr(candidate, "path", "unmatched"))
    return "unmatched"
