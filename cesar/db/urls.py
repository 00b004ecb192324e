"""Connection URLs: parsing, building and masking (never print a password)."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg.conninfo

from cesar.console import first_line
from cesar.errors import ConfigError


def parse(url: str, variable: str) -> dict[str, str]:
    """Return the URL's connection parameters, or raise ConfigError naming ``variable``."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{variable} is not a postgresql:// URL; "
            "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=..."
        )
    try:
        return psycopg.conninfo.conninfo_to_dict(url)  # type: ignore[return-value]
    except psycopg.ProgrammingError as exc:
        # libpq quotes the part it could not read, which may be the password: hidden.
        reason = re.sub(r'"[^"]*"', '"..."', first_line(exc))
        raise ConfigError(
            f"{variable} cannot be parsed ({reason}); check its syntax, and percent-encode "
            "reserved characters in the password"
        ) from None


def build(
    *, user: str, password: str, host: str, port: int, dbname: str, **params: str
) -> str:
    """A postgresql:// URL with the password percent-encoded."""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"
    query = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in params.items())
    return urlunsplit(("postgresql", netloc, "/" + dbname, query, ""))


def mask(url: str | None) -> str | None:
    """The URL with its password replaced by ``***`` (also a ``password=`` query parameter)."""
    if url is None:
        return None
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = "&".join(
        "password=***" if q.lower().startswith("password=") else q
        for q in parts.query.split("&")
        if q
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))



def same_target(a: str, b: str) -> bool:
    """Whether two URLs name the same server and database, only the login (user, password)
    differing: what a credential reload may change. A URL without a database names the
    user's own (libpq's default), so a new user there is another database: not the same."""

    def where(url: str) -> dict[str, str]:
        parts = {k: v for k, v in psycopg.conninfo.conninfo_to_dict(url).items()
                 if v is not None}
        parts["dbname"] = parts.get("dbname") or parts.get("user") or ""
        return {k: v for k, v in parts.items() if k not in ("user", "password")}

    try:
        return where(a) == where(b)
    except psycopg.ProgrammingError:
        return False
