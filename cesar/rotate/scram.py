"""SCRAM-SHA-256 password verifiers (RFC 5802 / RFC 7677), computed on this side.

``ALTER ROLE ... WITH PASSWORD 'SCRAM-SHA-256$...'`` stores the verifier as given: PostgreSQL
(10+) and CockroachDB (22.2+, ``server.user_login.store_client_pre_hashed_passwords.enabled``,
on by default) both accept a pre-hashed SCRAM secret, so the plaintext never reaches the
server, its statement logs or its query statistics.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata

DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default; CockroachDB's cost 10610
PREFIX = "SCRAM-SHA-256$"


def _saslprep(password: str) -> bytes:
    # Full SASLprep (RFC 4013) also maps and prohibits some characters; PostgreSQL falls back to
    # the raw bytes when a password is not valid SASLprep input. Our generated passwords are
    # URL-safe ASCII, for which NFKC normalisation is the identity.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def verifier(password: str, *, salt: bytes | None = None,
             iterations: int = DEFAULT_ITERATIONS) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, PostgreSQL's format."""
    if iterations < 4096:
        raise ValueError("SCRAM iterations below 4096 are refused by RFC 7677")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{PREFIX}{iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def matches(password: str, stored: str) -> bool:
    """Whether ``password`` produces the ``stored`` verifier (same salt and iterations)."""
    try:
        head, keys = stored[len(PREFIX):].split("$", 1)
        iterations, salt_b64 = head.split(":", 1)
        expected = verifier(password, salt=base64.b64decode(salt_b64),
                            iterations=int(iterations))
    except (ValueError, IndexError):
        return False
    return stored.startswith(PREFIX) and hmac.compare_digest(expected, stored)
