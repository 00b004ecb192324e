"""The operator path: `.env.cockroach` with a verify-full URL, an admin that is not a superuser,
and the Ansible Vault store re-encrypted for real."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import yaml
from psycopg import sql

from cesar import migrate
from cesar.errors import ConfigError
from cesar.rotate import Rotator
from cesar.rotate.stores import AnsibleVaultStore, EnvFileStore, url_credential
from tests.helpers import REPO, PgStack, make_settings, require

ROTATOR = "cesar_rotator"


def _reset_logins(tls_stack: PgStack) -> None:
    """Give both logins back the passwords the session's stack knows (other tests use them)."""
    with tls_stack.superuser() as su:
        for login in ("cesar_app_a", "cesar_app_b"):
            su.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(login), sql.Literal(tls_stack.state.passwords[login])))


@pytest.fixture
def cluster_db(tls_stack: PgStack) -> Iterator[str]:
    """A fresh database with every migration (the rotation record among them), on the TLS
    server: its verify-full URL for the active login."""
    name = f"rot_{uuid.uuid4().hex[:10]}"
    tls_stack.create_database(name)
    url = tls_stack.cluster_url.replace("/cesar_cluster?", f"/{name}?", 1)
    migrate.apply_all(url, make_settings(), migrations_dir=REPO / "sql" / "migrations")
    try:
        yield url
    finally:
        tls_stack.drop_database(name)


@pytest.fixture
def operator_dir(tls_stack: PgStack, cluster_db: str, tmp_path: Path) -> Iterator[Path]:
    """A working directory holding .env.cockroach for ENVIRONMENT=staging, like an operator's."""
    admin_password = "admin-" + os.urandom(8).hex()
    with tls_stack.superuser() as su:
        su.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROTATOR)))
        su.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
            sql.Identifier(ROTATOR), sql.Literal(admin_password)))
        for login in ("cesar_app_a", "cesar_app_b"):
            su.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(login), sql.Identifier(ROTATOR)))
    _reset_logins(tls_stack)
    admin_url = (cluster_db.replace("cesar_app_a", ROTATOR)
                 .replace(tls_stack.state.passwords["cesar_app_a"], admin_password))
    (tmp_path / ".env.cockroach").write_text(
        "# operator's secrets\n"
        "ENVIRONMENT=staging\n"
        f"COCKROACH_DB_URL={cluster_db}\n"
        f"CESAR_ADMIN_DB_URL={admin_url}\n")
    (tmp_path / ".env.cockroach").chmod(0o600)
    try:
        yield tmp_path
    finally:
        _reset_logins(tls_stack)


