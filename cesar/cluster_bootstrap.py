"""The SQL that prepares a CockroachDB cluster for the application, idempotently.

Run once after ``pulumi up`` creates a cluster, and again whenever its inputs change (a new
allowlist, a password set by rotation, a region added): every statement converges, none fails
on a second run. It makes

- the database, owned by the group role ``cesar_app`` that holds every grant;
- the two alternating logins ``cesar_app_a`` and ``cesar_app_b``, members of ``cesar_app``, each
  with its password (rotation changes one while the other serves), and default privileges so
  that what one login creates the other can use: privileges never drift apart. A password is
  set by ``ALTER ROLE ... WITH PASSWORD 'SCRAM-SHA-256$...'``, a statement on its own carrying
  a verifier computed here, so the script (and the server's logs) never hold the plaintext;
  with a stable salt per login, the script does not change between runs;
- on a self-hosted cluster, the host-based authentication setting built from the allowlist;
- with ``audit``: authentication logging (every connection attempt and session, on the
  ``SESSIONS`` channel) and the SQL audit of the sensitive tables (``api_keys``,
  ``audit_log``: every read and write, on the ``SENSITIVE_ACCESS`` channel); see
  :data:`AUDIT_SETTINGS` and :data:`AUDITED_TABLES`;
- with several regions, the database's primary and other regions (the table-level
  ``REGIONAL BY ROW`` step belongs to the migration runner, see docs/infra.md).

CockroachDB syntax (``IF NOT EXISTS`` forms, cluster settings, regions): PostgreSQL does not
accept this script, so the tests check its shape and quoting; see docs/infra.md for what was
verified where. The embedded PostgreSQL stack creates the same roles in ``cesar.dev.embedded``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cesar.credentials import APP_ROLE, LOGINS
from cesar.errors import ConfigError
from cesar.rotate import scram

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HBA_SETTING = "server.host_based_authentication.configuration"
LICENSE_SETTING = "enterprise.license"
# Authentication logging, both present since CockroachDB v20.1 (far below the pinned release).
AUDIT_SETTINGS = ("server.auth_log.sql_connections.enabled",
                  "server.auth_log.sql_sessions.enabled")
# `ALTER TABLE IF EXISTS t EXPERIMENTAL_AUDIT SET READ WRITE`: the syntax is unchanged from v2.0
# through v26.1; IF EXISTS, because on a new cluster the bootstrap runs before the migrations
# create the tables (the next bootstrap run, after `invoke migrate`, turns the audit on).
AUDITED_TABLES = ("api_keys", "audit_log")
REDACTED = "<redacted>"


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier; only plain lowercase names are accepted."""
    if not _IDENT.match(name):
        raise ConfigError(f"{name!r} is not a plain SQL name; use lowercase letters, digits "
                          "and '_' (starting with a letter)")
    return f'"{name}"'


def quote_literal(value: str) -> str:
    """A standard SQL string literal (quotes doubled; backslashes are literal)."""
    if "\x00" in value:
        raise ConfigError("a SQL string cannot contain a NUL character")
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Bootstrap:
    """What the script sets up. ``passwords`` maps each login to its password."""

    database: str
    passwords: Mapping[str, str]
    hba: str | None = None
    regions: Sequence[str] = field(default_factory=tuple)
    app_role: str = APP_ROLE
    logins: Sequence[str] = LOGINS
    #: False on an insecure (development-only) cluster, which refuses passwords.
    set_passwords: bool = True
    #: The SCRAM salt of each login's verifier (16 random bytes kept in Pulumi state, so the
    #: script is the same on every run); a login without one gets a fresh salt.
    salts: Mapping[str, bytes] = field(default_factory=dict)
    #: Authentication logging and the audit of the sensitive tables (self-hosted, Advanced).
    audit: bool = False
    #: The enterprise license key (self-hosted clusters of several nodes need one from v24.3;
    #: Cloud clusters have their own). Secret: redacted like the passwords.
    license: str | None = None

    def __post_init__(self) -> None:
        missing = [login for login in self.logins if not self.passwords.get(login)]
        if self.set_passwords and missing:
            raise ConfigError(f"no password for login(s) {', '.join(missing)}; set them as stack "
                              "secrets or let the program generate them")
        for region in self.regions:
            if not _REGION.match(region):
                raise ConfigError(f"region {region!r} is not a valid region name")
        if len(set(self.regions)) != len(self.regions):
            raise ConfigError(f"regions {list(self.regions)} list a region twice")


def statements(spec: Bootstrap, *, redact: bool = False) -> list[str]:
    """The script's statements, in order. ``redact`` replaces passwords (for printing)."""
    db, role = quote_ident(spec.database), quote_ident(spec.app_role)
    out: list[str] = []
    if spec.license:
        key = REDACTED if redact else spec.license
        out.append(f"SET CLUSTER SETTING {LICENSE_SETTING} = {quote_literal(key)}")
    if spec.hba is not None:
        out.append(f"SET CLUSTER SETTING {HBA_SETTING} = {quote_literal(spec.hba)}")
    out += [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE ROLE IF NOT EXISTS {role}",  # CREATE ROLE implies NOLOGIN
        f"ALTER ROLE {role} WITH NOLOGIN",
        f"ALTER DATABASE {db} OWNER TO {role}",
        f"GRANT ALL ON DATABASE {db} TO {role}",
    ]
    for login in spec.logins:
        user = quote_ident(login)
        out.append(f"CREATE USER IF NOT EXISTS {user}")
        out.append(f"ALTER ROLE {user} WITH LOGIN")
        if spec.set_passwords:
            verifier = REDACTED if redact else scram.verifier(
                spec.passwords[login], salt=spec.salts.get(login))
            out.append(f"ALTER ROLE {user} WITH PASSWORD {quote_literal(verifier)}")
        out.append(f"GRANT {role} TO {user}")
    out.append(f"USE {db}")
    if spec.audit:
        out += [f"SET CLUSTER SETTING {name} = true" for name in AUDIT_SETTINGS]
        out += [f"ALTER TABLE IF EXISTS {quote_ident(table)} EXPERIMENTAL_AUDIT SET READ WRITE"
                for table in AUDITED_TABLES]
    for login in spec.logins:
        for kind in ("TABLES", "SEQUENCES", "TYPES", "SCHEMAS"):
            out.append(f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(login)} "
                       f"GRANT ALL ON {kind} TO {role}")
    if spec.regions:
        primary, *others = spec.regions
        out.append(f"ALTER DATABASE {db} SET PRIMARY REGION {quote_ident_region(primary)}")
        for region in others:
            out.append(f"ALTER DATABASE {db} ADD REGION IF NOT EXISTS {quote_ident_region(region)}")
    return out


def quote_ident_region(region: str) -> str:
    """Region names contain '-', so they are always double-quoted."""
    if not _REGION.match(region):
        raise ConfigError(f"region {region!r} is not a valid region name")
    return f'"{region}"'


def script(spec: Bootstrap, *, redact: bool = False) -> str:
    """The whole script for ``cockroach sql --file``: one statement per line, each ended."""
    header = ("-- Generated by cesar.cluster_bootstrap: idempotent, run as an admin user.\n"
              "-- Contains SCRAM verifiers, never a password: still kept secret (Pulumi "
              "state, encrypted) since a verifier can be attacked offline.\n")
    return header + "".join(f"{stmt};\n" for stmt in statements(spec, redact=redact))
