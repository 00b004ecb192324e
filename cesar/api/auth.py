"""Authentication and scopes: every route needs ``Authorization: Bearer KEY`` with its scope,
except the liveness probe and the anonymous view of ``/health``.

Per request, in this order (nothing here writes to the database):

1. A client address blocked for repeated failures gets 429 with ``Retry-After``, and its key is
   not even looked at. ``CESAR_API_AUTH_FAILURE_LIMIT`` failures (401) within
   ``CESAR_API_AUTH_FAILURE_WINDOW_SECONDS`` block it for ``CESAR_API_AUTH_BLOCK_SECONDS``. The
   count is per worker process, so with N workers an address gets at most N x limit attempts.
2. No header, or not ``Bearer`` followed by something shaped like a key: 401 (``missing``,
   ``malformed``), without a lookup.
3. The SHA-256 of the key is looked up (index on ``api_keys.key_hash``) and compared with the
   stored one in constant time (``hmac.compare_digest``). Lookups, found or not, are cached per
   worker for ``CESAR_API_KEY_CACHE_SECONDS`` (default 2, at most 5): that is the bound within
   which a revocation, made on the database this API serves, reaches every worker. Unknown,
   revoked or expired: 401. Expiry is judged by the database's clock (the lookup returns the
   seconds left), so a skewed API host cannot stretch it.
4. The route's scope missing from the key: 403.

The last use of each key is remembered in memory and written in one batch every
``CESAR_API_USAGE_FLUSH_SECONDS`` (``api_key_usage``, migration 013), never per request.
Failures are counted in ``cesar_api_auth_failures_total{reason}``.

``/metrics`` and the details of ``/health`` also accept ``CESAR_API_METRICS_TOKEN`` (or the
file named by ``CESAR_API_METRICS_TOKEN_FILE``): the monitoring credential Prometheus presents,
checked (in constant time) without the database, so the service's metrics and its diagnosis stay
readable while its database is down or not migrated.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import psycopg
from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cesar import keys, metrics
from cesar.api.aio import AsyncReads
from cesar.api.models import Error
from cesar.api.settings import AuthSettings
from cesar.console import first_line
from cesar.db import Database
from cesar.errors import OperationFailed

log = logging.getLogger(__name__)

REALM = "cesar"
SCHEME_NAME = "bearerAuth"
#: ``/health`` only: while the database cannot be reached, a key looked up this recently still
#: shows the details (the outage is when an operator wants them); every other route gets 503.
STALE_HEALTH_SECONDS = 300.0
#: Addresses (and cached keys) remembered per worker; the oldest are forgotten beyond this, so
#: a flood of random keys or addresses cannot grow memory.
MAX_TRACKED = 10_000

bearer = HTTPBearer(
    auto_error=False, scheme_name=SCHEME_NAME,
    description="An API key (`cesar keys create`), as `Authorization: Bearer cesar_...`. "
                "Scopes: " + "; ".join(f"`{k}`: {v}" for k, v in keys.SCOPES.items()) + ".",
)

#: Declares the scheme in the OpenAPI document; the header itself is read by the Authenticator.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]

#: Documented on every route that needs a key.
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No key, or an unknown, expired or revoked one "
                                         "(`WWW-Authenticate: Bearer`)."},
    403: {"model": Error, "description": "The key lacks the route's scope."},
    429: {"model": Error, "description": "Too many failed authentications from this address "
                                         "(`Retry-After`)."},
}


#: The same for a route whose own answer is not JSON (its errors still are).
JSON_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": value["description"],
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for code, value in RESPONSES.items()
}


@dataclass(frozen=True)
class Principal:
    """The key a request was authenticated with."""

    id: uuid.UUID
    prefix: str
    name: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        """How the audit log names the key."""
        return f"api_key:{self.prefix} ({self.name})"


#: Who presented the monitoring credential (CESAR_API_METRICS_TOKEN): /metrics and the details
#: of /health, checked without the database, so both stay readable during a database outage.
MONITORING = Principal(uuid.UUID(int=0), "monitoring", "monitoring credential",
                       frozenset({"metrics:read", "health:detail"}))


class Throttle:
    """Failures per client address in a sliding window; a blocked address gets 429."""

    def __init__(self, limit: int, window: float, block: float) -> None:
        self.limit, self.window, self.block = limit, window, block
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: OrderedDict[str, float] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return None
        return max(1, math.ceil(left))

    def failure(self, address: str) -> None:
        now = time.monotonic()
        times = self._failures.pop(address, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            self._blocked[address] = now + self.block
            self._blocked.move_to_end(address)
            times.clear()
            log.warning("client %s blocked for %g s after %d failed authentications",
                        address, self.block, self.limit)
        else:
            self._failures[address] = times
        for table in (self._failures, self._blocked):
            while len(table) > MAX_TRACKED:
                table.popitem(last=False)


class KeyCache:
    """Key lookups by hash (None: no such key) for ``ttl`` seconds, at most MAX_TRACKED."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[keys.KeyRecord | None, float]] = OrderedDict()

    def get(self, digest: str, max_age: float | None = None) -> tuple[bool, keys.KeyRecord | None,
                                                                       float]:
        entry = self._entries.get(digest)
        limit = self.ttl if max_age is None else max_age
        if entry is None or time.monotonic() - entry[1] >= limit:
            return False, None, 0.0
        return True, entry[0], entry[1]

    def put(self, digest: str, record: keys.KeyRecord | None, fetched: float) -> None:
        self._entries[digest] = (record, fetched)
        self._entries.move_to_end(digest)
        while len(self._entries) > MAX_TRACKED:
            self._entries.popitem(last=False)


