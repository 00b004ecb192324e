"""Where the application's database credential lives, for password rotation.

The *primary* store is the one the application reads its credential from and the one that holds
a rotation's new credential as *pending* before the database is touched:

- ``EmbeddedStore``: the embedded stack's ``.cesar/stack.json`` (development default);
- ``EnvFileStore``: ``.env.cockroach`` (an operator's machine; ``COCKROACH_DB_URL``).

*Secondary* stores only receive the new credential when a rotation finishes:

- ``AnsibleVaultStore``: the inventory's vault file, re-encrypted with ``ansible-vault``, then
  rolled out to the hosts by the playbook (rolling, waiting for ``/health``);
- ``PulumiStore``: the stack secret, so the next ``pulumi up`` does not revert the password.

Every write is atomic (temporary file, fsync, rename) and leaves mode 0600. No password is ever
passed on a command line: child processes receive secrets on standard input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg

from cesar import db
from cesar.credentials import write_private
from cesar.db import urls
from cesar.errors import ConfigError, OperationFailed

if TYPE_CHECKING:  # the embedded stack is development's; hosts rotate through the other stores
    from cesar.dev.embedded import EmbeddedPostgres


@dataclass(frozen=True)
class Credential:
    login: str
    password: str

    def __repr__(self) -> str:  # never print the password, even by accident
        return f"Credential(login={self.login!r}, password='***')"


class PrimaryStore(Protocol):
    name: str
    source: str  # the file an operator would fix when it is stale

    def active(self) -> Credential: ...
    def pending(self) -> Credential | None: ...
    def put_pending(self, cred: Credential) -> None: ...
    def clear_pending(self) -> None: ...
    def activate(self, cred: Credential) -> None: ...
    def urls_for(self, cred: Credential) -> list[str]: ...
    def record_url(self, cred: Credential) -> str: ...
    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection]: ...


class SecondaryStore(Protocol):
    name: str

    def check(self) -> None: ...
    def activate(self, cred: Credential) -> None: ...


def _store_error(store: str, path: Path, exc: OSError) -> OperationFailed:
    return OperationFailed(
        f"cannot write the {store} store {path}: {exc.strerror or exc}; "
        "make it writable (permissions, immutable flag, full disk) and run the rotation again"
    )


# ------------------------------------------------------------------ embedded stack
class EmbeddedStore:
    """The embedded stack's stack.json; the admin is the superuser over the private socket."""

    name = "embedded"

    def __init__(self, pg: EmbeddedPostgres) -> None:
        self.pg = pg
        self.path = pg.state_file
        self.source = str(self.path)

    def _state(self):  # noqa: ANN202 - StackState
        state = self.pg.load_state()
        if state is None:
            raise ConfigError("there is no embedded stack to rotate: run `invoke up` first")
        return state

    def _save(self, state) -> None:  # noqa: ANN001
        try:
            self.pg.save_state(state)
        except OSError as exc:
            raise _store_error(self.name, self.path, exc) from None

    def active(self) -> Credential:
        state = self._state()
        return Credential(state.active_login, state.passwords[state.active_login])

    def pending(self) -> Credential | None:
        state = self._state()
        if state.pending_login and state.pending_password:
            return Credential(state.pending_login, state.pending_password)
        return None

    def put_pending(self, cred: Credential) -> None:
        state = self._state()
        state.pending_login, state.pending_password = cred.login, cred.password
        self._save(state)

    def clear_pending(self) -> None:
        state = self._state()
        state.pending_login = state.pending_password = None
        self._save(state)

    def activate(self, cred: Credential) -> None:
        state = self._state()
        state.passwords[cred.login] = cred.password
        state.active_login = cred.login
        state.pending_login = state.pending_password = None
        self._save(state)

    def urls_for(self, cred: Credential) -> list[str]:
        from cesar.dev.embedded import CLUSTER_DB, HOST, LOCAL_DB

        state = self._state()
        params = ({"sslmode": "verify-full", "sslrootcert": str(self.pg.ca_file)} if state.tls
                  else {"sslmode": "disable"})
        return [urls.build(user=cred.login, password=cred.password, host=HOST, port=state.port,
                           dbname=db, **params) for db in (LOCAL_DB, CLUSTER_DB)]

    def record_url(self, cred: Credential) -> str:
        return self.urls_for(cred)[1]  # the cluster stand-in, like COCKROACH_DB_URL

    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection]:
        from cesar.dev.embedded import CLUSTER_DB

        # On the cluster stand-in: the rotation record lives there (roles are server-wide).
        with psycopg.connect(self.pg.superuser_conninfo(CLUSTER_DB), autocommit=True) as conn:
            yield conn