def run(cwd: Path, *args: str, extra: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CESAR_", "COCKROACH_"))}
    env.pop("ENVIRONMENT", None)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return subprocess.run([sys.executable, "-m", "cesar.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def encrypted_vault(tmp_path: Path, login: str = "cesar_app_a") -> tuple[Path, Path]:
    """A real Ansible Vault file (and its password file), as the staging inventory keeps it."""
    require(Path(sys.executable).with_name("ansible-vault").exists(),
            "ansible-vault (ansible-core, installed by `uv sync`)")
    vault_bin = str(Path(sys.executable).with_name("ansible-vault"))
    password_file = tmp_path / "vault-pass"
    password_file.write_text(os.urandom(16).hex())
    vault = tmp_path / "vault.yml"
    vault.write_text(yaml.safe_dump({"vault_cesar_db_login": login,
                                     "vault_cesar_db_password": "old", "other": "kept"}))
    subprocess.run([vault_bin, "encrypt", str(vault), "--vault-password-file",
                    str(password_file)], check=True, capture_output=True)
    return vault, password_file


def test_staging_rotation_rewrites_env_file(operator_dir: Path, tmp_path: Path) -> None:
    env_file = operator_dir / ".env.cockroach"
    old = url_credential(
        next(line.split("=", 1)[1] for line in env_file.read_text().splitlines()
             if line.startswith("COCKROACH_DB_URL=")), "COCKROACH_DB_URL")
    vault, password_file = encrypted_vault(tmp_path)
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    # The hosts' store is part of every staging rotation; its rollout is the host tier's test.
    rotator = Rotator(EnvFileStore(env_file, _admin_url(operator_dir)),
                      [AnsibleVaultStore(vault, password_file, inventory=vault,
                                         environment="staging", rollout=False)],
                      state_dir=tmp_path / "state", environment="staging", grace_seconds=0)
    assert rotator.run().retired
    text = env_file.read_text()
    assert text.startswith("# operator's secrets\nENVIRONMENT=staging\n")  # the rest is kept
    assert (env_file.stat().st_mode & 0o777) == 0o600
    url = next(line.split("=", 1)[1] for line in text.splitlines()
               if line.startswith("COCKROACH_DB_URL="))
    new = url_credential(url, "COCKROACH_DB_URL")
    assert new.login == "cesar_app_b" and new.password != old.password
    assert "sslmode=verify-full" in url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT session_user").fetchone() == ("cesar_app_b",)
        assert conn.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url.replace("cesar_app_b", "cesar_app_a").replace(
            new.password, old.password))
    assert "CESAR_PENDING_DB_URL" not in text


def test_staging_needs_the_pulumi_cli_or_an_explicit_skip(operator_dir: Path,
                                                          tmp_path: Path) -> None:
    vault, password_file = encrypted_vault(tmp_path)
    inventory = operator_dir / "ansible" / "inventories" / "staging" / "hosts.yml"
    inventory.parent.mkdir(parents=True)
    inventory.write_text("all: {}\n")
    proc = run(operator_dir, "rotate-password", extra={
        "CESAR_VAULT_FILE": str(vault), "CESAR_VAULT_PASSWORD_FILE": str(password_file),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    if proc.returncode == 0:
        pytest.fail("rotation ran although the Pulumi store cannot be written")
    assert proc.returncode == 2
    assert "needs the Pulumi CLI" in proc.stderr and "--skip-store pulumi" in proc.stderr
    assert "CESAR_PENDING_DB_URL" not in (operator_dir / ".env.cockroach").read_text()


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_skipping_the_hosts_vault_is_refused(operator_dir: Path, environment: str) -> None:
    """The hosts read their credential from the vault only: a rotation without it would
    switch everything else, then retire the login the hosts still use."""
    env_file = operator_dir / ".env.cockroach"
    env_file.write_text(env_file.read_text().replace("ENVIRONMENT=staging",
                                                     f"ENVIRONMENT={environment}"))
    before = env_file.read_text()
    proc = run(operator_dir, "rotate-password", "--skip-store", "ansible-vault",
               "--skip-store", "pulumi")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"cesar: error: --skip-store ansible-vault is refused in {environment}")
    assert "CESAR_VAULT_PASSWORD_FILE" in line
    assert env_file.read_text() == before  # nothing pending, nothing switched
    with psycopg.connect(_url(operator_dir)) as conn:
        assert conn.execute("SELECT session_user").fetchone() == ("cesar_app_a",)


def test_ansible_vault_store_is_re_encrypted(operator_dir: Path, tmp_path: Path) -> None:
    vault, password_file = encrypted_vault(tmp_path)
    vault_bin = str(Path(sys.executable).with_name("ansible-vault"))
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    store = AnsibleVaultStore(vault, password_file, inventory=vault, environment="staging",
                              rollout=False)
    primary = EnvFileStore(operator_dir / ".env.cockroach", _admin_url(operator_dir))
    rotator = Rotator(primary, [store], state_dir=tmp_path / "state", environment="staging",
                      grace_seconds=0)
    report = rotator.run()
    assert report.retired
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    plain = yaml.safe_load(subprocess.run(
        [vault_bin, "view", str(vault), "--vault-password-file", str(password_file)],
        check=True, capture_output=True, text=True).stdout)
    assert plain["vault_cesar_db_login"] == "cesar_app_b"
    assert plain["vault_cesar_db_password"] == primary.active().password
    assert plain["other"] == "kept"
    audit = (tmp_path / "state" / "rotation-audit.jsonl").read_text()
    assert primary.active().password not in audit


def _url(operator_dir: Path) -> str:
    for line in (operator_dir / ".env.cockroach").read_text().splitlines():
        if line.startswith("COCKROACH_DB_URL="):
            return line.split("=", 1)[1]
    raise AssertionError("no URL")


def _admin_url(operator_dir: Path) -> str:
    for line in (operator_dir / ".env.cockroach").read_text().splitlines():
        if line.startswith("CESAR_ADMIN_DB_URL="):
            return line.split("=", 1)[1]
    raise AssertionError("no admin URL")


def test_a_database_without_the_rotation_record_is_refused(tls_stack: PgStack,
                                                           tmp_path: Path) -> None:
    """Before migration 014 there is nowhere to record the active login: the run stops in one
    line naming the command, before anything changes."""
    name = f"bare_{uuid.uuid4().hex[:10]}"
    tls_stack.create_database(name)
    try:
        url = tls_stack.cluster_url.replace("/cesar_cluster?", f"/{name}?", 1)
        state = tls_stack.pg.load_state()
        assert state is not None
        admin = (f"postgresql://postgres@/{name}?host={quote(state.socket_dir, safe='')}"
                 f"&port={state.port}")
        env_file = tmp_path / ".env.cockroach"
        env_file.write_text(f"COCKROACH_DB_URL={url}\nCESAR_ADMIN_DB_URL={admin}\n")
        before = env_file.read_text()
        proc = run(tmp_path, "rotate-password", "--grace", "0")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("cesar: error: the database has no credential_rotation table")
        assert "cesar migrate up" in line
        assert env_file.read_text() == before
    finally:
        _reset_logins(tls_stack)
        tls_stack.drop_database(name)
def _env_value(operator_dir: Path, key: str) -> str:
    for line in (operator_dir / ".env.cockroach").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no {key}")


@pytest.mark.parametrize(("key", "tail"), [
    ("COCKROACH_READ_REPLICA_URL", "sslmode=require"),  # not checked by anything before
    ("COCKROACH_DB_URL", "sslmode=verify-full&sslmode=disable"),  # libpq takes the last one
])
def test_an_application_url_without_verify_full_stops_the_rotation_before_any_change(
        operator_dir: Path, tmp_path: Path, key: str, tail: str) -> None:
    # The server accepts this very URL (it is the stack's own, TLS optional), so only the
    # policy can stop the rotation; nothing may have been written or changed by then.
    good = _env_value(operator_dir, "COCKROACH_DB_URL")
    bad = good.split("?", 1)[0] + "?" + tail
    with psycopg.connect(bad) as conn:
        conn.execute("SELECT 1")
    env_file = operator_dir / ".env.cockroach"
    if key == "COCKROACH_DB_URL":
        env_file.write_text(env_file.read_text().replace(good, bad))
    else:
        env_file.write_text(env_file.read_text() + f"{key}={bad}\n")
    before = env_file.read_text()
    primary = EnvFileStore(env_file, _admin_url(operator_dir))
    rotator = Rotator(primary, [], state_dir=tmp_path / "state", environment="production",
                      grace_seconds=0)
    with pytest.raises(ConfigError, match="env-file store has sslmode=(require|disable); "
                                          "ENVIRONMENT=production requires sslmode=verify-full"):
        rotator.run()
    assert env_file.read_text() == before
    assert not rotator.load().in_progress
    with psycopg.connect(good) as conn:  # the active login still has its password
        assert conn.execute("SELECT session_user").fetchone() == ("cesar_app_a",)


def test_the_rotation_applies_the_tls_rule_not_a_substring(operator_dir: Path,
                                                           tmp_path: Path) -> None:
    # The URL contains "sslmode=verify-full", but libpq reads the last sslmode: disable.
    env_file = operator_dir / ".env.cockroach"
    good = _env_value(operator_dir, "COCKROACH_DB_URL")
    env_file.write_text(env_file.read_text().replace(
        good, good.split("?", 1)[0] + "?sslmode=verify-full&sslmode=disable"))
    primary = EnvFileStore(env_file, _admin_url(operator_dir))
    rotator = Rotator(primary, [], state_dir=tmp_path / "state", environment="staging",
                      grace_seconds=0)
    with pytest.raises(ConfigError, match="^the application URL in the env-file store "
                                          "has sslmode=disable; ENVIRONMENT=staging"):
        rotator.run()
