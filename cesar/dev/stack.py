"""The development stack behind ``invoke up`` / ``down`` / ``status``.

``up`` starts the embedded PostgreSQL when a URL is missing (see ``cesar.dev.embedded``), brings the
schema of both databases (local and the cluster stand-in) up to date, and reports what it did.
It is idempotent: a second run only checks. ``down`` stops what ``up`` started and keeps the data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cesar import db, migrate, web
from cesar.config import Settings
from cesar.db import urls
from cesar.dev.embedded import EmbeddedPostgres
from cesar.errors import ConfigError, OperationFailed


@dataclass
class DatabaseReport:
    name: str
    url: str | None
    reachable: bool = False
    engine: str | None = None
    agents: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    migrations: dict[str, int] | None = None  # cesar.migrate.summary(): applied, total, ...

    @property
    def migrations_line(self) -> str:
        """``11/11`` (applied/total), or ``-`` when unknown."""
        m = self.migrations
        return f"{m['applied']}/{m['total']}" if m else "-"

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": urls.mask(self.url), "reachable": self.reachable, "engine": self.engine,
            "agents": self.agents, "migrations": self.migrations, "latency_ms": self.latency_ms,
            "error": self.error,
        }


@dataclass
class UpResult:
    seconds: float
    actions: list[str] = field(default_factory=list)
    databases: list[DatabaseReport] = field(default_factory=list)
    embedded: dict[str, Any] | None = None
    api: dict[str, Any] | None = None  # cesar.dev.service.ApiService.status()
    sync: dict[str, Any] | None = None  # the sync pass after migrating (cesar.sync.run)


def _uses_embedded(settings: Settings) -> bool:
    return settings.environment == "development" and not (
        settings.local_db_url and settings.cockroach_db_url
    )


def _endpoints(settings: Settings) -> list[db.Endpoint]:
    """The local and the cluster database that exist, each named after its source."""
    return [e for e in (db.resolve(settings, "local"), db.resolve(settings, "cluster")) if e]


def up(settings: Settings) -> UpResult:
    if settings.environment != "development":
        raise ConfigError(
            f"`invoke up` prepares the development stack, but ENVIRONMENT={settings.environment}; "
            "use `invoke migrate` and `invoke deploy` for staging and production"
        )
    _endpoints(settings)  # refuse a bad URL before starting anything
    started = time.perf_counter()
    result = UpResult(seconds=0.0)
    if _uses_embedded(settings):
        pg = EmbeddedPostgres(settings.state_dir, bindir=settings.pg_bindir)
        _state, actions = pg.up()
        result.actions.extend(actions)
        result.embedded = embedded_status(settings)
    for endpoint in _endpoints(settings):
        report = DatabaseReport(endpoint.name, endpoint.url)
        with db.connect(endpoint, settings, autocommit=True) as conn:
            report.reachable = True
            report.engine = db.detect_engine(conn)
            run = migrate.apply_all(endpoint, settings)
            if run.done:
                result.actions.append(f"applied {migrate.plural(len(run.done), 'migration')} "
                                      f"to the {endpoint.name} database")
            report.migrations = run.plan.counts
            row = conn.execute("SELECT count(*) FROM agents").fetchone()
            report.agents = int(row[0]) if row else 0
        result.databases.append(report)
    result.sync = _sync_pass(settings)
    # The API serves the dashboard's export under /ui/ (cesar/web.py).
    result.actions.extend(web.stack_up(settings.state_dir / "web"))
    api = _api_service(settings)
    result.actions.extend(api.start())
    api_status = api.status()
    result.api = {**api_status, **web.status_fields(api_status, settings.state_dir / "web")}
    result.seconds = time.perf_counter() - started
    return result


def _sync_pass(settings: Settings) -> dict[str, Any] | None:
    """One sync run between the two databases; None without both of them."""
    from cesar.sync import run  # its errors are the operator's: one line, exit 1 or 2

    endpoints = {e.name: e for e in _endpoints(settings)}
    if len(endpoints) < 2:
        return None
    report = run.run_once(settings, endpoints["local"], endpoints["cluster"])
    return {"summary": report.summary(), "moved": report.moved, "conflicts": report.conflicts,
            "first_pairing": report.first_pairing, "seconds": round(report.seconds, 3)}


def _api_service(settings: Settings) -> Any:
    from cesar.dev.service import ApiService  # the API process of the stack

    return ApiService.for_settings(settings)


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` started (the API first). Data stays in the state directory."""
    return _api_service(settings).stop() + _down_database(settings)