# ------------------------------------------------------------------ .env.cockroach
PENDING_KEY = "CESAR_PENDING_DB_URL"
URL_KEYS = ("COCKROACH_DB_URL", "COCKROACH_READ_REPLICA_URL")


def with_credentials(url: str, cred: Credential) -> str:
    """``url`` with its user and password replaced (host, database and parameters kept)."""
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(cred.login, safe='')}:{quote(cred.password, safe='')}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_credential(url: str, variable: str) -> Credential:
    parts = urlsplit(url)
    if not parts.username or parts.password is None:
        raise ConfigError(f"{variable} has no user and password to rotate; "
                          "write it as postgresql://USER:PASSWORD@HOST:26257/DB?sslmode=verify-full")
    return Credential(unquote(parts.username), unquote(parts.password))


class EnvFileStore:
    """``.env.cockroach``: rewrites the user and password of ``COCKROACH_DB_URL`` (and of the
    read replica's URL when it uses the same login); the admin URL is ``CESAR_ADMIN_DB_URL``."""

    name = "env-file"

    def __init__(self, path: Path, admin_url: str | None) -> None:
        self.path = path
        self.source = str(path)
        self.admin_url = admin_url

    def _read(self) -> tuple[list[str], dict[str, str]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            raise ConfigError(f"{self.path} does not exist; write COCKROACH_DB_URL there first") \
                from None
        values = {}
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[key.strip()] = value.strip().strip("'\"")
        return lines, values

    def _write(self, updates: dict[str, str | None]) -> None:
        lines, _ = self._read()
        out, seen = [], set()
        for line in lines:
            key = line.partition("=")[0].strip()
            if key in updates and not line.lstrip().startswith("#"):
                seen.add(key)
                if updates[key] is not None:
                    out.append(f"{key}={updates[key]}")
                continue
            out.append(line)
        out += [f"{k}={v}" for k, v in updates.items() if k not in seen and v is not None]
        try:
            write_private(self.path, "\n".join(out) + "\n")
        except OSError as exc:
            raise _store_error(self.name, self.path, exc) from None

    def _url(self) -> str:
        url = self._read()[1].get("COCKROACH_DB_URL")
        if not url:
            raise ConfigError(f"{self.path} has no COCKROACH_DB_URL to rotate")
        return url

    def active(self) -> Credential:
        return url_credential(self._url(), "COCKROACH_DB_URL")

    def pending(self) -> Credential | None:
        url = self._read()[1].get(PENDING_KEY)
        return url_credential(url, PENDING_KEY) if url else None

    def put_pending(self, cred: Credential) -> None:
        self._write({PENDING_KEY: with_credentials(self._url(), cred)})

    def clear_pending(self) -> None:
        self._write({PENDING_KEY: None})

    def activate(self, cred: Credential) -> None:
        _, values = self._read()
        old = self.active()
        updates: dict[str, str | None] = {PENDING_KEY: None}
        for key in URL_KEYS:
            url = values.get(key)
            if url and url_credential(url, key).login == old.login:
                updates[key] = with_credentials(url, cred)
        self._write(updates)

    def urls_for(self, cred: Credential) -> list[str]:
        values = self._read()[1]
        return [with_credentials(values[k], cred) for k in URL_KEYS if values.get(k)]

    def record_url(self, cred: Credential) -> str:
        return with_credentials(self._url(), cred)

    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection]:
        if not self.admin_url:
            raise ConfigError(
                "CESAR_ADMIN_DB_URL is not set: rotation needs a role allowed to ALTER ROLE the "
                "application logins (CockroachDB: admin; PostgreSQL: CREATEROLE with ADMIN "
                "OPTION); put it in .env.cockroach"
            )
        admin = db.Endpoint("cluster", self.admin_url, "CESAR_ADMIN_DB_URL")
        conn = db.dial(admin, describe=f"cannot connect with CESAR_ADMIN_DB_URL {admin.masked}",
                       autocommit=True, connect_timeout=10)
        with conn:
            yield conn


