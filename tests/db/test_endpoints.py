"""One way to name a database and one way to connect to it, for every command.

A ``--url`` flag is checked the same way wherever it appears (a bad URL names the flag; outside
development it must be ``verify-full``), and every direct connection fails with one line naming
where the URL came from while keeping the driver's exception as its cause."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cesar import db
from cesar.backup.settings import Server
from cesar.db.sockets import free_port
from cesar.errors import OperationFailed
from cesar.rotate.stores import EnvFileStore
from cesar.sync import run as sync_run
from cesar.sync.tables import load_sync_settings
from tests.helpers import CliResult, PgStack, make_settings, run_in_process

#: Every command that takes ``--url`` for the database it works on.
URL_COMMANDS = [("keys", "list"), ("dispatch", "--dry-run"), ("events", "status"),
                ("migrate", "status"), ("doctor",)]


@pytest.fixture
def cesar(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Callable[..., CliResult]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CESAR_STATE_DIR", str(tmp_path / "state"))
    return lambda *args: run_in_process(capsys, args)


@pytest.mark.parametrize("command", URL_COMMANDS, ids=" ".join)
def test_a_url_flag_that_is_not_a_postgresql_url_is_named(
        cesar: Callable[..., CliResult], command: tuple[str, ...]) -> None:
    result = cesar(*command, "--url", "mysql://app:s3cret@db.example/cesar")
    assert result.code == 2, result
    assert result.err.splitlines() == [
        "cesar: error: --url is not a postgresql:// URL; "
        "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=..."], result.err


@pytest.mark.parametrize("command", URL_COMMANDS, ids=" ".join)
def test_outside_development_every_url_flag_must_be_verify_full(
        cesar: Callable[..., CliResult], fresh_db: str, monkeypatch: pytest.MonkeyPatch,
        command: tuple[str, ...]) -> None:
    """A reachable database without TLS: a flag's URL is refused before any connection, like a
    variable's would be."""
    monkeypatch.setenv("ENVIRONMENT", "staging")
    result = cesar(*command, "--url", fresh_db)
    assert result.code == 2, result
    [line] = result.err.splitlines()
    assert line.startswith("cesar: error: --url has sslmode=disable; ENVIRONMENT=staging "
                           "requires sslmode=verify-full"), line


def _closed_port_url() -> str:
    return f"postgresql://app:s3cret@127.0.0.1:{free_port()}/cesar?sslmode=disable"


def test_a_failed_connection_names_its_source_and_keeps_the_driver_error(tmp_path: Path) -> None:
    endpoint = db.Endpoint("cluster", _closed_port_url(), "COCKROACH_DB_URL")
    with pytest.raises(OperationFailed) as caught:
        db.connect(endpoint, make_settings(state_dir=tmp_path, connect_timeout=2))
    message = str(caught.value)
    assert message.startswith(f"cannot connect to the cluster database {endpoint.masked} "
                              "(COCKROACH_DB_URL): "), message
    assert "s3cret" not in message and "\n" not in message
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_the_sync_still_tells_a_refused_login(pg_stack: PgStack, tmp_path: Path) -> None:
    password = pg_stack.state.passwords["cesar_app_a"]
    wrong = pg_stack.local_url.replace(password, "not-the-password")
    endpoint = db.Endpoint("local", wrong, "LOCAL_DB_URL")
    settings = make_settings(state_dir=tmp_path)
    with pytest.raises(sync_run.CredentialRefused) as caught:
        sync_run.connect(endpoint, settings, load_sync_settings())
    assert str(caught.value).startswith(
        f"cannot connect to the local database {endpoint.masked} (LOCAL_DB_URL): ")
    assert "password authentication failed" in str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    # A server that is down is not a refused login.
    down = db.Endpoint("local", _closed_port_url(), "LOCAL_DB_URL")
    with pytest.raises(OperationFailed) as other:
        sync_run.connect(down, settings, load_sync_settings())
    assert not isinstance(other.value, sync_run.CredentialRefused)


def test_the_backup_server_and_the_rotation_admin_keep_their_own_words(tmp_path: Path) -> None:
    server = Server(host="127.0.0.1", port=free_port(), user="postgres", bindir=tmp_path,
                    repo=tmp_path, database="cesar_local", app_url=None, owner=None)
    with pytest.raises(OperationFailed) as caught:
        server.connect()
    message = str(caught.value)
    assert message.startswith(f"cannot reach the PostgreSQL server at 127.0.0.1:{server.port} "
                              "as postgres: "), message
    assert message.endswith(" (is it running? `invoke up` for the embedded stack)"), message
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)

    env = tmp_path / "app.env"
    admin_url = _closed_port_url()
    env.write_text(f"CESAR_ADMIN_DB_URL={admin_url}\n")
    store = EnvFileStore(env, admin_url=admin_url)
    with pytest.raises(OperationFailed) as admin, store.admin():
        pass
    assert str(admin.value).startswith(
        f"cannot connect with CESAR_ADMIN_DB_URL {db.Endpoint('cluster', admin_url, '').masked}: ")
    assert "s3cret" not in str(admin.value)
    assert isinstance(admin.value.__cause__, psycopg.OperationalError)
