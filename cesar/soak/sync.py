"""The sync on the compressed schedule: ``cesar sync run`` every ``cycle`` seconds.

Each run is its own process, as cron starts it on the hosts, with the URLs in its environment
(never on its command line, where ``ps`` would show the password). A run that fails or finds
the lease taken is tried again after a quarter of a cycle instead of a whole one: with a lag
limit of two cycles (600 s for 5-minute cycles), waiting a whole cycle after any miss would
spend the limit on a single failure.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cesar.soak.load import Log

#: Seconds a run may take before the scheduler kills it (far above a run's normal 0.1-1 s).
RUN_TIMEOUT = 120.0


@dataclass
class SyncRun:
    tag: str
    started_at: float
    ended_at: float
    returncode: int
    succeeded: bool


class SyncLauncher:
    """Starts ``cesar sync run`` processes with the current URLs; logs their output."""

    def __init__(self, env: Callable[[], dict[str, str]], log: Log,
                 cwd: Path | None = None) -> None:
        self.env, self.log, self.cwd = env, log, cwd
        self.runs: list[SyncRun] = []
        self._lock = threading.Lock()
        self._ready: subprocess.Popen[str] | None = None  # imported, waiting for its go

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cesar.cli", "--ready"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=self.env(), cwd=self.cwd,
        )

    def start(self) -> subprocess.Popen[str]:
        """``cesar sync run -q`` now: in the process made ready beforehand (its imports
        done), and the next one is prepared meanwhile (see cesar.cli.ready)."""
        with self._lock:
            proc, self._ready = self._ready, None
        if proc is None or proc.poll() is not None:
            proc = self._spawn()
        assert proc.stdin is not None
        proc.stdin.write("sync run -q\n")
        proc.stdin.flush()
        with self._lock:
            self._ready = self._spawn()
        return proc

    def close(self) -> None:
        """End the process kept ready (it runs nothing: its stdin closes)."""
        with self._lock:
            proc, self._ready = self._ready, None
        if proc is not None:
            proc.communicate(timeout=60)

    def finish(self, proc: subprocess.Popen[str], tag: str, started_at: float,
               timeout: float = RUN_TIMEOUT) -> SyncRun:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            self.log.error(f"sync-{tag}", f"cesar: error: sync run pid {proc.pid} still running "
                                          f"after {timeout:g} s; killed")
        for line in (out + err).splitlines():
            if line.strip():
                level = "ERROR" if line.startswith(("cesar: error:", "Traceback")) else "INFO"
                self.log.write(level, f"sync-{tag}", f"pid {proc.pid}: {line}")
        code = proc.returncode
        # Start to end as the scheduler sees it (the process's start-up included): what the
        # lag and a fault's recovery are made of.
        self.log.info(f"sync-{tag}", f"pid {proc.pid}: exit {code} after "
                                      f"{time.time() - started_at:.2f} s")
        if code < 0:
            self.log.info(f"sync-{tag}", f"pid {proc.pid} ended by signal "
                                          f"{signal.Signals(-code).name}")
        run = SyncRun(tag, started_at, time.time(), code,
                      succeeded=code == 0 and "sync done" in out)
        with self._lock:
            self.runs.append(run)
        return run

    def run_once(self, tag: str) -> SyncRun:
        started = time.time()
        return self.finish(self.start(), tag, started)

    def succeeded_after(self, at: float) -> SyncRun | None:
        """The first successful run that started after ``at``."""
        with self._lock:
            for run in self.runs:
                if run.succeeded and run.started_at >= at:
                    return run
        return None


class Scheduler(threading.Thread):
    """cron, compressed: a run every ``cycle`` seconds (a quarter cycle after a miss)."""

    def __init__(self, launcher: SyncLauncher, cycle: float, stop: threading.Event) -> None:
        super().__init__(name="sync-scheduler", daemon=True)
        self.launcher, self.cycle, self.stop = launcher, cycle, stop
        self.hold = threading.Lock()  # a fault holds it to start its own run undisturbed

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            with self.hold:
                run = self.launcher.run_once("cron")
            wait = self.cycle if run.succeeded else self.cycle / 4
            self.stop.wait(max(0.0, wait - (time.monotonic() - started)))


def child_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in base.items()
           if k not in ("LOCAL_DB_URL", "COCKROACH_DB_URL", "COCKROACH_READ_REPLICA_URL",
                        "DATABASE_TARGET", "ENVIRONMENT")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


__all__ = ["Scheduler", "SyncLauncher", "SyncRun", "child_env"]
