"""``cesar smoke`` / ``invoke smoke``: the deployment verification checklist as one command.

Against the configured cluster URL (``COCKROACH_DB_URL``; in development the embedded
``cesar_cluster`` stand-in): DNS, TCP, TLS, authentication, server version and engine, round-trip
latency, migrations applied and none failed, the agents count. Against the API (``--api-url``,
``CESAR_API_URL``, else the one ``invoke up`` started): ``/health`` 200 with the expected engine,
and the p95 latency of ``/health`` and ``/agents`` over a burst, under the budget.

Each check returns ``pass``, ``warn`` (worth reading, not failing: no TLS in development, a
degraded /health, a certificate close to expiry), ``fail``, or ``skip`` (a check it needs
failed). The command exits 1 naming every failed check, 2 for bad usage or configuration.

To add a check (as the sync lag does): write ``def check_x(ctx: Context) -> Outcome`` and
append ``Check("x", check_x, needs=(...))`` to :data:`CHECKS`; ``needs`` names checks whose
failure makes this one pointless (``"auth"`` for anything reading the database: it may then use
``ctx.conn``).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import psycopg
from psycopg import errors as pgerrors

from cesar import db
from cesar.config import Settings, load_settings
from cesar.console import emit_json, first_line
from cesar.credentials import write_private
from cesar.db import engines, urls
from cesar.errors import ConfigError, OperationFailed

Status = Literal["pass", "warn", "fail", "skip"]
Outcome = tuple[Status, str]
ENGINES = ("cockroachdb", "postgresql")

#: The API's budget: p95 under 200 ms.
DEFAULT_BUDGET_MS = 200.0
DEFAULT_BURST = 20
EXPECTED_AGENTS = 24
#: Days before a server certificate's expiry from which the TLS check warns.
CERT_WARN_DAYS = 30
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL wire protocol: SSLRequest


@dataclass(frozen=True)
class Options:
    url: str
    variable: str  # where the URL came from, for messages
    environment: str
    api_url: str
    expect_database: str | None = None
    expected_agents: int = EXPECTED_AGENTS
    budget_ms: float = DEFAULT_BUDGET_MS
    burst: int = DEFAULT_BURST
    timeout: float = 5.0
    migrations_dir: Path | None = None
    #: The API key sent to the API (agents:read and health:detail); never printed.
    api_key: str | None = field(default=None, repr=False)

    @property
    def tls_required(self) -> bool:
        return self.environment != "development"


@dataclass
class Context:
    """What the checks share: the options, the parsed URL and what earlier checks found."""

    options: Options
    params: dict[str, str]
    addresses: list[str] = field(default_factory=list)
    conn: psycopg.Connection[Any] | None = None
    engine: str | None = None
    api_answers: bool = False

    @property
    def host(self) -> str:
        return self.params.get("host", "") or "localhost"

    @property
    def port(self) -> int:
        return int(self.params.get("port") or 5432)

    @property
    def sslmode(self) -> str:
        return self.params.get("sslmode") or "prefer"  # libpq's default


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Outcome]
    needs: tuple[str, ...] = ()


@dataclass
class Result:
    name: str
    status: Status
    detail: str
    ms: float


@dataclass
class Report:
    environment: str
    url: str
    api_url: str
    results: list[Result]
    seconds: float

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == "fail"]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": not self.failed, "environment": self.environment,
                "url": urls.mask(self.url), "api_url": self.api_url,
                "seconds": round(self.seconds, 3), "failed": self.failed,
                "checks": [asdict(r) for r in self.results]}


# ================================================================================ checks

def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def check_dns(ctx: Context) -> Outcome:
    host = ctx.host
    if host.startswith("/"):
        ctx.addresses = [host]
        return "pass", f"{host} is a unix socket directory: no lookup"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        ctx.addresses = [host]
        return "pass", f"{host} is an address: no lookup"
    started = time.perf_counter()
    try:
        infos = socket.getaddrinfo(host, ctx.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return "fail", f"cannot resolve {host}: {exc.strerror}"
    ctx.addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return "pass", (f"{host} -> {', '.join(ctx.addresses)} "
                    f"in {_ms(time.perf_counter() - started)}")


def _open_socket(ctx: Context) -> socket.socket:
    address = ctx.addresses[0]
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(ctx.options.timeout)
        sock.connect(f"{address}/.s.PGSQL.{ctx.port}")
        return sock
    return socket.create_connection((address, ctx.port), timeout=ctx.options.timeout)


def check_tcp(ctx: Context) -> Outcome:
    started = time.perf_counter()
    try:
        _open_socket(ctx).close()
    except TimeoutError:
        return "fail", (f"no answer from {ctx.addresses[0]}:{ctx.port} within "
                        f"{ctx.options.timeout:g} s (firewall? IP allowlist?)")
    except OSError as exc:
        return "fail", f"cannot connect to {ctx.addresses[0]}:{ctx.port}: {exc.strerror or exc}"
    took = _ms(time.perf_counter() - started)
    return "pass", f"{ctx.addresses[0]}:{ctx.port} accepts connections ({took})"


def _server_offers_tls(ctx: Context) -> tuple[bool, socket.socket]:
    sock = _open_socket(ctx)
    sock.sendall(_SSL_REQUEST)
    answer = sock.recv(1)
    return answer == b"S", sock


def _tls_context(ctx: Context) -> ssl.SSLContext:
    """What libpq verifies for this sslmode, with the same root certificate it would use."""
    mode = ctx.sslmode
    if mode not in ("verify-ca", "verify-full"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    root = ctx.params.get("sslrootcert") or str(Path.home() / ".postgresql" / "root.crt")
    if root == "system":
        context = ssl.create_default_context()
    else:
        if not Path(root).is_file():
            raise ConfigError(
                f"sslmode={mode} needs the CA certificate, but {root} does not exist; add "
                f"&sslrootcert=PATH (or sslrootcert=system) to {ctx.options.variable}"
            )
        context = ssl.create_default_context(cafile=root)
    context.check_hostname = mode == "verify-full"
    return context


def check_tls(ctx: Context) -> Outcome:
    mode, opts = ctx.sslmode, ctx.options
    policy = ""
    if opts.tls_required and mode != "verify-full":
        policy = (f"{opts.variable} has sslmode={mode}; ENVIRONMENT={opts.environment} requires "
                  "sslmode=verify-full")
    if ctx.addresses[0].startswith("/"):
        return ("fail", policy) if policy else ("pass", "unix socket: TLS does not apply")
    try:
        offered, sock = _server_offers_tls(ctx)
    except OSError as exc:
        return "fail", f"TLS negotiation failed: {exc.strerror or exc}"
    with sock:
        if not offered:
            if opts.tls_required:
                return "fail", (f"the server does not offer TLS; ENVIRONMENT={opts.environment} "
                                "requires it with sslmode=verify-full")
            return "warn", (f"the server does not offer TLS (sslmode={mode}); allowed in "
                            "development only (pgserver's build has no SSL; set "
                            "CESAR_PG_BINDIR to a build with SSL to test verify-full)")
        if mode == "disable":
            return ("fail", policy) if policy else (
                "warn", "the server offers TLS but sslmode=disable: the connection is in clear")
        try:
            context = _tls_context(ctx)
        except ConfigError as exc:
            return "fail", str(exc)
        try:
            hostname = ctx.host if context.check_hostname else None
            with context.wrap_socket(sock, server_hostname=hostname) as tls:
                version, cipher = tls.version(), (tls.cipher() or ("?",))[0]
                cert = tls.getpeercert() or {}
        except ssl.SSLCertVerificationError as exc:
            return "fail", f"the server's certificate is not trusted: {exc.verify_message}"
        except (ssl.SSLError, OSError) as exc:
            return "fail", f"TLS handshake failed: {first_line(exc)}"
    detail = f"{version} {cipher}, sslmode={mode}"
    if cert:
        days = (ssl.cert_time_to_seconds(str(cert["notAfter"])) - time.time()) / 86400
        detail += f", certificate verified, expires in {days:.0f} days"
        if days < CERT_WARN_DAYS:
            return "warn", detail + f" (renew it: under {CERT_WARN_DAYS} days left)"
    if policy:
        return "fail", policy
    if mode not in ("verify-ca", "verify-full"):
        return "warn", detail + " (encrypted, but the server is not verified)"
    return "pass", detail


def check_auth(ctx: Context) -> Outcome:
    user = ctx.params.get("user", "?")
    try:
        ctx.conn = psycopg.connect(ctx.options.url, autocommit=True,
                                   connect_timeout=max(1, round(ctx.options.timeout)),
                                   application_name="cesar-smoke")
    except psycopg.OperationalError as exc:
        message = first_line(exc)
        if "authentication failed" in message or "no pg_hba.conf entry" in message:
            return "fail", f"the server refused user {user}: {message}"
        return "fail", f"cannot log in as {user}: {message}"
    tls = "TLS" if ctx.conn.pgconn.ssl_in_use else "no TLS"
    return "pass", f"logged in as {user} to {ctx.params.get('dbname', '?')} ({tls})"


def check_server(ctx: Context) -> Outcome:
    assert ctx.conn is not None
    from cesar import cockroach

    row = ctx.conn.execute("SELECT version()").fetchone()
    version = str(row[0]) if row else ""
    server = cockroach.parse_server_version(version)
    ctx.engine = server.engine
    short = version.split(" on ")[0].split(" (")[0]
    expected = ctx.options.expect_database
    if expected and ctx.engine != expected:
        return "fail", f"{short}: the engine is {ctx.engine}, expected {expected}"
    if engines.named(server.engine).release_gated:
        if server.version is None:
            return "fail", (f"a CockroachDB server whose release cannot be parsed from version() "
                            f"({version[:80]!r}); run `cesar doctor` to judge it against "
                            f"{cockroach.MINIMUM.series}")
        if not server.version.at_least(cockroach.MINIMUM):
            return "fail", (f"{server.short} is older than {cockroach.MINIMUM.series}, the oldest "
                            f"release this project supports (pinned: {cockroach.PINNED_RELEASE}); "
                            "upgrade the cluster (docs/cockroachdb.md)")
        if server.version.series != cockroach.PINNED_SERIES:
            return "pass", (f"{server.short} (engine {ctx.engine}; pinned "
                            f"{cockroach.PINNED_RELEASE}, run `cesar doctor` after an upgrade)")
    return "pass", f"{short} (engine {ctx.engine})"


def check_latency(ctx: Context) -> Outcome:
    assert ctx.conn is not None
    samples = []
    for _ in range(10):
        started = time.perf_counter()
        ctx.conn.execute("SELECT 1")
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p50, worst = samples[len(samples) // 2], samples[-1]
    detail = f"SELECT 1 x10: median {p50:.2f} ms, max {worst:.2f} ms"
    if worst > ctx.options.budget_ms:
        return "fail", detail + f", over the {ctx.options.budget_ms:g} ms budget"
    return "pass", detail


def check_migrations(ctx: Context) -> Outcome:
    from cesar import migrate

    assert ctx.conn is not None
    counts = migrate.summary(ctx.conn, ctx.options.migrations_dir)
    line = f"{counts['applied']}/{counts['total']} applied"
    if counts["failed"]:
        return "fail", f"{line}, {counts['failed']} failed (see `cesar migrate status`)"
    if counts["pending"]:
        return "fail", f"{line}, {counts['pending']} pending (run `invoke migrate`)"
    return "pass", f"{line}, none failed"


def check_agents(ctx: Context) -> Outcome:
    assert ctx.conn is not None
    try:
        row = ctx.conn.execute("SELECT count(*) FROM agents").fetchone()
    except pgerrors.UndefinedTable:
        return "fail", "there is no agents table (run `invoke migrate`)"
    count, expected = int(row[0]) if row else 0, ctx.options.expected_agents
    if count != expected:
        return "fail", f"{count} agents, expected {expected}"
    return "pass", f"{count} agents"


def check_sync_lag(ctx: Context) -> Outcome:
    """Every table and direction synced within CESAR_SYNC_LAG_LIMIT_SECONDS (600)."""
    from cesar.sync import health as sync_health

    assert ctx.conn is not None
    value = sync_health.probe(ctx.conn)
    if not value["tables"]:
        return "warn", "no sync run recorded in this database yet (`cesar sync run`)"
    problems = sync_health.problems(value)
    if problems:
        return "fail", f"{problems[0]} ({len(problems)} over the limit)"
    return "pass", (f"max lag {value['max_lag_seconds']:.0f} s over {len(value['tables'])} "
                    f"tables and directions (limit {value['lag_limit_seconds']:.0f} s)")


def _auth_headers(options: Options) -> dict[str, str]:
    return {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}


def _get(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    import httpx

    return httpx.get(url, timeout=timeout, headers=headers)


def check_api_health(ctx: Context) -> Outcome:
    import httpx

    url = f"{ctx.options.api_url}/health"
    try:
        response = _get(url, ctx.options.timeout, _auth_headers(ctx.options))
    except httpx.HTTPError as exc:
        return "fail", (f"nothing answers on {url} ({first_line(exc) or type(exc).__name__}); "
                        "is the API running? (`invoke up` starts it; --api-url or CESAR_API_URL "
                        "point elsewhere)")
    try:
        body = response.json()
        engine, status = body["components"]["database"], body["status"]
        problems = body.get("problems") or []
    except (ValueError, KeyError, TypeError):
        return "fail", f"{url} answered {response.status_code} without a health document"
    ctx.api_answers = True
    if response.status_code != 200:
        why = "; ".join(problems) or "unhealthy (the details need a key with health:detail)"
        return "fail", f"{response.status_code}: {why}"
    expected = ctx.options.expect_database
    if expected and engine != expected:
        return "fail", f"200, but components.database is {engine}, expected {expected}"
    detail = f"200, components.database={engine}"
    if not expected:
        detail += " (any engine accepted in development; --expect-database to pin it)"
    if status != "ok":
        return "warn", f"{detail}, degraded: {'; '.join(problems)}"
    return "pass", detail


def check_api_latency(ctx: Context) -> Outcome:
    import httpx

    opts = ctx.options
    if not ctx.api_answers:
        return "skip", "not run: the API does not answer /health"
    if not opts.api_key:
        return "fail", ("no API key for /agents: set CESAR_API_KEY to a key with agents:read "
                        "(`cesar keys create --name smoke --scopes agents:read,health:detail`)")
    figures = []
    with httpx.Client(base_url=opts.api_url, timeout=opts.timeout,
                      headers=_auth_headers(opts)) as client:
        for path in ("/health", "/agents"):
            samples = []
            for _ in range(opts.burst):
                started = time.perf_counter()
                try:
                    code = client.get(path).status_code
                except httpx.HTTPError as exc:
                    return "fail", f"{path}: {first_line(exc) or type(exc).__name__}"
                if code in (401, 403):
                    return "fail", (f"{path} answered {code}: the API refuses the smoke key; "
                                    "set CESAR_API_KEY to a valid key with agents:read and "
                                    "health:detail")
                if code != 200:
                    return "fail", f"{path} answered {code} during the burst"
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            p95 = samples[max(0, -(-95 * len(samples) // 100) - 1)]
            figures.append((path, p95))
    detail = ", ".join(f"{path} p95 {p95:.1f} ms" for path, p95 in figures)
    detail += f" over {opts.burst} requests each (budget {opts.budget_ms:g} ms)"
    slow = [path for path, p95 in figures if p95 > opts.budget_ms]
    if slow:
        return "fail", f"{', '.join(slow)} over budget: {detail}"
    return "pass", detail


#: In order. ``needs``: checks whose failure makes this one pointless (it is skipped).
CHECKS: list[Check] = [
    Check("dns", check_dns),
    Check("tcp", check_tcp, needs=("dns",)),
    Check("tls", check_tls, needs=("tcp",)),
    Check("auth", check_auth, needs=("tcp",)),
    Check("server", check_server, needs=("auth",)),
    Check("latency", check_latency, needs=("auth",)),
    Check("migrations", check_migrations, needs=("auth",)),
    Check("agents", check_agents, needs=("auth",)),
    Check("sync-lag", check_sync_lag, needs=("auth",)),
    Check("api-health", check_api_health),
    Check("api-latency", check_api_latency),
]


# ================================================================================ running
def run(options: Options, checks: list[Check] | None = None) -> Report:
    """Run every check in order; a check whose prerequisite did not pass is skipped."""
    started = time.perf_counter()
    ctx = Context(options, urls.parse(options.url, options.variable))
    results: dict[str, Result] = {}
    try:
        for check in checks if checks is not None else CHECKS:
            blocked = [n for n in check.needs if n in results and results[n].status in
                       ("fail", "skip")]
            t0 = time.perf_counter()
            if blocked:
                status, detail = "skip", f"not run: {', '.join(blocked)} did not pass"
            else:
                try:
                    status, detail = check.run(ctx)
                except (psycopg.Error, OSError) as exc:
                    status, detail = "fail", f"{type(exc).__name__}: {first_line(exc)}"
            results[check.name] = Result(check.name, status, detail,
                                         round((time.perf_counter() - t0) * 1000, 1))
    finally:
        if ctx.conn is not None:
            ctx.conn.close()
    return Report(options.environment, options.url, options.api_url, list(results.values()),
                  time.perf_counter() - started)


def cluster_endpoint(settings: Settings) -> db.Endpoint:
    """The cluster the database checks use (COCKROACH_DB_URL, else in development the embedded
    stand-in), with where its URL came from."""
    endpoint = db.resolve(settings, "cluster")
    if endpoint is not None:
        return endpoint
    if settings.environment != "development":
        raise ConfigError(
            f"COCKROACH_DB_URL is not set; ENVIRONMENT={settings.environment} smoke-tests the "
            "CockroachDB cluster (set it in the environment or .env.cockroach)"
        )
    raise ConfigError("no cluster URL: set COCKROACH_DB_URL, or run `invoke up` for the "
                      "embedded stand-in")


def default_api_url(settings: Settings) -> str:
    from cesar.api.settings import load_api_settings
    from cesar.dev.service import ApiService

    configured = load_api_settings()
    if configured.url:
        return configured.url.rstrip("/")
    proc = ApiService(settings.state_dir).running()
    return proc.url if proc else f"http://127.0.0.1:{configured.port}"


# ================================================================================ the key
#: Scopes of the key smoke uses: the agents and the details of /health.
SMOKE_SCOPES = ["agents:read", "health:detail"]
SMOKE_KEY_FILE = "smoke-api-key"


def api_key(settings: Settings) -> str | None:
    """The key smoke sends: ``CESAR_API_KEY``; else, in development only, the smoke key kept in
    the state directory (mode 0600), made (in the database the API serves) when it is missing
    or no longer valid there. Outside development nothing is created: None."""
    from cesar.api.settings import load_api_settings

    configured = load_api_settings().key
    if configured is not None:
        return configured.get_secret_value().strip() or None
    if settings.environment != "development":
        return None
    return development_key(settings)


def development_key(settings: Settings) -> str | None:
    from cesar import keys

    path = Path(settings.state_dir) / SMOKE_KEY_FILE
    try:
        endpoint = db.route(settings).primary
    except ConfigError:
        return None
    try:
        with db.connect(endpoint, settings, autocommit=True) as conn:
            if path.is_file():
                stored = path.read_text().strip()
                record = keys.lookup(conn, keys.hash_key(stored)) if keys.well_formed(stored) \
                    else None
                if (record is not None and not record.revoked and record.expires_in is None
                        and set(SMOKE_SCOPES) <= record.scopes):
                    return stored
            created = keys.create(conn, "smoke", SMOKE_SCOPES, actor=f"cesar smoke "
                                  f"({keys.operator()})")
    except (OperationFailed, psycopg.Error):
        return path.read_text().strip() if path.is_file() else None
    write_private(path, created.key + "\n")
    return created.key


# ================================================================================ command
def _print_table(report: Report) -> None:
    colours = {"pass": "green", "warn": "yellow", "fail": "red", "skip": None}
    click.echo(f"smoke: ENVIRONMENT={report.environment}, database {urls.mask(report.url)}, "
               f"API {report.api_url}")
    click.echo(f"{'check':<12} {'result':<6} {'ms':>5}  detail")
    for r in report.results:
        status = click.style(f"{r.status:<6}", fg=colours[r.status], bold=r.status == "fail")
        click.echo(f"{r.name:<12} {status} {r.ms:>5.0f}  {r.detail}")
    verdict = "all passed" if not report.failed else f"FAILED: {', '.join(report.failed)}"
    click.echo(f"{verdict} in {report.seconds:.2f} s")


@click.command("smoke")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--api-url", default=None, metavar="URL",
              help="The API to check. Default: CESAR_API_URL, else the API `invoke up` started, "
                   "else http://127.0.0.1:CESAR_API_PORT.")
@click.option("--expect-database", type=click.Choice(ENGINES), default=None,
              help="The engine the cluster and /health must report. Default: cockroachdb "
                   "outside development, any in development.")
@click.option("--expected-agents", type=click.IntRange(0), default=EXPECTED_AGENTS,
              show_default=True, help="Rows the agents table must hold.")
@click.option("--budget-ms", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_BUDGET_MS, show_default=True,
              help="Latency budget: database round trips and the API's p95.")
@click.option("--burst", type=click.IntRange(1, 1000), default=DEFAULT_BURST, show_default=True,
              help="Requests to /health and to /agents for the p95.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds for each connection attempt and request.")
def smoke(as_json: bool, api_url: str | None, expect_database: str | None,
          expected_agents: int, budget_ms: float, burst: int, timeout: float) -> None:
    """Check the cluster and the API end to end (the deployment checklist as one command)."""
    settings = load_settings()
    cluster = cluster_endpoint(settings)
    if expect_database is None and settings.environment != "development":
        expect_database = "cockroachdb"
    options = Options(url=cluster.url, variable=cluster.variable, environment=settings.environment,
                      api_url=(api_url or default_api_url(settings)).rstrip("/"),
                      expect_database=expect_database, expected_agents=expected_agents,
                      budget_ms=budget_ms, burst=burst, timeout=timeout,
                      api_key=api_key(settings))
    report = run(options)
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_table(report)
    if report.failed:
        raise OperationFailed(f"smoke checks failed: {', '.join(report.failed)}")
