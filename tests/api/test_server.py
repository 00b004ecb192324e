"""``cesar api`` as an operator (or systemd) runs it: a separate process, real sockets."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx

from cesar.dev.embedded import free_port
from tests.api.helpers import MONITOR, base_env, cesar_api, run_cesar, sample, wait_healthy


def test_several_workers_share_one_view_of_the_metrics(migrated_url: str,
                                                        tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "metrics"
    env = {**base_env(migrated_url, tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file of an earlier run")
    with cesar_api("--port", str(port), "--workers", "2", "--no-access-log", env=env) as proc:
        wait_healthy(url, proc)
        workers = {p.name for p in metrics_dir.glob("*.db")}
        assert "counter_999999.db" not in workers  # emptied before the workers started
        n = 0
        pids: set[str] = set()
        while len(pids) < 2 and n < 1000:  # a new connection each, until both workers served
            for _ in range(20):
                assert httpx.get(f"{url}/health/live", headers={"Connection": "close"}).is_success
            n += 20
            pids = {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("histogram_*.db")}
        assert len(pids) == 2, f"expected both workers to have served requests, got {pids}"
        for _ in range(6):  # whichever worker answers the scrape, it reports the sum
            text = httpx.get(f"{url}/metrics", headers={"Connection": "close",
                                                        "Authorization": f"Bearer {MONITOR}"}).text
            assert sample(text, "cesar_http_request_duration_seconds_count",
                          'route="/health/live",status="200"') == n
            assert sample(text, "cesar_db_up") == 1
            assert 'pid="' not in text  # gauges are aggregated, not one series per worker
            assert sample(text, "cesar_db_pool_size") >= 2  # both workers' pools, summed
    assert proc.returncode == 0


def test_the_port_comes_from_cesar_api_port(migrated_url: str, tmp_path: Path) -> None:
    port = free_port()
    r = run_cesar("api", "--check", env={**base_env(migrated_url, tmp_path),
                                          "CESAR_API_PORT": str(port)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"would serve http://127.0.0.1:{port} with 1 worker(s)")
    assert "***" in r.stdout and "cesar_app" in r.stdout  # the URL, password masked


def test_a_port_in_use_is_one_line_and_exit_1(migrated_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cesar("api", "--port", str(port), env=base_env(migrated_url, tmp_path))
    assert r.returncode == 1
    assert r.stderr == (f"cesar: error: 127.0.0.1:{port} is already in use by another process "
                        "(an API started by `invoke up`? see `invoke status`); stop it or choose "
                        "another port with --port or CESAR_API_PORT\n")


def test_bad_configuration_is_refused_before_serving(tmp_path: Path) -> None:
    r = run_cesar("api", "--port", str(free_port()),
                  env={"ENVIRONMENT": "production", "CESAR_STATE_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.startswith("cesar: error: COCKROACH_DB_URL is not set; "
                               "ENVIRONMENT=production")
    assert "Traceback" not in r.stderr
    bad_port = run_cesar("api", "--check", env={"CESAR_API_PORT": "eighty"})
    assert bad_port.returncode == 2
    assert bad_port.stderr.startswith("cesar: error: CESAR_API_PORT='eighty' is not valid")


def test_sigterm_writes_every_buffered_access_line_of_every_worker(migrated_url: str,
                                                                   tmp_path: Path) -> None:
    """Access lines are written in batches (cesar/api/accesslog.py): a clean stop still writes
    all of them, from both worker processes, with the batch interval far from elapsed."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**base_env(migrated_url, tmp_path), "CESAR_API_ACCESS_LOG_FLUSH_SECONDS": "10"}
    with cesar_api("--port", str(port), "--workers", "2", env=env) as proc:
        wait_healthy(url, proc, seconds=120)  # two workers start slowly on a busy machine
        for n in range(40):  # a new connection each: both workers serve some
            assert httpx.get(f"{url}/health/live?n={n}",
                             headers={"Connection": "close"}).is_success
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    served = [line for line in out.splitlines() if '"GET /health/live?n=' in line]
    assert sorted(int(line.split("n=")[1].split(" ")[0]) for line in served) == list(range(40))


def test_a_bad_access_log_flush_interval_is_one_line_and_exit_2(migrated_url: str,
                                                                tmp_path: Path) -> None:
    r = run_cesar("api", "--port", str(free_port()),
                  env={**base_env(migrated_url, tmp_path),
                       "CESAR_API_ACCESS_LOG_FLUSH_SECONDS": "-1"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cesar: error: ")
    assert "CESAR_API_ACCESS_LOG_FLUSH_SECONDS" in lines[0], lines
