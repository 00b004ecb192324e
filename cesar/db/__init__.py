"""The connection layer.

Routing, decided by :func:`route` from the settings alone (no I/O):

=============  ===================  ===========================================================
ENVIRONMENT    DATABASE_TARGET      what serves queries
=============  ===================  ===========================================================
development    local (default)      LOCAL_DB_URL, else the embedded ``cesar_local``
development    cluster              COCKROACH_DB_URL (else the embedded ``cesar_cluster``);
                                    if unreachable at open: the local database, with a warning
staging        (ignored)            COCKROACH_DB_URL only, ``sslmode=verify-full``, no fallback
production     (ignored)            COCKROACH_DB_URL only, ``sslmode=verify-full``, no fallback
=============  ===================  ===========================================================

``COCKROACH_READ_REPLICA_URL``, when set, serves read-only work whenever the cluster is the
primary (it must also be ``verify-full`` outside development).

The engine is detected from the server (``SELECT version()``), never from the URL.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool, PoolTimeout

from cesar.config import Settings, dev_urls
from cesar.console import first_line
from cesar.db import urls
from cesar.errors import ConfigError, OperationFailed, RetryExhausted

log = logging.getLogger(__name__)

Engine = Literal["cockroachdb", "postgresql"]
T = TypeVar("T")


#: The source of a URL the development stack handed over (no variable or flag was set).
EMBEDDED = "the embedded stack"
#: The variable that configures each side.
VARIABLES = {"local": "LOCAL_DB_URL", "cluster": "COCKROACH_DB_URL"}


@dataclass(frozen=True)
class Endpoint:
    """One database URL and where it came from: the variable, the flag or the embedded stack
    that gave it, named by every message about it (so it travels whole, never as a bare URL)."""

    name: Literal["local", "cluster", "read-replica"]
    url: str  # it holds the password: the repr below shows ``masked`` instead
    variable: str

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, masked={self.masked!r}, variable={self.variable!r})"

    @property
    def masked(self) -> str:
        return urls.mask(self.url) or ""


@dataclass(frozen=True)
class Route:
    environment: str
    primary: Endpoint
    fallback: Endpoint | None = None
    read_replica: Endpoint | None = None


def embedded_urls(settings: Settings) -> tuple[str | None, str | None]:
    """The embedded stack's (local, cluster) URLs if ``invoke up`` has created it (development
    only: the stack hands them over in its state file, see :func:`cesar.config.dev_urls`)."""
    return dev_urls(settings)


def resolve(settings: Settings, name: Literal["local", "cluster"],
            flag: tuple[str, str | None] | None = None) -> Endpoint | None:
    """Side ``name``'s URL: the flag's value (``(flag name, value)``) if given, else its
    variable, else (development) the embedded stack's; None when there is none. The URL is
    parsed once, here, and a bad one is a ConfigError naming the source it came from."""
    if flag is not None and flag[1]:
        url, source = flag[1], flag[0]
    elif (configured := settings.local_db_url if name == "local"
          else settings.cockroach_db_url):
        url, source = configured, VARIABLES[name]
    else:
        handed = embedded_urls(settings)[0 if name == "local" else 1]
        if not handed:
            return None
        url, source = handed, EMBEDDED
    urls.parse(url, source)
    return Endpoint(name, url, source)


def command_target(settings: Settings, url: str | None, flag: str = "--url") -> Endpoint:
    """What a command with an optional URL flag works on: the flag's URL when given (named by
    the flag in every message, under the same TLS rule as a variable's), else the database the
    API serves (:func:`route`'s primary)."""
    if url is None:
        return route(settings).primary
    require_tls(url, flag, settings.environment)  # parses it too: a bad URL names the flag
    return Endpoint("cluster", url, flag)


LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback_or_socket(params: dict[str, str]) -> bool:
    """True when every address libpq would try is this machine's: a unix socket or a loopback
    address. libpq pairs ``host`` and ``hostaddr`` by position: a non-empty ``hostaddr`` entry is
    dialled, else that position's ``host`` (a directory or ``@name`` is a socket), else the
    default socket. A parameter the URL leaves out comes from PGHOST/PGHOSTADDR, or, when a
    service is named (``service=`` or PGSERVICE), possibly from pg_service.conf, which is not
    read here: then only what the URL itself names can be judged, anything else is not exempt."""
    service = "service" in params or "PGSERVICE" in os.environ

    def setting(name: str, variable: str) -> str | None:
        if name in params:
            return params[name]
        if service:
            return None  # whatever the service file says: unknown here
        return os.environ.get(variable, "")

    hostaddr, host = setting("hostaddr", "PGHOSTADDR"), setting("host", "PGHOST")
    if hostaddr is None:
        return False
    addrs = [a.strip() for a in hostaddr.split(",")] if hostaddr else []
    if host is None:
        if not addrs or not all(addrs):
            return False  # some position falls back to a host from the service file
        host = ""
    hosts = [h.strip() for h in host.split(",")] if host else []
    if addrs:
        if hosts and len(hosts) != len(addrs):
            return False  # libpq refuses the mismatch; nothing to exempt
        hosts = hosts or [""] * len(addrs)
        candidates = [addr or name for addr, name in zip(addrs, hosts, strict=True)]
    else:
        candidates = hosts or [""]
    for candidate in candidates:
        if not candidate or candidate.startswith("/") or candidate.startswith("@"):
            continue  # unix-domain socket (the default, a directory, or an abstract name)
        if candidate.lower() in LOOPBACK_HOSTS:
            continue
        try:
            if ipaddress.ip_address(candidate.strip("[]")).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True


def require_tls(url: str, source: str, environment: str, *, local: bool = False) -> None:
    """The one TLS rule for every URL a command connects to.

    In development anything goes. In staging and production the URL must say
    ``sslmode=verify-full`` (the server's certificate is checked against a CA and its name
    against the host), whatever its source: a variable or an explicit ``--url``-style flag.
    The one exemption is the sync's *local* database (``local=True``) when it is reached over a
    unix socket or a loopback address, where its server is meant to run on this machine, and
    PostgreSQL's unix sockets have no TLS at all. (A loopback port forwarded elsewhere, by SSH
    ``-L`` or socat, does carry the traffic off the machine: docs/configuration.md says so.)
    Raises ConfigError naming ``source`` and the fix.
    """
    params = urls.parse(url, source)
    if environment == "development":
        return
    if local and _is_loopback_or_socket(params):
        return
    mode = params.get("sslmode")
    if mode != "verify-full":
        got = f"sslmode={mode}" if mode else "no sslmode"
        exempt = (" (only a local database on a unix socket or a loopback address is exempt)"
                  if local else "")
        raise ConfigError(
            f"{source} has {got}; ENVIRONMENT={environment} requires sslmode=verify-full{exempt} "
            "(append ?sslmode=verify-full and, if the CA is not in the system store, "
            "&sslrootcert=PATH)"
        )


def _require_verify_full(url: str, variable: str, environment: str) -> None:
    require_tls(url, variable, environment)


def route(settings: Settings) -> Route:
    """Decide which URLs serve queries. Raises ConfigError for a missing or unsafe URL."""
    env = settings.environment
    if env in ("staging", "production"):
        if not settings.cockroach_db_url:
            raise ConfigError(
                f"COCKROACH_DB_URL is not set; ENVIRONMENT={env} uses the CockroachDB cluster only "
                "(set it in the environment or .env.cockroach: "
                "postgresql://USER:PASSWORD@HOST:26257/DB?sslmode=verify-full)"
            )
        _require_verify_full(settings.cockroach_db_url, "COCKROACH_DB_URL", env)
        if settings.local_db_url:  # the sync's local side: checked even though the API skips it
            require_tls(settings.local_db_url, "LOCAL_DB_URL", env, local=True)
        replica = None
        if settings.cockroach_read_replica_url:
            _require_verify_full(
                settings.cockroach_read_replica_url, "COCKROACH_READ_REPLICA_URL", env
            )
            replica = Endpoint(
                "read-replica", settings.cockroach_read_replica_url, "COCKROACH_READ_REPLICA_URL"
            )
        return Route(env, Endpoint("cluster", settings.cockroach_db_url, "COCKROACH_DB_URL"),
                     read_replica=replica)

    local, cluster = resolve(settings, "local"), resolve(settings, "cluster")
    if settings.cockroach_read_replica_url:
        urls.parse(settings.cockroach_read_replica_url, "COCKROACH_READ_REPLICA_URL")

    if settings.database_target == "cluster":
        if cluster is None:
            raise ConfigError(
                "DATABASE_TARGET=cluster but COCKROACH_DB_URL is not set and there is no embedded "
                "stack; set COCKROACH_DB_URL, run `invoke up`, or unset DATABASE_TARGET"
            )
        replica = None
        if settings.cockroach_read_replica_url:
            replica = Endpoint(
                "read-replica", settings.cockroach_read_replica_url, "COCKROACH_READ_REPLICA_URL"
            )
        return Route(env, cluster, fallback=local, read_replica=replica)

    if local is None:
        raise ConfigError(
            "no local database: run `invoke up` to start the embedded PostgreSQL, "
            "or set LOCAL_DB_URL"
        )
    return Route(env, local)


def detect_engine(conn: psycopg.Connection) -> Engine:
    """``cockroachdb`` or ``postgresql``, from what the server says it is."""
    from cesar.cockroach import parse_server_version

    row = conn.execute("SELECT version()").fetchone()
    engine = parse_server_version(str(row[0]) if row else "").engine
    return "cockroachdb" if engine == "cockroachdb" else "postgresql"



def connect_kwargs(settings: Settings) -> dict[str, object]:
    """Session settings applied to every connection we open (pooled or not)."""
    return {
        "application_name": settings.application_name,
        "connect_timeout": settings.connect_timeout,
        # Both engines honour `options=-c name=value` at connection time: no extra round trip.
        "options": f"-c statement_timeout={settings.statement_timeout_ms}",
    }


def dial(endpoint: Endpoint, *, describe: str | None = None, hint: str = "",
         **kwargs: object) -> psycopg.Connection:
    """Open one direct connection to ``endpoint`` with exactly ``kwargs`` (every direct
    connection cesar opens comes through here, so a failure reads the same everywhere).

    A failure is an OperationFailed ``<describe>: <the server's first line><hint>``;
    ``describe`` defaults to ``cannot connect to the NAME database MASKED (SOURCE)``. The
    driver's exception is its ``__cause__``: a caller can still tell a refused login from a
    server that is down."""
    try:
        return psycopg.connect(endpoint.url, **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        head = describe or (f"cannot connect to the {endpoint.name} database {endpoint.masked} "
                            f"({endpoint.variable})")
        raise OperationFailed(f"{head}: {first_line(exc)}{hint}") from exc


def connect(endpoint: Endpoint, settings: Settings, **kwargs: object) -> psycopg.Connection:
    """One direct connection (no pool) with the session settings of :func:`connect_kwargs`.
    Failures name the endpoint with its password masked."""
    return dial(endpoint, **{**connect_kwargs(settings), **kwargs})


def credential_files_stamp(settings: Settings) -> tuple[tuple[str, int], ...]:
    """Modification times of every file credentials can come from (cheap: a few stat calls)."""
    from cesar.config import DEV_STATE_FILE, ENV_FILES

    out = []
    for path in (*map(Path, ENV_FILES), Path(settings.state_dir) / DEV_STATE_FILE):
        try:
            out.append((str(path), path.stat().st_mtime_ns))
        except OSError:
            out.append((str(path), 0))
    return tuple(out)


def is_reachable(endpoint: Endpoint, settings: Settings) -> bool:
    try:
        connect(endpoint, settings).close()
    except OperationFailed:
        return False
    return True


class Database:
    """The pooled connections the API and the commands use.

    ``open(wait=True)`` fails fast with a clear error when the database is down (for commands);
    ``open(wait=False)`` lets a service start anyway and recover by itself once the database is
    back (each checkout is health-checked, so connections broken by a restart are replaced).
    """

    def __init__(
        self, settings: Settings, route_: Route | None = None, *, reloadable: bool = False
    ) -> None:
        self.settings = settings
        self.route = route_ or route(settings)
        self.endpoint = self.route.primary
        self.fell_back = False
        self.pool: ConnectionPool | None = None
        self.read_pool: ConnectionPool | None = None
        self._engine: Engine | None = None
        # Long-running processes (the API) re-read their credentials when the files they came
        # from change, so a password rotation reaches new connections without a restart while
        # connections already open keep working.
        self.reloadable = reloadable
        self._stamp = credential_files_stamp(settings) if reloadable else ()

    # ---------------------------------------------------------------- lifecycle
    def open(self, *, wait: bool = True) -> Database:
        fallback = self.route.fallback
        if fallback is not None and not is_reachable(self.route.primary, self.settings):
            log.warning(
                "the cluster %s is unreachable; DATABASE_TARGET=cluster falls back to the local "
                "database %s (development only)", self.route.primary.masked, fallback.masked,
            )
            self.endpoint, self.fell_back = fallback, True
        self.pool = self._make_pool(self.endpoint)
        if self.route.read_replica is not None and not self.fell_back:
            self.read_pool = self._make_pool(self.route.read_replica)
        pairs = ((self.pool, self.endpoint), (self.read_pool, self.route.read_replica))
        for pool, endpoint in pairs:
            if pool is None or endpoint is None:
                continue
            if wait:
                # One direct attempt first: a dead or misconfigured database fails at once with
                # the server's own reason instead of after the pool's reconnect attempts.
                try:
                    connect(endpoint, self.settings).close()
                except OperationFailed:
                    self.close()
                    raise
            pool.open(wait=False)
            if wait:
                try:
                    pool.wait(timeout=self.settings.pool_timeout + self.settings.connect_timeout)
                except PoolTimeout:
                    self.close()
                    raise OperationFailed(
                        f"the {endpoint.name} database {endpoint.masked} did not accept "
                        "connections in time"
                    ) from None
        return self

    def close(self) -> None:
        for pool in (self.pool, self.read_pool):
            if pool is not None:
                pool.close()

    def __enter__(self) -> Database:
        return self if self.pool is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _current_url(self, name: str) -> str:
        """The URL for endpoint ``name`` as of now (re-read if its files changed)."""
        if self.reloadable:
            stamp = credential_files_stamp(self.settings)
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
        for endpoint in (self.route.primary, self.route.fallback, self.route.read_replica):
            if endpoint is not None and endpoint.name == name:
                return endpoint.url
        raise RuntimeError(f"no {name} endpoint in the current route")

    def _reload(self) -> None:
        from cesar.config import load_settings

        try:
            fresh = route(load_settings())
        except ConfigError as exc:
            log.error("credentials changed but the new configuration is invalid (%s); "
                      "new connections keep using the previous credentials", exc)
            return
        if fresh.primary.name != self.route.primary.name:
            log.error("the configuration now routes to the %s database; restart to switch "
                      "targets (only credentials are reloaded)", fresh.primary.name)
            return
        for old_end, new_end in ((self.route.primary, fresh.primary),
                                 (self.route.read_replica, fresh.read_replica)):
            if (old_end is None) != (new_end is None) or (
                    old_end is not None and new_end is not None
                    and not urls.same_target(old_end.url, new_end.url)):
                log.error("the configuration (%s) now names another server or database than "
                          "%s; restart to switch targets (only credentials are reloaded)",
                          (new_end or old_end).variable,  # type: ignore[union-attr]
                          (old_end or new_end).masked)  # type: ignore[union-attr]
                return
        self.route = fresh
        if self.endpoint.name == fresh.primary.name:
            self.endpoint = fresh.primary
        log.warning("credentials reloaded: new connections use %s", self.endpoint.masked)

    def _make_pool(self, endpoint: Endpoint) -> ConnectionPool:
        s = self.settings
        name = endpoint.name
        return ConnectionPool(
            (lambda: self._current_url(name)) if self.reloadable else endpoint.url,
            min_size=min(s.pool_min_size, s.pool_max_size),
            max_size=s.pool_max_size,
            timeout=s.pool_timeout,
            max_lifetime=s.pool_max_lifetime,
            kwargs=connect_kwargs(s),
            check=ConnectionPool.check_connection,  # health check on every checkout
            name=f"cesar-{endpoint.name}",
            open=False,
        )

    # ---------------------------------------------------------------- use
    @contextmanager
    def connection(self, *, read_only: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection; commits on success, rolls back on error."""
        pool = self.read_pool if (read_only and self.read_pool is not None) else self.pool
        if pool is None:
            raise RuntimeError("Database.open() was not called")
        try:
            with pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise OperationFailed(
                f"no connection to the {self.endpoint.name} database {self.endpoint.masked} "
                f"within {self.settings.pool_timeout:g} s (is it up? is the pool exhausted?)"
            ) from None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self.connection() as conn:
                self._engine = detect_engine(conn)
        return self._engine

    def transaction(self, fn: Callable[[psycopg.Connection], T], *, read_only: bool = False,
                    serializable: bool = False) -> T:
        """Run ``fn`` in a transaction on a pooled connection, retrying SQLSTATE 40001."""
        with self.connection(read_only=read_only) as conn:
            return run_transaction(
                conn, fn, serializable=serializable,
                max_attempts=self.settings.retry_max_attempts,
                base_delay=self.settings.retry_base_delay,
                max_delay=self.settings.retry_max_delay,
            )


def run_transaction(
    conn: psycopg.Connection,
    fn: Callable[[psycopg.Connection], T],
    *,
    max_attempts: int = 8,
    base_delay: float = 0.02,
    max_delay: float = 1.0,
    serializable: bool = False,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
) -> T:
    """Run ``fn(conn)`` in one transaction; on SQLSTATE 40001 roll back and run it again.

    The whole transaction is retried (CockroachDB's client-side retry protocol): ``fn`` must be
    safe to re-run, i.e. do its work through ``conn`` only. Backoff is exponential with full
    jitter, capped at ``max_delay``; after ``max_attempts`` attempts :class:`RetryExhausted`.
    ``conn`` must not already be inside a transaction: a retry inside one would be meaningless.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("run_transaction needs a connection outside any transaction")
    for attempt in range(1, max_attempts + 1):
        try:
            with conn.transaction():
                if serializable:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                return fn(conn)
        except pgerrors.SerializationFailure as exc:
            if attempt == max_attempts:
                raise RetryExhausted(
                    f"transaction still failed with SQLSTATE 40001 after {max_attempts} attempts "
                    f"({first_line(exc)}); reduce contention or raise CESAR_RETRY_MAX_ATTEMPTS"
                ) from exc
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            log.info("40001 on attempt %d, retrying in %.3f s: %s", attempt, delay,
                     first_line(exc))
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            time.sleep(delay)
    raise AssertionError("unreachable")