def _down_database(settings: Settings) -> list[str]:
    pg = EmbeddedPostgres(settings.state_dir, bindir=settings.pg_bindir)
    if not pg.is_initialised():
        return ["nothing to stop: there is no embedded stack here"]
    if pg.down():
        return [f"stopped the embedded PostgreSQL (data kept in {pg.pgdata})"]
    return ["the embedded PostgreSQL was not running"]


def embedded_status(settings: Settings) -> dict[str, Any] | None:
    pg = EmbeddedPostgres(settings.state_dir)
    state = pg.load_state()
    if state is None:
        return None
    pid = pg.pid()
    return {
        "running": pid is not None, "pid": pid, "host": "127.0.0.1", "port": state.port,
        "data_dir": str(pg.pgdata), "log_file": str(pg.log_file),
        "active_login": state.active_login,
    }


def probe(endpoint: db.Endpoint, settings: Settings) -> DatabaseReport:
    report = DatabaseReport(endpoint.name, endpoint.url)
    started = time.perf_counter()
    try:
        with db.connect(endpoint, settings, autocommit=True, connect_timeout=2) as conn:
            report.reachable = True
            report.engine = db.detect_engine(conn)
            report.latency_ms = round((time.perf_counter() - started) * 1000, 1)
            row = conn.execute(
                "SELECT CASE WHEN to_regclass('agents') IS NULL THEN NULL "
                "ELSE (SELECT count(*) FROM agents) END"
            ).fetchone()
            report.agents = None if not row or row[0] is None else int(row[0])
            report.migrations = migrate.summary(conn)
    except OperationFailed as exc:
        report.error = str(exc)
    return report


def sync_status(endpoint: db.Endpoint, settings: Settings) -> dict[str, Any] | None:
    """Lag per table and direction, as ``/health`` reports it (``sync_state`` is written to both
    sides by every run; this reads the cluster's copy)."""
    from cesar.sync import health as sync_health

    try:
        with db.connect(endpoint, settings, autocommit=True, connect_timeout=2) as conn:
            value = sync_health.probe(conn)
    except OperationFailed as exc:
        return {"error": str(exc)}
    value["tables"] = [{k: v for k, v in row.items() if not k.startswith("_")}
                       for row in value.get("tables", [])]
    return value


def status(settings: Settings) -> dict[str, Any]:
    """One JSON-able object: environment, URLs (masked), embedded server, reachability, the
    API and the sync's lag."""
    local = cluster = None
    primary: str | None = None
    route_error: str | None = None
    try:
        primary = db.route(settings).primary.name
        if settings.environment == "development":
            for endpoint in _endpoints(settings):
                if endpoint.name == "local":
                    local = endpoint
                else:
                    cluster = endpoint
        elif settings.cockroach_db_url:
            cluster = db.resolve(settings, "cluster")
    except ConfigError as exc:
        route_error = str(exc)
    return {
        "environment": settings.environment,
        "database_target": settings.database_target,
        "serving": primary,
        "config_error": route_error,
        "local_db_url": urls.mask(local.url if local else settings.local_db_url),
        "cluster_db_url": urls.mask(cluster.url if cluster else settings.cockroach_db_url),
        "read_replica_url": urls.mask(settings.cockroach_read_replica_url),
        "embedded": embedded_status(settings),
        "databases": {e.name: probe(e, settings).as_dict() for e in (local, cluster) if e},
        "sync": sync_status(cluster or local, settings) if (cluster or local) else None,
        **_api_status(settings),  # api_url, api, dashboard_url
    }


def _api_status(settings: Settings) -> dict[str, Any]:
    api_status = _api_service(settings).status()
    return {**api_status, **web.status_fields(api_status, settings.state_dir / "web")}
