"""Failed database logins become a Prometheus counter: real failed logins against a real
PostgreSQL (the embedded server, configured as `invoke up` configures it), the real mtail
(Debian's package) running the program the roles ship, tailing the server's real log, and the
counter read from mtail's /metrics as Prometheus scrapes it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cesar.dev.embedded import EmbeddedPostgres, free_port
from tests.helpers import REPO, new_state_dir, require

PROGRAM_DIR = REPO / "ansible" / "roles" / "cesar_log_metrics" / "files"
METRIC = "cesar_db_auth_failures_total"


def mtail_bin() -> str:
    path = shutil.which("mtail")
    require(path is not None, "mtail: apt-get install mtail")
    assert path is not None
    return path


def counters(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (METRIC, METRIC.removesuffix("_total")):
                out[(sample.labels["engine"], sample.labels["reason"])] = sample.value
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """A server of its own, so no other test's logins reach its log."""
    state_dir = new_state_dir("authlog")
    pg = EmbeddedPostgres(state_dir)
    pg.up()
    try:
        yield pg
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def mtail(server: EmbeddedPostgres, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [mtail_bin(), "--progs", str(PROGRAM_DIR), "--logs", str(server.log_file),
         "--address", "127.0.0.1", "--port", str(port), "--emit_prog_label=false",
         "--logtostderr"], stdout=subprocess.DEVNULL, stderr=(tmp_path / "mtail.log").open("w"))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "mtail.log").read_text()
            assert time.monotonic() < deadline, "mtail never answered on /metrics"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_embedded_server_logs_connections(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as conn:
        assert conn.execute("SHOW log_connections").fetchone() == ("on",)


def test_real_failed_logins_are_counted_and_successful_ones_are_not(
        server: EmbeddedPostgres, mtail: str) -> None:
    state = server.load_state()
    assert state is not None
    good = server.local_url(state)
    bad = good.replace(state.passwords[state.active_login], "not-the-password")
    assert bad != good
    before = counters(httpx.get(mtail).text).get(("postgresql", "password"), 0)
    for _ in range(3):
        psycopg.connect(good).close()
    for _ in range(7):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(bad)
    deadline = time.monotonic() + 20
    seen = before
    while seen < before + 7 and time.monotonic() < deadline:
        time.sleep(0.25)
        seen = counters(httpx.get(mtail).text).get(("postgresql", "password"), 0)
    time.sleep(1)  # anything more would be counted by now
    assert counters(httpx.get(mtail).text).get(("postgresql", "password"), 0) == before + 7


def test_cockroachdb_authentication_failures_are_counted(tmp_path: Path) -> None:
    """CockroachDB's SESSIONS-channel event, in the format of its documentation and source
    (no CockroachDB binary on these machines: see docs/security.md)."""
    log = tmp_path / "cockroach-sql-auth.log"
    lines = [
        'I261130 08:50:01.304797 53299 4@util/log/event_log.go:32 ⋮ [n1,client=‹10.0.0.9:52632›,'
        'hostssl,user=‹cesar_app_a›] 52 ={"Timestamp":1616536438304796000,"EventType":'
        '"client_authentication_failed","InstanceID":1,"Network":"tcp","RemoteAddress":'
        '"‹10.0.0.9:52632›","Transport":"hostssl","User":"‹cesar_app_a›","Reason":6,"Detail":'
        '"‹password authentication failed for user cesar_app_a›","Method":"cert-password"}',
        'I261130 08:50:02.000000 53300 4@util/log/event_log.go:32 ⋮ [n1] 53 ={"Timestamp":1,'
        '"EventType":"client_authentication_failed","User":"‹x›","Reason":"USER_NOT_FOUND"}',
        'I261130 08:50:03.000000 53301 4@util/log/event_log.go:32 ⋮ [n1] 54 ={"Timestamp":2,'
        '"EventType":"client_authentication_ok","User":"‹cesar_app_a›","Method":"cert-password"}',
    ]
    log.write_text("\n".join(lines) + "\n")
    out = subprocess.run([mtail_bin(), "--progs", str(PROGRAM_DIR), "--logs", str(log),
                          "--one_shot", "--one_shot_format=prometheus",
                          "--emit_prog_label=false", "--logtostderr"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert counters(out.stdout) == {("cockroachdb", "6"): 1, ("cockroachdb", "USER_NOT_FOUND"): 1}