class UsageRecorder:
    """Remembers which keys were used and writes their last use in batches, on its own thread."""

    def __init__(self, database: Database, interval: float) -> None:
        self.database, self.interval = database, interval
        self._used: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cesar-key-usage", daemon=True)

    def start(self) -> UsageRecorder:
        self._thread.start()
        return self

    def touch(self, key_id: uuid.UUID) -> None:
        if key_id not in self._used:  # racy read is fine: the set add below is under the lock
            with self._lock:
                self._used.add(key_id)

    def flush(self) -> None:
        with self._lock:
            batch, self._used = self._used, set()
        if not batch:
            return
        try:
            with self.database.connection() as conn:
                keys.record_usage(conn, list(batch))
        except Exception as exc:  # noqa: BLE001 - kept for the next attempt, never fatal
            log.warning("could not record the last use of %d key(s): %s", len(batch),
                        first_line(exc))
            with self._lock:
                self._used |= batch

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


def _unauthorized(detail: str, error: str | None) -> HTTPException:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge,
                                               "Cache-Control": "no-store"})


class Authenticator:
    """One per application (worker process): the cache, the throttle and the usage batches."""

    def __init__(self, settings: AuthSettings, database: Database,
                 limiter: anyio.CapacityLimiter, reads: AsyncReads | None = None) -> None:
        self.settings = settings
        self.database = database
        self.limiter = limiter
        self.reads = reads
        self.cache = KeyCache(settings.key_cache_seconds)
        self.throttle = Throttle(settings.auth_failure_limit,
                                 settings.auth_failure_window_seconds,
                                 settings.auth_block_seconds)
        self.usage = UsageRecorder(database, settings.usage_flush_seconds)
        self.metrics_token = settings.metrics_secret()
        self._metrics_digest = keys.hash_key(self.metrics_token) if self.metrics_token else None

    # ------------------------------------------------------------ steps
    def check_throttle(self, address: str) -> None:
        retry = self.throttle.retry_after(address)
        if retry is not None:
            metrics.API_AUTH_FAILURES.labels("throttled").inc()
            raise HTTPException(429, "too many failed authentications from this address; "
                                     f"retry in {retry} s", headers={"Retry-After": str(retry)})

    def fail(self, address: str, reason: str, detail: str) -> HTTPException:
        metrics.API_AUTH_FAILURES.labels(reason).inc()
        self.throttle.failure(address)
        return _unauthorized(detail, None if reason == "missing" else "invalid_token")

    def token(self, request: Request, address: str) -> str:
        header = request.headers.get("authorization")
        if header is None:
            raise self.fail(address, "missing", "this route needs an API key: send "
                                                 "`Authorization: Bearer KEY` (`cesar keys "
                                                 "create` makes one)")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self.fail(address, "malformed", "the Authorization header must be "
                                                  "`Bearer KEY`")
        return token

    def is_metrics_token(self, token: str) -> bool:
        return self._metrics_digest is not None and keys.digests_equal(
            keys.hash_key(token), self._metrics_digest)

    async def authenticate(self, request: Request, token: str, address: str, *,
                           stale_ok: bool = False) -> Principal:
        if not keys.well_formed(token):
            raise self.fail(address, "malformed", "that is not an API key (they look like "
                                                  "cesar_<12 hex>_<43 characters>)")
        digest = keys.hash_key(token)
        hit, record, fetched = self.cache.get(digest)
        if not hit:
            now = time.monotonic()
            try:
                if self.reads is not None:
                    record = await self.reads.lookup_key(digest)
                else:
                    record = await anyio.to_thread.run_sync(self._lookup, digest,
                                                            limiter=self.limiter)
            except (OperationFailed, psycopg.OperationalError):
                hit, record, fetched = self.cache.get(digest, STALE_HEALTH_SECONDS)
                if not (stale_ok and hit):
                    raise
            else:
                fetched = now
                self.cache.put(digest, record, fetched)
        if record is None or not keys.digests_equal(record.key_hash, digest):
            raise self.fail(address, "unknown", "unknown API key")
        if record.revoked:
            raise self.fail(address, "revoked", f"the API key {record.prefix} is revoked")
        if record.expires_in is not None and record.expires_in - (time.monotonic() - fetched) <= 0:
            raise self.fail(address, "expired", f"the API key {record.prefix} has expired")
        self.usage.touch(record.id)
        return Principal(record.id, record.prefix, record.name, record.scopes)

    def _lookup(self, digest: str) -> keys.KeyRecord | None:
        # Autocommit: one round trip, and a read that sees the latest committed revocation.
        with self.database.connection() as conn:
            conn.autocommit = True
            try:
                return keys.lookup(conn, digest)
            finally:
                conn.autocommit = False

    @staticmethod
    def authorize(principal: Principal, scope: str) -> None:
        if scope not in principal.scopes:
            metrics.API_AUTH_FAILURES.labels("scope").inc()
            raise HTTPException(403, f"the API key {principal.prefix} lacks the scope {scope}",
                                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", '
                                         f'error="insufficient_scope", scope="{scope}"'})


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def require(scope: str) -> Any:
    """A route dependency: a valid key with ``scope`` (401/403/429 otherwise)."""
    if scope not in keys.SCOPES:
        raise ValueError(f"unknown scope {scope}")

    async def dependency(request: Request, _credentials: BearerCredentials) -> Principal:
        auth: Authenticator = request.app.state.auth
        address = client_address(request)
        auth.check_throttle(address)
        token = auth.token(request, address)
        principal = await auth.authenticate(request, token, address)
        auth.authorize(principal, scope)
        request.state.principal = principal
        return principal

    return Security(dependency, scopes=[scope])


async def metrics_access(request: Request, _credentials: BearerCredentials) -> Principal | None:
    """``/metrics``: the Prometheus credential (no database), or a key with ``metrics:read``."""
    auth: Authenticator = request.app.state.auth
    address = client_address(request)
    auth.check_throttle(address)
    token = auth.token(request, address)
    if auth.is_metrics_token(token):
        return None
    principal = await auth.authenticate(request, token, address)
    auth.authorize(principal, "metrics:read")
    return principal


async def optional_principal(request: Request) -> Principal | None:
    """``/health``: anonymous callers are welcome (None); a key, if sent, must be valid."""
    if "authorization" not in request.headers:
        return None
    auth: Authenticator = request.app.state.auth
    address = client_address(request)
    auth.check_throttle(address)
    token = auth.token(request, address)
    if auth.is_metrics_token(token):
        return MONITORING
    try:
        return await auth.authenticate(request, token, address, stale_ok=True)
    except (OperationFailed, psycopg.Error):
        return None  # the key cannot be checked now: the anonymous view, never an error
