"""API keys: create, list, revoke, and look up what a client presents.

A key is ``cesar_<prefix>_<secret>``: ``prefix`` is 12 hex digits, public (it names the key in
``cesar keys list``, ``revoke`` and the audit log), ``secret`` 32 random bytes. The database
keeps only the SHA-256 of the whole key (``api_keys.key_hash``, migration 007); the key itself
is printed once, by ``create``. Keys travel with the two-way sync like any synced row, so a key
created on one side works on the other after a run, and a revocation (an update of
``revoked_at``) made after the other side's last edit of the key wins.

Every creation and revocation writes an ``audit_log`` row in the same transaction, naming the
key (``target_id`` its id, ``detail.prefix``) and the operator.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import hmac
import re
import secrets
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cesar.errors import ConfigError, OperationFailed

#: Scope name -> what it allows. A route family needs its scope; no scope implies another.
SCOPES: dict[str, str] = {
    "agents:read": "read the agents (GET /agents, /agents/{id})",
    "agents:write": "change agents (write routes of the agents family)",
    "tasks:read": "read tasks and runs",
    "tasks:write": "create and change tasks and runs",
    "health:detail": "the details of GET /health (migrations, sync lag, pool, problems)",
    "metrics:read": "GET /metrics (Prometheus)",
}

KEY_PATTERN = re.compile(r"^cesar_(?P<prefix>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_PREFIX_PATTERN = re.compile(r"^(?:cesar_)?(?P<prefix>[0-9a-f]{12})$")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The longest --expires-in accepted (a key that should never expire: leave it out).
MAX_EXPIRY = dt.timedelta(days=3660)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate() -> tuple[str, str]:
    """A new key and its public prefix (``cesar_<12 hex>``)."""
    prefix = f"cesar_{secrets.token_hex(6)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def prefix_of(key: str) -> str:
    """The public prefix of a well-formed key (``cesar_<12 hex>``)."""
    return key[:18]


def well_formed(key: str) -> bool:
    """Whether ``key`` has the shape of a key (junk is refused without a database lookup)."""
    return KEY_PATTERN.match(key) is not None


def digests_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode(), b.encode())


def parse_scopes(text: str) -> list[str]:
    scopes = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not scopes:
        raise ConfigError("--scopes is empty; give one or more of: " + ", ".join(SCOPES))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ConfigError(f"unknown scope {', '.join(unknown)}; the scopes are: "
                          + ", ".join(SCOPES))
    return scopes


def parse_duration(text: str) -> dt.timedelta:
    """``90d``, ``12h``, ``1w2d``, ``3600s``... (s, m, h, d, w)."""
    cleaned = text.strip().lower()
    if not cleaned or _DURATION_PART.sub("", cleaned) != "":
        raise ConfigError(f"--expires-in {text!r} is not a duration; write e.g. 90d, 12h, 1w2d "
                          "(units s, m, h, d, w)")
    seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION_PART.findall(cleaned))
    if seconds <= 0 or seconds > MAX_EXPIRY.total_seconds():
        raise ConfigError(f"--expires-in {text!r} must be more than 0 and at most "
                          f"{MAX_EXPIRY.days} days; leave it out for a key that does not expire")
    return dt.timedelta(seconds=seconds)


def parse_prefix(text: str) -> str:
    match = _PREFIX_PATTERN.match(text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is not a key prefix; it looks like cesar_0123456789ab "
                          "(see `cesar keys list`)")
    return f"cesar_{match['prefix']}"


def operator() -> str:
    """Who runs the command, for created_by and the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# ================================================================================ audit
def audit(conn: psycopg.Connection[Any], *, actor: str, action: str, target_type: str,
          target_id: uuid.UUID | None, detail: dict[str, Any],
          request_id: str | None = None) -> None:
    """One audit_log row (in the caller's transaction)."""
    conn.execute(
        "INSERT INTO audit_log (actor, action, target_type, target_id, request_id, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (actor, action, target_type, target_id, request_id, Jsonb(detail)),
    )


# ================================================================================ commands
@dataclass(frozen=True)
class Created:
    id: uuid.UUID
    key: str
    prefix: str
    name: str
    scopes: list[str]
    expires_at: dt.datetime | None
    created_by: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "prefix": self.prefix, "id": str(self.id), "name": self.name,
                "scopes": self.scopes, "created_by": self.created_by,
                "expires_at": self.expires_at.isoformat() if self.expires_at else None}