# ------------------------------------------------------------------ Ansible Vault
class AnsibleVaultStore:
    """The hosts' credential in an Ansible Vault file, then a rolling restart by the playbook
    (``cesar.deploy``: one host at a time, each waiting for ``/health`` before the next)."""

    name = "ansible-vault"

    def __init__(self, vault_file: Path, vault_password_file: Path, *, inventory: Path,
                 environment: str, ansible_dir: Path | None = None,
                 login_var: str = "vault_cesar_db_login",
                 password_var: str = "vault_cesar_db_password", rollout: bool = True,
                 extra_vars: tuple[str, ...] = ()) -> None:
        self.vault_file = vault_file
        self.vault_password_file = vault_password_file
        self.inventory = inventory
        self.environment = environment
        self.ansible_dir = ansible_dir
        self.login_var, self.password_var = login_var, password_var
        self.rollout = rollout
        self.extra_vars = extra_vars

    def _vault(self) -> str:
        path = shutil.which("ansible-vault")
        if path is None:
            raise ConfigError("the ansible-vault store needs `ansible-vault`: run `uv sync`")
        return path

    def check(self) -> None:
        self._vault()
        for path, what in ((self.vault_file, "vault file"),
                           (self.vault_password_file, "vault password file"),
                           (self.inventory, "inventory")):
            if not path.exists():
                raise ConfigError(f"the ansible-vault store's {what} {path} does not exist")
        self._view()  # decrypts, so a wrong vault password fails before anything changes

    def _vault_run(self, args: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run([self._vault(), *args, "--vault-password-file",
                               str(self.vault_password_file)], input=stdin,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise OperationFailed(f"ansible-vault {args[0]} {self.vault_file} failed: {tail[0]}")
        return proc.stdout

    def _view(self) -> str:
        return self._vault_run(["view", str(self.vault_file)])

    def activate(self, cred: Credential) -> None:
        import yaml

        from cesar import deploy

        data = yaml.safe_load(self._view()) or {}
        data[self.login_var], data[self.password_var] = cred.login, cred.password
        encrypted = self._vault_run(["encrypt", "--output", "-", "-"],
                                    stdin=yaml.safe_dump(data, default_flow_style=False))
        try:
            write_private(self.vault_file, encrypted)
        except OSError as exc:
            raise _store_error(self.name, self.vault_file, exc) from None
        if self.rollout:
            kwargs = {"ansible_dir": self.ansible_dir} if self.ansible_dir else {}
            plan = deploy.plan(self.environment, inventory=self.inventory,
                               vault_password_file=str(self.vault_password_file),
                               extra_vars=self.extra_vars, **kwargs)
            deploy.require_success(*deploy.run(plan))


# ------------------------------------------------------------------ Pulumi
class PulumiStore:
    """The stack's secret config, so that the next ``pulumi up`` keeps the rotated password."""

    name = "pulumi"

    def __init__(self, stack: str, project_dir: Path, *,
                 key_for_login: dict[str, str] | None = None) -> None:
        self.stack = stack
        self.project_dir = project_dir
        self.key_for_login = key_for_login or {
            "cesar_app_a": "cesarAppAPassword", "cesar_app_b": "cesarAppBPassword"}

    def check(self) -> None:
        if shutil.which("pulumi") is None:
            raise ConfigError(
                "the pulumi store needs the Pulumi CLI (https://www.pulumi.com/docs/install/); "
                "install it, or leave this store out with --skip-store pulumi")

    def activate(self, cred: Credential) -> None:
        key = self.key_for_login.get(cred.login)
        if key is None:
            raise ConfigError(f"no Pulumi config key is known for login {cred.login}")
        for args, stdin in (
            (["config", "set", "--secret", key], cred.password),  # value on stdin, not argv
            (["config", "set", "activeLogin", cred.login], None),
        ):
            proc = subprocess.run(["pulumi", *args, "--stack", self.stack], input=stdin,
                                  capture_output=True, text=True, cwd=self.project_dir,
                                  timeout=120)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                raise OperationFailed(f"pulumi config set {key} failed: {tail[0]}")


def env_file_mode_ok(path: Path) -> bool:
    """Whether a secret file is private to its owner (no group/other bits)."""
    try:
        return (os.stat(path).st_mode & 0o077) == 0
    except OSError:
        return False
