"""Password rotation against the embedded stack with the API serving requests throughout.

The API runs as `invoke up` starts it (a separate process reading its credentials from the
stack's files) with a pool whose connections live one second, so it keeps opening new
connections: if a rotation ever left it without a valid credential, requests would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from cesar.dev.embedded import LOGINS, EmbeddedPostgres, free_port
from tests.helpers import REPO, new_state_dir, require


def cesar(env: dict[str, str], *args: str, extra: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cesar.cli", *args], cwd=REPO,
                          env={**env, **(extra or {})}, capture_output=True, text=True,
                          timeout=timeout)


#: The API key the load sends (made by the stack fixture: the API needs one).
LOAD_HEADERS: dict[str, str] = {}


@dataclass
class Load:
    """GET /agents in a loop (each request touches the database) until stopped."""

    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5, headers=LOAD_HEADERS) as client:
            while not self._stop.is_set():
                try:
                    r = client.get("/agents", params={"limit": 5})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.005)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(10)


@dataclass
class Stack:
    env: dict[str, str]
    state_dir: Path
    pg: EmbeddedPostgres
    api_url: str

    def state(self):  # noqa: ANN201
        state = self.pg.load_state()
        assert state is not None
        return state

    def can_login(self, login: str, password: str) -> bool:
        url = self.state().url("cesar_local", login).replace(
            self.state().passwords[login] or "x", password)
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.OperationalError:
            return False
        return True

    def active(self) -> str:
        return self.state().active_login

    def inactive(self) -> str:
        return LOGINS[1] if self.active() == LOGINS[0] else LOGINS[0]

    def audit_records(self, since: int = 0) -> list[dict]:
        return [json.loads(line) for line in self.audit_text().splitlines()[since:]]

    def audit_text(self) -> str:
        path = self.state_dir / "rotation-audit.jsonl"
        return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One stack for the module (starting one costs seconds): every test works from whatever
    login is active when it starts."""
    state_dir = new_state_dir("rotate")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ENVIRONMENT", "LOCAL_DB_URL", "COCKROACH_DB_URL", "DATABASE_TARGET")}
    port = free_port()
    env.update(CESAR_STATE_DIR=str(state_dir), CESAR_API_PORT=str(port),
               CESAR_POOL_MAX_LIFETIME="1", CESAR_POOL_MIN_SIZE="2")
    up = subprocess.run([sys.executable, "-m", "invoke", "up"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    pg = EmbeddedPostgres(state_dir)
    # Log every statement the server runs: the proof that no password reaches its log.
    with psycopg.connect(pg.superuser_conninfo(), autocommit=True) as su:
        su.execute("ALTER SYSTEM SET log_statement = 'all'")
        su.execute("SELECT pg_reload_conf()")
    made = cesar(env, "keys", "create", "--name", "rotate-load", "--scopes", "agents:read",
                     "--json")
    assert made.returncode == 0, made.stderr
    LOAD_HEADERS["Authorization"] = f"Bearer {json.loads(made.stdout)['key']}"
    try:
        yield Stack(env, state_dir, pg, f"http://127.0.0.1:{port}")
    finally:
        subprocess.run([sys.executable, "-m", "invoke", "down"], cwd=REPO, env=env,
                       capture_output=True, timeout=120)
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def test_rotations_in_a_row_fail_no_request(stack: Stack) -> None:
    seen_passwords: list[str] = list(stack.state().passwords.values())
    with Load(stack.api_url) as load:
        time.sleep(1)
        for _ in range(3):
            before = stack.state()
            old_login, old_password = before.active_login, before.passwords[before.active_login]
            done = cesar(stack.env, "rotate-password", "--grace", "1.5", "--json")
            assert done.returncode == 0, done.stdout + done.stderr
            report = json.loads(done.stdout)
            after = stack.state()
            assert report["retired"] is True
            assert after.active_login == report["to_login"] != old_login
            seen_passwords.append(after.passwords[after.active_login])
            # The previous password stops working once the grace period is over...
            assert not stack.can_login(old_login, old_password)
            # ...and the new one works.
            assert stack.can_login(after.active_login, after.passwords[after.active_login])
            time.sleep(1.5)  # let the API's one-second connections turn over
    assert load.failures == [] and load.ok > 100, (load.ok, load.failures[:5])
    logs = stack.audit_text() + stack.pg.log_file.read_text(errors="replace")
    assert "ALTER ROLE" in logs  # the server did log the statements...
    for password in seen_passwords:
        assert password not in logs  # ...never a password


def test_status_reports_the_last_rotation(stack: Stack) -> None:
    target = stack.inactive()
    assert cesar(stack.env, "rotate-password", "--grace", "0").returncode == 0
    status = json.loads(cesar(stack.env, "rotate-password", "--status", "--json").stdout)
    assert status["active_login"] == target
    assert status["last_rotation"]["outcome"] == "completed"
    assert status["pending"] is None


def test_unwritable_secret_file_changes_nothing(stack: Stack) -> None:
    require(shutil.which("chattr") is not None, "chattr (e2fsprogs) to make a file immutable")
    store = stack.state_dir / "stack.json"
    before, target = store.read_text(), stack.inactive()
    locked = subprocess.run(["chattr", "+i", str(store)], capture_output=True)
    require(locked.returncode == 0, "a filesystem with the immutable attribute (ext4, xfs)")
    try:
        with Load(stack.api_url) as load:
            failed = cesar(stack.env, "rotate-password", "--grace", "0")
            time.sleep(1.5)
        assert failed.returncode == 1
        lines = failed.stderr.strip().splitlines()
        assert lines[-1].startswith("cesar: error: cannot write the embedded store")
        assert "Traceback" not in failed.stderr
        assert store.read_text() == before  # nothing switched, nothing pending
        assert load.failures == [] and load.ok > 0
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)
    done = cesar(stack.env, "rotate-password", "--grace", "0")
    assert done.returncode == 0, done.stderr
    assert stack.active() == target


def test_database_refusing_the_new_password_is_rolled_back(stack: Stack) -> None:
    active, inactive = stack.active(), stack.inactive()
    audit_from = len(stack.audit_records())
    with psycopg.connect(stack.pg.superuser_conninfo(), autocommit=True) as su:
        (verifier_before,) = su.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [inactive]).fetchone()
        su.execute(f"ALTER ROLE {inactive} NOLOGIN")  # the server will refuse it
    with Load(stack.api_url) as load:
        failed = cesar(stack.env, "rotate-password", "--grace", "0", "--max-attempts", "2")
        time.sleep(1.5)
    assert failed.returncode == 1
    message = failed.stderr.strip().splitlines()[-1]
    assert "abandoned after 2 failed attempts" in message and f"still uses {active}" in message
    assert load.failures == [] and load.ok > 0
    state = stack.state()
    assert state.active_login == active and state.pending_password is None
    with psycopg.connect(stack.pg.superuser_conninfo(), autocommit=True) as su:
        (verifier_after,) = su.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [inactive]).fetchone()
        su.execute(f"ALTER ROLE {inactive} LOGIN")  # a person fixes it
    assert verifier_after == verifier_before  # put back as it was
    audit = stack.audit_records(audit_from)
    creates = [r for r in audit if r["step"] == "create"]
    assert len(creates) == 2 and [r["outcome"] for r in audit if r["step"] == "test"] == \
        ["failed", "failed"]
    done = cesar(stack.env, "rotate-password", "--grace", "0")
    assert done.returncode == 0, done.stderr
    assert stack.state().active_login == inactive