def create(conn: psycopg.Connection[Any], name: str, scopes: list[str],
           expires_in: dt.timedelta | None = None, actor: str | None = None) -> Created:
    """Insert a new key and its audit row in one transaction; returns the key (shown once)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ConfigError("--name must be 1 to 200 characters, e.g. --name prometheus")
    actor = actor or operator()
    key, prefix = generate()
    with conn.transaction(), conn.cursor() as cur:
        row = cur.execute(
            "INSERT INTO api_keys (name, key_prefix, key_hash, scopes, created_by, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, now() + %s) RETURNING id, expires_at",
            (name, prefix, hash_key(key), scopes, actor, expires_in),
        ).fetchone()
        assert row is not None
        key_id, expires_at = row
        audit(conn, actor=actor, action="api_key.create", target_type="api_key",
              target_id=key_id, detail={"prefix": prefix, "name": name, "scopes": scopes,
                                        "expires_at": expires_at.isoformat() if expires_at
                                        else None})
    return Created(key_id, key, prefix, name, scopes, expires_at, actor)


_LIST = (
    "SELECT k.id, k.key_prefix AS prefix, k.name, k.scopes, k.created_by, k.created_at, "
    "k.expires_at, k.revoked_at, "
    "CASE WHEN u.last_used_at IS NULL THEN k.last_used_at "
    "     WHEN k.last_used_at IS NULL THEN u.last_used_at "
    "     ELSE greatest(k.last_used_at, u.last_used_at) END AS last_used_at, "
    "CASE WHEN k.revoked_at IS NOT NULL THEN 'revoked' "
    "     WHEN k.expires_at IS NOT NULL AND k.expires_at <= now() THEN 'expired' "
    "     ELSE 'active' END AS state "
    "FROM api_keys AS k LEFT JOIN api_key_usage AS u ON u.key_id = k.id "
    "ORDER BY k.created_at, k.id"
)


def list_keys(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every key, oldest first, without its hash (let alone the key)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_LIST).fetchall()
    for row in rows:
        row["id"] = str(row["id"])
        row["scopes"] = list(row["scopes"])
        for column in ("created_at", "expires_at", "revoked_at", "last_used_at"):
            if row[column] is not None:
                row[column] = row[column].isoformat()
    return rows


@dataclass(frozen=True)
class Revoked:
    prefix: str
    id: uuid.UUID
    name: str
    revoked_at: dt.datetime
    already: bool

    def as_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "id": str(self.id), "name": self.name,
                "revoked_at": self.revoked_at.isoformat(), "already_revoked": self.already}


def revoke(conn: psycopg.Connection[Any], prefix: str, actor: str | None = None,
           *, dry_run: bool = False) -> Revoked:
    """Revoke the key with ``prefix``; idempotent (a revoked key stays revoked, unchanged)."""
    prefix = parse_prefix(prefix)
    actor = actor or operator()
    with conn.transaction(), conn.cursor() as cur:
        rows = cur.execute(
            "SELECT id, name, revoked_at FROM api_keys WHERE key_prefix = %s FOR UPDATE",
            (prefix,),
        ).fetchall()
        if not rows:
            raise OperationFailed(f"no key has the prefix {prefix}; `cesar keys list` shows them")
        if len(rows) > 1:  # 48 random bits: only a copied row could collide
            raise OperationFailed(f"{len(rows)} keys share the prefix {prefix}; revoke them by "
                                  "id in SQL (UPDATE api_keys SET revoked_at = now() ...)")
        key_id, name, revoked_at = rows[0]
        if revoked_at is not None:
            return Revoked(prefix, key_id, name, revoked_at, already=True)
        if dry_run:
            return Revoked(prefix, key_id, name, dt.datetime.now(dt.UTC), already=False)
        row = cur.execute(
            "UPDATE api_keys SET revoked_at = now(), updated_at = now() WHERE id = %s "
            "RETURNING revoked_at", (key_id,),
        ).fetchone()
        assert row is not None
        audit(conn, actor=actor, action="api_key.revoke", target_type="api_key",
              target_id=key_id, detail={"prefix": prefix, "name": name})
    return Revoked(prefix, key_id, name, row[0], already=False)


# ================================================================================ lookup
@dataclass(frozen=True)
class KeyRecord:
    """What the API needs of a key; ``expires_in`` is seconds left as of the database's clock
    at lookup (None: no expiry), so the API host's own clock does not matter."""

    id: uuid.UUID
    prefix: str
    name: str
    key_hash: str
    scopes: frozenset[str]
    revoked: bool
    expires_in: float | None


_LOOKUP = ("SELECT id, key_prefix, name, key_hash, scopes, revoked_at IS NOT NULL, "
           "extract(epoch FROM (expires_at - now())) FROM api_keys WHERE key_hash = %s "
           "ORDER BY revoked_at IS NULL LIMIT 1")


#: The lookup's statement, for callers with their own (async) connection.
LOOKUP = _LOOKUP


def lookup(conn: psycopg.Connection[Any], key_hash: str) -> KeyRecord | None:
    """The key whose hash is ``key_hash`` (a revoked duplicate first: revocation wins)."""
    row = conn.execute(_LOOKUP, (key_hash,)).fetchone()
    return None if row is None else record_of(row)


def record_of(row: Sequence[Any]) -> KeyRecord:
    """A :data:`LOOKUP` row as a record."""
    key_id, prefix, name, stored, scopes, revoked, left = row
    return KeyRecord(key_id, prefix, name, stored, frozenset(scopes), bool(revoked),
                     None if left is None else float(left))


def record_usage(conn: psycopg.Connection[Any], key_ids: list[uuid.UUID]) -> None:
    """Set the last use of ``key_ids`` to now, in one transaction (the API's batched write)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO api_key_usage (key_id, last_used_at) VALUES (%s, now()) "
            "ON CONFLICT (key_id) DO UPDATE SET last_used_at = excluded.last_used_at",
            [(key_id,) for key_id in sorted(key_ids)],
        )
