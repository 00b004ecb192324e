"""``cesar api``: serve the application with uvicorn, one process or several workers.

Everything is checked before uvicorn starts, so a bad configuration or a taken port is one line
and an exit code (2 or 1), never a traceback or a half-started service. With ``--workers N``
(N > 1) the metrics run in prometheus_client's multiprocess mode (see ``cesar.metrics``): the
directory is ``PROMETHEUS_MULTIPROC_DIR`` when set (under systemd: ``RuntimeDirectory=``), else
a private temporary one; either way it is emptied at start, so it must belong to this service
alone.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import click

from cesar.errors import ConfigError, OperationFailed

APP = "cesar.api.app:create_app"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Seconds uvicorn lets open requests finish on SIGTERM before closing them.
GRACEFUL_SHUTDOWN = 10
#: Seconds a worker may take to answer the supervisor's health check (uvicorn's default, 5,
#: kills and restarts workers still importing on a loaded host, over and over).
WORKER_HEALTHCHECK = 30

log = logging.getLogger(__name__)


def log_config(level: str, access_flush: float = 0.5) -> dict[str, Any]:
    """One stream (stderr: journald, or the log file of `invoke up`), timestamped; access lines
    written in batches every ``access_flush`` seconds (cesar/api/accesslog.py; 0: each line)."""
    from cesar.api.accesslog import handler_config

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": fmt},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(asctime)s %(levelname)s access: %(client_addr)s "%(request_line)s" '
                       "%(status_code)s",
                "use_colors": False,
            },
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default",
                        "stream": "ext://sys.stderr"},
            "access": handler_config(access_flush),
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["access"], "level": level.upper(),
                               "propagate": False},
            "cesar": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "psycopg": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        },
    }


def check_port(host: str, port: int) -> None:
    """Raise a one-line error if ``host:port`` cannot be bound (taken, or not an address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({exc.strerror}); "
                          "use 127.0.0.1, 0.0.0.0 or one of its addresses") from None
    family, type_, proto, _, addr = infos[0]
    with socket.socket(family, type_, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OperationFailed(
                    f"{host}:{port} is already in use by another process (an API started by "
                    "`invoke up`? see `invoke status`); stop it or choose another port with "
                    "--port or CESAR_API_PORT"
                ) from None
            if exc.errno == errno.EACCES:
                raise OperationFailed(
                    f"not allowed to listen on {host}:{port} (ports below 1024 need "
                    "CAP_NET_BIND_SERVICE); choose a port >= 1024"
                ) from None
            raise OperationFailed(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _metrics_dir(workers: int) -> tuple[Path | None, bool]:
    """The multiprocess metrics directory to use, and whether it is ours to delete."""
    from_env = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if from_env:
        return Path(from_env), False
    if workers > 1:
        return Path(tempfile.mkdtemp(prefix="cesar-api-metrics-")), True
    return None, False


def prepare_metrics_dir(path: Path) -> None:
    """Create ``path`` and empty it: files left by a previous run would be summed in.

    Only before the workers start (their files would go too). No prometheus_client import
    here: importing it before PROMETHEUS_MULTIPROC_DIR is set would fix the wrong mode."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_file() and entry.suffix == ".db":
            entry.unlink()


def serve(host: str, port: int, workers: int, log_level: str, access_log: bool,
          access_flush: float = 0.5) -> None:
    """Validate the configuration and the port, then run uvicorn until SIGTERM/SIGINT."""
    from cesar import db
    from cesar.config import load_settings

    settings = load_settings()
    db.route(settings)  # a missing or unsafe URL is refused here, not in every worker
    from cesar.api.settings import load_auth_settings

    load_auth_settings().metrics_secret()  # so are bad auth settings and an unreadable token
    from cesar.events.settings import load_event_settings

    load_event_settings()  # and bad CESAR_EVENTS_* settings
    from cesar.api.aio import load_read_settings

    load_read_settings()  # and a bad CESAR_API_READ_PATH
    check_port(host, port)
    directory, temporary = _metrics_dir(workers)
    if directory is not None:
        # Set before anything imports prometheus_client: the mode is chosen at import.
        prepare_metrics_dir(directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    import uvicorn

    try:
        uvicorn.run(APP, factory=True, host=host, port=port, workers=workers,
                    log_config=log_config(log_level, access_flush), log_level=log_level,
                    access_log=access_log, server_header=False,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK)
    finally:
        if temporary and directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


@click.command("api")
@click.option("--host", default=None, metavar="ADDRESS",
              help="Address to listen on (0.0.0.0: every interface). "
                   "Default: CESAR_API_HOST, else 127.0.0.1.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="TCP port. Default: CESAR_API_PORT, else 8000.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Worker processes; metrics are aggregated across them. "
                   "Default: CESAR_API_WORKERS, else 1.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One log line per request.")
@click.option("--check", is_flag=True,
              help="Validate the configuration and the port, print what would run, and exit.")
def api(host: str | None, port: int | None, workers: int | None, log_level: str,
        access_log: bool, check: bool) -> None:
    """Serve the CESAR API (uvicorn) until stopped with SIGTERM or Ctrl-C."""
    from cesar.api.settings import load_api_settings

    defaults = load_api_settings()
    host = host or defaults.host
    port = port or defaults.port
    workers = workers or defaults.workers
    if check:
        from cesar import db
        from cesar.api.aio import load_read_settings
        from cesar.api.settings import load_auth_settings
        from cesar.config import load_settings

        settings = load_settings()
        primary = db.route(settings).primary
        load_auth_settings().metrics_secret()
        load_read_settings()
        check_port(host, port)
        click.echo(f"would serve http://{host}:{port} with {workers} worker(s), "
                   f"ENVIRONMENT={settings.environment}, database {primary.name} "
                   f"{primary.masked}")
        return
    serve(host, port, workers, log_level, access_log, defaults.access_log_flush_seconds)