@pytest.mark.parametrize("step", ["preflight", "create", "set", "test", "finish"])
def test_a_run_killed_after_any_step_is_completed_by_the_next(stack: Stack, step: str) -> None:
    active, target = stack.active(), stack.inactive()
    audit_from = len(stack.audit_records())
    with Load(stack.api_url) as load:
        killed = cesar(stack.env, "rotate-password", "--grace", "0",
                       extra={"CESAR_ROTATE_KILL_AFTER": step})
        assert killed.returncode == -9  # SIGKILL, right after the step was recorded
        time.sleep(1.5)
        done = cesar(stack.env, "rotate-password", "--grace", "0", "--json")
        time.sleep(1.5)
    assert done.returncode == 0, done.stderr
    assert load.failures == [] and load.ok > 0, load.failures[:3]
    state = stack.state()
    assert state.active_login == target and state.pending_password is None
    assert stack.can_login(target, state.passwords[target])
    audit = stack.audit_records(audit_from)
    ids = {r["rotation"] for r in audit}
    assert len(ids) == 1  # the same rotation, resumed, not a second one
    assert audit[-1]["step"] == "retire" and audit[-1]["login"] == active


def test_concurrent_rotation_is_refused(stack: Stack) -> None:
    audit_from = len(stack.audit_records())
    # A session of the login about to be retired keeps the first run in its grace period.
    holder = psycopg.connect(stack.state().url("cesar_local", stack.active()))
    holder_pid = holder.info.backend_pid
    slow = subprocess.Popen([sys.executable, "-m", "cesar.cli", "rotate-password", "--grace", "8"],
                            cwd=REPO, env=stack.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the first run is in its grace period, holding the lock (this module's stack
        # has earlier rotations in its audit log: only this run's records count).
        deadline = time.monotonic() + 30
        while not any(r["step"] == "finish" for r in stack.audit_records(audit_from)):
            assert time.monotonic() < deadline, "the first rotation never reached finish"
            time.sleep(0.1)
        second = cesar(stack.env, "rotate-password", "--grace", "0")
        assert second.returncode == 1 and "another rotation is running" in second.stderr
    finally:
        assert slow.wait(60) == 0
        holder.close()
    # The grace period ran out with that session open: the retire names it.
    [retire] = [r for r in stack.audit_records(audit_from) if r["step"] == "retire"]
    assert any(s.startswith(f"{holder_pid} (") for s in retire["remaining_sessions"]), retire


def test_retire_waits_for_the_old_logins_sessions_not_for_the_clock(stack: Stack) -> None:
    """With nothing left on the old login, the retire does not wait out a long grace."""
    old = stack.active()
    holder = psycopg.connect(stack.state().url("cesar_local", old))
    # The API serves requests throughout, so its pool turns its connections over to the new
    # login (an idle pool would keep old-login sessions: those are waited for, up to --grace).
    with Load(stack.api_url) as load:
        run = subprocess.Popen([sys.executable, "-m", "cesar.cli", "rotate-password", "--grace",
                                "120", "--json"], cwd=REPO, env=stack.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while stack.active() == old:
                assert time.monotonic() < deadline, "the rotation never switched"
                time.sleep(0.1)
            time.sleep(3)
            assert run.poll() is None  # still waiting: a session of the old login is open
            assert holder.execute("SELECT 1").fetchone() == (1,)
        finally:
            holder.close()
        out, err = run.communicate(timeout=30)
    assert load.failures == [], load.failures[:3]
    assert run.returncode == 0, err
    report = json.loads(out)
    assert report["retired"] and report["remaining_sessions"] == []


def test_a_rotation_paused_past_its_lock_changes_nothing_after_a_takeover(stack: Stack) -> None:
    """SIGSTOP during the grace period until the lock (2 s here) expires; another run takes the
    lock over and retires; the paused run, resumed, stops at its next step without retiring."""
    audit_from = len(stack.audit_records())
    short = {**stack.env, "CESAR_ROTATE_LOCK_SECONDS": "2"}
    holder = psycopg.connect(stack.state().url("cesar_local", stack.active()))
    paused = subprocess.Popen([sys.executable, "-m", "cesar.cli", "rotate-password", "--grace",
                               "60"], cwd=REPO, env=short, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(r["step"] == "finish" for r in stack.audit_records(audit_from)):
            assert time.monotonic() < deadline, "the rotation never reached finish"
            time.sleep(0.1)
        os.kill(paused.pid, signal.SIGSTOP)
        time.sleep(3)  # past the 2 s lease, by the database's clock
        other = cesar(short, "rotate-password", "--retire-now")
        assert other.returncode == 0, other.stderr
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        holder.close()
    _, err = paused.communicate(timeout=30)
    assert paused.returncode == 1
    [line] = err.strip().splitlines()
    assert line.startswith("cesar: error:") and "lost the rotation lock" in line
    retires = [r for r in stack.audit_records(audit_from) if r["step"] == "retire"]
    assert len(retires) == 1  # the run that took over retired; the paused one did not


def operator_copy(stack: Stack, where: Path) -> tuple[Path, dict[str, str]]:
    """A second operator: its own checkout and state directory, with a .env.cockroach holding
    the credential in use now, for the same database (the embedded stack's cluster stand-in)."""
    from urllib.parse import quote

    from cesar.dev.embedded import CLUSTER_DB, SUPERUSER
    from cesar.rotate.stores import Credential, EmbeddedStore

    state = stack.state()
    cred = Credential(state.active_login, state.passwords[state.active_login])
    url = EmbeddedStore(stack.pg).urls_for(cred)[1]
    admin = (f"postgresql://{SUPERUSER}@/{CLUSTER_DB}?host={quote(state.socket_dir, safe='')}"
             f"&port={state.port}")
    where.mkdir(parents=True, exist_ok=True)
    (where / ".env.cockroach").write_text(f"COCKROACH_DB_URL={url}\nCESAR_ADMIN_DB_URL={admin}\n")
    (where / ".env.cockroach").chmod(0o600)
    env = {k: v for k, v in stack.env.items() if not k.startswith("CESAR_")}
    env.update(CESAR_STATE_DIR=str(where / ".cesar"), PYTHONPATH=str(REPO))
    return where, env


def generation(stack: Stack) -> tuple[str, int]:
    with psycopg.connect(stack.pg.superuser_conninfo("cesar_cluster")) as conn:
        row = conn.execute("SELECT active_login, generation FROM credential_rotation "
                           "WHERE name = 'app'").fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_stale_operator_file_is_refused_before_anything_changes(stack: Stack,
                                                                   tmp_path: Path) -> None:
    stale_dir, stale_env = operator_copy(stack, tmp_path / "second-checkout")
    before = (stale_dir / ".env.cockroach").read_text()
    with Load(stack.api_url) as load:
        # Someone else rotates (the old login stays valid: no retire yet)...
        first = cesar(stack.env, "rotate-password", "--grace", "60", "--no-wait")
        assert first.returncode == 0, first.stderr
        record = generation(stack)
        # ...then the second checkout, whose file still names the old login, tries.
        proc = subprocess.run([sys.executable, "-m", "cesar.cli", "rotate-password", "--grace",
                               "0"], cwd=stale_dir, env=stale_env, capture_output=True,
                              text=True, timeout=120)
        time.sleep(2)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("cesar: error: .env.cockroach is stale") and "fetch the current" in line
    assert (stale_dir / ".env.cockroach").read_text() == before
    assert generation(stack) == record  # the database's record untouched
    assert load.failures == [] and load.ok > 0, load.failures[:3]
    done = cesar(stack.env, "rotate-password", "--retire-now")
    assert done.returncode == 0, done.stderr


def test_two_rotations_at_once_from_two_checkouts(stack: Stack, tmp_path: Path) -> None:
    """Two operators (two state directories, two credential files, one database) start a
    rotation at the same moment: one rotates, the other is refused; the API never fails."""
    other_dir, other_env = operator_copy(stack, tmp_path / "other-operator")
    login, gen = generation(stack)
    with Load(stack.api_url) as load:
        time.sleep(0.5)
        args = [sys.executable, "-m", "cesar.cli", "rotate-password", "--grace", "60",
                "--no-wait"]
        runs = [subprocess.Popen(args, cwd=REPO, env=stack.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True),
                subprocess.Popen(args, cwd=other_dir, env=other_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)]
        results = [(r.wait(120), *r.communicate()) for r in runs]
        time.sleep(2.5)  # the API's one-second connections turn over on the new credential
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0 and codes[1] in (1, 2), results
    refused = next(err for code, _, err in results if code != 0)
    assert "another rotation is running" in refused or "is stale" in refused, refused
    assert len(refused.strip().splitlines()) == 1 and "Traceback" not in refused
    now_login, now_gen = generation(stack)
    assert now_gen == gen + 1 and now_login != login
    assert load.failures == [] and load.ok > 0, load.failures[:3]
    if results[1][0] == 0:  # the other operator won: the stack's file learns the new login
        from cesar.rotate.stores import EmbeddedStore, EnvFileStore

        new = EnvFileStore(other_dir / ".env.cockroach", None).active()
        EmbeddedStore(stack.pg).activate(new)
        finish = subprocess.run([sys.executable, "-m", "cesar.cli", "rotate-password",
                                 "--retire-now"], cwd=other_dir, env=other_env,
                                capture_output=True, text=True, timeout=120)
    else:
        finish = cesar(stack.env, "rotate-password", "--retire-now")
    assert finish.returncode == 0, finish.stderr


def test_bad_usage_exits_2(stack: Stack) -> None:
    proc = cesar(stack.env, "rotate-password", "--grace", "-5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    plan = cesar(stack.env, "rotate-password", "--dry-run").stdout
    assert f"{stack.active()} -> {stack.inactive()}" in plan


def test_an_api_reading_on_the_async_pool_leaves_the_old_login_at_once(stack: Stack,
                                                                       tmp_path: Path) -> None:
    """A second API on the stack reads on the async pool, its connections allowed to live an
    hour: a rotation under load fails none of its requests, and the retire finds no session of
    the previous login (its pools, the idle threaded one included, left it when the credential
    files changed), instead of waiting out the grace and retiring a login still in use."""
    port = free_port()
    env = {**stack.env, "CESAR_API_READ_PATH": "async", "CESAR_POOL_MAX_LIFETIME": "3600"}
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        api = subprocess.Popen([sys.executable, "-m", "cesar.cli", "api", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        old = stack.active()
        with Load(url) as load:
            time.sleep(1)
            done = cesar(stack.env, "rotate-password", "--grace", "60", "--json", timeout=180)
            time.sleep(2)  # still served once the previous login is retired
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["to_login"] != old and report["retired"] is True
        assert report["remaining_sessions"] == [], report["remaining_sessions"]
        assert load.failures == [] and load.ok > 50, (load.ok, load.failures[:3])
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=20)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
