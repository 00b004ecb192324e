"""The soak: the whole local stack together, under load, with faults on a schedule.

One run owns a fresh state directory (its own embedded PostgreSQL, never the developer's
``.cesar/``): both databases on that one server, the cluster reached only through a
:class:`~cesar.soak.proxy.FaultProxy` (so the cluster can become unreachable while the local
database keeps serving), the API on two workers, the sync on the compressed schedule, plain-SQL
writers on both databases, readers on the API. Faults follow one another at even intervals;
after each, the run measures how long the service was out and how long until every check
passed again. At the end: one final sync, every acknowledged write looked up on both
databases, every log scanned, the verdict, the JSON report and the plot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from cesar.config import Settings
from cesar.credentials import write_private
from cesar.dev.embedded import CLUSTER_DB, LOCAL_DB, EmbeddedPostgres, StackState, free_port
from cesar.errors import ConfigError, OperationFailed
from cesar.soak import logscan, report
from cesar.soak.load import (
    ApiWriter,
    Ledger,
    Log,
    Poller,
    Reader,
    SqlWriter,
    Subscriber,
    missing_or_stale,
)
from cesar.soak.proxy import FaultProxy
from cesar.soak.sync import Scheduler, SyncLauncher, child_env

#: The sync's cycle on the hosts (cron, every 5 minutes); ``--compress`` divides it.
CYCLE_S = 300.0
#: The sync lease during a soak: shorter than the hosts' 30 s, so that a run paused past it
#: is taken over within a fault's window; not shorter, or a run slowed by a loaded machine
#: (3 s was tried) loses its lease to the next one without any fault.
LEASE_S = 10
#: How long the cluster stays unreachable (real seconds).
CUT_S = 4.0
#: Seconds given to each fault's recovery before it counts as never recovered.
RECOVERY_DEADLINE_S = 60.0
#: Seconds on either side of a fault's window within which its errors are still explained
#: (log timestamps and the injector's clock are read at slightly different moments).
SLACK_S = 2.0
READERS = 2
READ_RATE = 10.0  # per reader, per second
WRITE_RATE = 5.0  # per SQL writer, per second
API_WRITE_RATE = 3.0  # tasks per second through the API (each maybe with a run and an event)

ALL_FAULTS = ("pg_restart", "cluster_unreachable", "sync_sigkill", "sync_sigstop",
              "api_worker_killed", "password_rotation", "backup", "additive_migration")

# Error lines each fault explains, as `source: line` regular expressions. Connection errors
# of clients are explained only by faults that break connections.
_HTTP = (r"HTTP 503|ConnectError|RemoteProtocolError|ReadError|ReadTimeout|WriteError"
         r"|Server disconnected|Connection reset")
_CONNECTION = (r"server closed the connection|connection (?:is )?(?:lost|refused|reset|failed)"
               r"|Connection refused|consuming input failed|terminating connection"
               r"|the database system is (?:shutting down|starting up|not yet accepting)"
               r"|could not receive data|SSL SYSCALL|the connection is closed"
               r"|cannot connect to the|no connection to the|EOF detected|Broken pipe")
EXPLAINS: dict[str, tuple[str, ...]] = {
    "pg_restart": (
        r"^postgresql: .*FATAL:\s+terminating connection due to administrator command",
        r"^postgresql: .*FATAL:\s+the database system is (?:shutting down|starting up)",
        # A connection still authenticating when the shutdown began is ended this way.
        r"^postgresql: .*FATAL:\s+canceling authentication due to timeout",
        r"^(?:writer-\w+|sync-\w+): .*(?:" + _CONNECTION + ")",
        r'^api: .*access: .*" 503',
        r"^writer-api: .*(?:" + _HTTP + ")",
    ),
    "cluster_unreachable": (
        r"^(?:writer-cluster|sync-\w+): .*(?:" + _CONNECTION + ")",
    ),
    # A run taking over the lease can wait for the row lock of the run it replaces (paused,
    # or killed before its server noticed) and give up at its lock timeout.
    "sync_sigkill": (
        r'^postgresql: .*ERROR:\s+canceling statement due to lock timeout.*"sync_lease"',
    ),
    "sync_sigstop": (
        r"^sync-fault: .*lost the sync lease",
        r"^postgresql: .*FATAL:\s+terminating connection due to idle-in-transaction timeout",
        # ... which the continued run then finds closed under it (psycopg reports either the
        # closed socket or, when it reads the server's message first, the reason itself).
        r"^sync-fault: .*server closed the connection unexpectedly",
        r"^sync-fault: .*terminating connection due to idle-in-transaction timeout",
        r'^postgresql: .*ERROR:\s+canceling statement due to lock timeout.*"sync_lease"',
    ),
    "api_worker_killed": (
        r"^writer-api: .*(?:" + _HTTP + ")",
    ),
    # Every client follows the switch of login (the API and the writers read the stack's
    # state again, the sync its env file): a refused login is not the rotation's doing.
    "password_rotation": (),
    "backup": (),
    "additive_migration": (),
    # The migration runner's first look at an empty database reads its tracking table before
    # creating it (the error is caught; the server still logs the failed statement).
    "setup": (
        r'^postgresql: .*ERROR:\s+relation "public\.schema_migrations" does not exist',
    ),
}


#: Error lines that no fault causes but that are understood, each with its reason. They are
#: counted in the report (``known_errors``) and do not fail the run; keep this list short
#: (empty: the one entry it had, the sync applying a child before its parent, was fixed).
KNOWN: dict[str, tuple[str, ...]] = {}


@dataclass
class Options:
    duration_s: float
    compress: float = 48.0
    seed: int = 0
    out_dir: Path = Path(".cesar/soak")
    api_port: int | None = None
    faults: tuple[str, ...] = ALL_FAULTS
    inject_unexplained: bool = False
    pg_bindir: Path | None = None
    keep: bool = False  # keep the state directory (the logs and report are always kept)

    @property
    def cycle_s(self) -> float:
        return CYCLE_S / self.compress


@dataclass
class Injected:
    """What a fault function reports: when the fault was removed, and how it went."""

    ended_at: float
    detail: str = ""
    sync: bool = True  # recovery waits for a successful sync run started after the end
    extra_check: Callable[[], bool] | None = None


def parse_duration(text: str) -> float:
    """``90s``, ``5m``, ``1h``, ``1h30m`` or plain seconds."""
    import re

    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"--duration {text!r} is not a duration; use e.g. 5m, 30m, 90s, 1h")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclass
class Soak:
    options: Options
    settings: Settings
    started: float = 0.0
    log: Log | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------------ layout
    def __post_init__(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.dir = Path(self.options.out_dir).absolute() / stamp
        self.state_dir = self.dir / "state"
        self.logs_dir = self.dir / "logs"
        self.rng = random.Random(self.options.seed)
        self.pg = EmbeddedPostgres(self.state_dir, bindir=self.options.pg_bindir)
        self.ledger = Ledger()
        self.faults: list[report.FaultResult] = []
        self.injected_error_at: float | None = None
        self.api_proc: subprocess.Popen[bytes] | None = None
        self.proxy: FaultProxy | None = None
        self._env_lock = threading.Lock()
        self._env_text = ""

    @property
    def api_log(self) -> Path:
        return self.state_dir / "log" / "api.log"

    # ------------------------------------------------------------------ URLs (re-read: rotation)
    def _state(self) -> StackState:
        for _ in range(50):
            try:
                state = self.pg.load_state()
            except ConfigError:  # read while being rewritten
                state = None
            if state is not None:
                return state
            time.sleep(0.05)
        raise OperationFailed(f"no readable {self.pg.state_file}")

    def local_url(self) -> str:
        return self.pg.local_url(self._state())

    def cluster_url(self, *, direct: bool = False) -> str:
        state = self._state()
        if not direct:
            assert self.proxy is not None
            state = dataclasses.replace(state, port=self.proxy.port)
        return state.url(CLUSTER_DB, ca_file=self.pg.ca_file if state.tls else None)

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(dict(os.environ), CESAR_STATE_DIR=str(self.state_dir),
                         CESAR_SYNC_LEASE_SECONDS=str(LEASE_S), **extra)

    def sync_env(self) -> dict[str, str]:
        self.refresh_sync_credentials()
        return self.env()

    @property
    def sync_dir(self) -> Path:
        """The sync runs' working directory: its ``.env`` holds their URLs."""
        return self.dir / "sync"

    def refresh_sync_credentials(self) -> bool:
        """Write the sync's URLs into ``sync/.env`` (mode 0600) when they changed.

        Like the hosts' env file that a rotation rewrites, and unlike variables fixed when a
        process starts, a file can be read again: a sync run that spans a rotation opens its
        later connections with the login that is active then. Polled, so the file follows the
        stack's switch of login within a moment; returns whether it was rewritten."""
        text = (f"LOCAL_DB_URL='{self.local_url()}'\n"
                f"COCKROACH_DB_URL='{self.cluster_url()}'\n")
        with self._env_lock:
            if text == self._env_text:
                return False
            write_private(self.sync_dir / ".env", text)
            self._env_text = text
        return True

    # ------------------------------------------------------------------ the stack
    def setup(self, progress: Callable[[str], None]) -> None:
        from cesar import keys, migrate

        self.setup_started = time.time()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.logs_dir / "soak.log")
        state, _ = self.pg.up()
        progress(f"started PostgreSQL on 127.0.0.1:{state.port} ({self.state_dir})")
        self.proxy = FaultProxy("127.0.0.1", state.port).start()
        progress(f"fault proxy for the cluster on 127.0.0.1:{self.proxy.port}")
        for name, url in (("local", self.local_url()), ("cluster", self.cluster_url())):
            migrate.apply_all(url, self.settings, source=f"the {name} database")
        progress("migrated both databases")
        with psycopg.connect(self.local_url(), autocommit=True) as conn:
            self.read_key = keys.create(conn, "soak-reader", ["agents:read"], None,
                                        actor="soak").key
            # The contract's client: agents:read and tasks:write create, read and subscribe.
            self.write_key = keys.create(conn, "soak-writer", ["agents:read", "tasks:write"],
                                         None, actor="soak").key
        self._start_api()
        assert self.api_proc is not None
        progress(f"API on {self.api_url} with 2 workers (pid {self.api_proc.pid})")
        # Last, so that the schedule starts right after it: the lag counts from here.
        self.launcher = SyncLauncher(self.sync_env, self.log, cwd=self.sync_dir)
        first = self.launcher.run_once("setup")
        if not first.succeeded:
            raise OperationFailed(f"the first sync pass failed; see {self.log.path}")
        progress("first sync pass done (pairing, full reconcile)")

    def _start_api(self) -> None:
        from cesar.dev.service import wait_healthy

        port = self.options.api_port or free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.api_log.parent.mkdir(parents=True, exist_ok=True)
        with self.api_log.open("ab") as out:
            self.api_proc = subprocess.Popen(
                [sys.executable, "-m", "cesar.cli", "api", "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "2"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env(), start_new_session=True)
        wait_healthy(self.api_url, deadline=time.monotonic() + 60, log=self.api_log,
                     child=self.api_proc)

    def api_workers(self) -> list[int]:
        """The pids of the API's worker processes: the supervisor's children started by
        multiprocessing's ``spawn_main`` (not its resource tracker)."""
        assert self.api_proc is not None
        parent = str(self.api_proc.pid)
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                if ppid == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except (OSError, IndexError):
                continue
        return sorted(out)

    def read_ok(self) -> bool:
        try:
            r = httpx.get(self.api_url + "/agents", timeout=2,
                          headers={"Authorization": f"Bearer {self.read_key}"})
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def cluster_probe(self) -> bool:
        try:
            with psycopg.connect(self.cluster_url(), connect_timeout=2,
                                 application_name="soak-probe") as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def lag_probe(self) -> float | None:
        with psycopg.connect(self.local_url(), connect_timeout=2, autocommit=True,
                             application_name="soak-lag") as conn:
            row = conn.execute("SELECT max(lag_seconds) FROM sync_lag").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # ------------------------------------------------------------------ faults
    def _schedule(self) -> list[tuple[float, str]]:
        """(seconds since start, fault) at even intervals between a warm-up and a cool-down;
        the list is repeated while each fault still gets 90 s (a 30-minute run: twice)."""
        names = list(self.options.faults)
        d = self.options.duration_s
        first, last = min(20.0, d * 0.1), d - min(40.0, d * 0.15)
        if not names:
            return []
        rounds = max(1, int((last - first) // (len(names) * 90.0)))
        names = names * rounds
        step = (last - first) / len(names)
        return [(first + i * step, name) for i, name in enumerate(names)]

    def inject(self, name: str) -> report.FaultResult:
        assert self.log is not None
        started = time.time()
        self.log.info("fault", f"{name}: begin")
        try:
            injected = getattr(self, f"_fault_{name}")()
        except Exception as exc:  # noqa: BLE001 - a fault that cannot be injected fails the soak
            self.log.error("fault", f"{name}: could not be injected: {type(exc).__name__}: {exc}")
            return report.FaultResult(name, started, time.time(), None, 0.0,
                                      detail=f"could not be injected: {exc}")
        recovered = self._wait_recovered(injected)
        took = None if recovered is None else round(recovered - injected.ended_at, 2)
        self.log.info("fault", f"{name}: ended, recovered after {took} s")
        samples = [(s.at, s.ok) for r in self.readers for s in list(r.samples)]
        end = recovered if recovered is not None else time.time()
        out = report.outage(samples, started, end)
        if name == "cluster_unreachable":
            probes = [(at, bool(v)) for at, v in list(self.cluster_poller.values)]
            out = max(out, report.outage(probes, started, end))
        return report.FaultResult(name, started, injected.ended_at, recovered, out,
                                  injected.detail)

    def _wait_recovered(self, injected: Injected) -> float | None:
        deadline = injected.ended_at + RECOVERY_DEADLINE_S
        while time.time() < deadline:
            checks = [self.read_ok()]
            if injected.sync:
                checks.append(self.launcher.succeeded_after(injected.ended_at) is not None)
            if injected.extra_check is not None:
                checks.append(injected.extra_check())
            if all(checks):
                return time.time()
            time.sleep(0.2)
        return None

    def _fault_pg_restart(self) -> Injected:
        self.pg.restart()  # pg_ctl restart -m fast: waits until it accepts connections
        return Injected(time.time(), "pg_ctl restart -m fast")

    def _fault_cluster_unreachable(self) -> Injected:
        assert self.proxy is not None
        self.proxy.cut()
        time.sleep(CUT_S)
        self.proxy.restore()
        return Injected(time.time(), f"proxy cut for {CUT_S:g} s ({self.proxy.refused} "
                                     "connections refused so far)")

    def _sync_run_holding_lease(self) -> tuple[subprocess.Popen[str], float]:
        """A sync run of our own, caught while it holds the lease (so a signal hits it mid-run).

        Holds the scheduler meanwhile; tries a few times, as a run can finish before it is
        seen."""
        for _ in range(10):
            started = time.time()
            proc = self.launcher.start()
            deadline = time.monotonic() + 30
            with psycopg.connect(self.cluster_url(direct=True), autocommit=True) as conn:
                while proc.poll() is None and time.monotonic() < deadline:
                    row = conn.execute("SELECT pid FROM sync_lease WHERE expires_at > now()"
                                       ).fetchone()
                    if row is not None and row[0] == proc.pid:
                        return proc, started
                    time.sleep(0.002)
            self.launcher.finish(proc, "fault", started)
        raise OperationFailed("could not catch a sync run while it held the lease")

    def _fault_sync_sigkill(self) -> Injected:
        with self.scheduler.hold:
            proc, started = self._sync_run_holding_lease()
            proc.send_signal(signal.SIGKILL)
            self.launcher.finish(proc, "fault", started)
        return Injected(time.time(), f"SIGKILL to sync run pid {proc.pid} holding the lease")

    def _fault_sync_sigstop(self) -> Injected:
        """Pause a run holding the lease until another run has taken the lease over, then
        continue it: it must notice at its next write and stop (exit 1, "lost the sync
        lease") instead of writing under a lease that is no longer its own."""
        with self.scheduler.hold:
            proc, started = self._sync_run_holding_lease()
            proc.send_signal(signal.SIGSTOP)
            time.sleep(LEASE_S + 0.5)  # its lease has expired
            takeover = self.launcher.run_once("fault")
            proc.send_signal(signal.SIGCONT)
            ended = time.time()
            run = self.launcher.finish(proc, "fault", started)
        fenced = run.returncode == 1 and not run.succeeded
        detail = (f"sync run pid {proc.pid} stopped past its {LEASE_S} s lease, taken over "
                  f"({'ok' if takeover.succeeded else 'failed'}), continued: exit "
                  f"{run.returncode}")
        if not (fenced and takeover.succeeded):
            raise OperationFailed(detail + "; expected the takeover to succeed and the "
                                           "continued run to stop with exit 1")
        return Injected(ended, detail)

    def _fault_api_worker_killed(self) -> Injected:
        workers = self.api_workers()
        if not workers:
            raise OperationFailed("no API worker process found")
        victim = self.rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        return Injected(time.time(), f"SIGKILL to API worker pid {victim} of {workers}",
                        sync=False, extra_check=lambda: len(self.api_workers()) == 2)

    def _cesar(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "cesar.cli", *args], text=True,
                              capture_output=True, env=self.env(), timeout=300)
        assert self.log is not None
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.strip():
                level = "ERROR" if line.startswith(("cesar: error:", "Traceback")) else "INFO"
                self.log.write(level, f"cesar-{args[0]}", line)
        if proc.returncode != 0:
            raise OperationFailed(f"cesar {' '.join(args)} exited {proc.returncode}")
        return proc

    def _fault_password_rotation(self) -> Injected:
        before = self._state().active_login
        self._cesar("rotate-password", "--grace", "3")
        after = self._state().active_login
        return Injected(time.time(), f"rotated {before} -> {after}", sync=True)

    def _fault_backup(self) -> Injected:
        self._cesar("backup", "take")
        return Injected(time.time(), "cesar backup take", sync=False)

    def _fault_additive_migration(self) -> Injected:
        from cesar import migrate
        from cesar.migrate.files import resolve_dir

        target = self.dir / "migrations"
        shutil.copytree(resolve_dir(), target, dirs_exist_ok=True)
        (target / "900_soak_additive.up.sql").write_text(
            "-- Additive, as a release applies it while serving: a nullable column and a\n"
            "-- new table; neither blocks a reader or a writer of the existing rows.\n"
            "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS soak_note TEXT;\n"
            "CREATE TABLE IF NOT EXISTS soak_probe (id UUID PRIMARY KEY "
            "DEFAULT gen_random_uuid(), at TIMESTAMPTZ NOT NULL DEFAULT now());\n")
        (target / "900_soak_additive.down.sql").write_text(
            "DROP TABLE IF EXISTS soak_probe;\nALTER TABLE tasks DROP COLUMN IF EXISTS "
            "soak_note;\n")
        done = []
        for name, url in (("local", self.local_url()), ("cluster", self.cluster_url())):
            run = migrate.apply_all(url, self.settings, source=f"the {name} database",
                                    migrations_dir=target)
            done.append(f"{name}: {len(run.done)} applied")
        return Injected(time.time(), "; ".join(done))

    def _inject_unexplained(self) -> None:
        """A real error outside every fault: a statement on a table that does not exist."""
        assert self.log is not None
        self.injected_error_at = time.time()
        with (psycopg.connect(self.local_url(), autocommit=True) as conn,
              contextlib.suppress(psycopg.errors.UndefinedTable)):
            conn.execute("SELECT * FROM soak_unexplained_error_probe")
        self.log.info("soak", "injected an unexplained error (--inject-unexplained)")

    # ------------------------------------------------------------------ the run
    def run(self, progress: Callable[[str], None]) -> dict[str, Any]:
        opts = self.options
        self.setup(progress)
        assert self.log is not None
        self.started = time.time()
        self.readers = [Reader(i, self.api_url, self.read_key, self.stop, rate=READ_RATE)
                        for i in range(READERS)]
        self.writers = [
            SqlWriter("local", self.local_url, self.ledger, self.log, self.stop,
                      rate=WRITE_RATE, seed=opts.seed * 2 + 1),
            SqlWriter("cluster", self.cluster_url, self.ledger, self.log, self.stop,
                      rate=WRITE_RATE, seed=opts.seed * 2 + 2),
        ]
        self.api_writer = ApiWriter(self.api_url, self.write_key, self.ledger, self.log,
                                    self.stop, rate=API_WRITE_RATE, seed=opts.seed * 2 + 3)
        self.subscriber = Subscriber(self.api_url, self.write_key, self.log, self.stop)
        self.cluster_poller = Poller("cluster-probe", self.cluster_probe, self.stop, 0.5)
        self.lag_poller = Poller("lag", self.lag_probe, self.stop, 1.0)
        self.credentials_poller = Poller("credentials", self.refresh_sync_credentials,
                                         self.stop, 0.2)
        # The machine's 1-minute load average: a p95 or a lag is read against it.
        self.load_poller = Poller("load", lambda: os.getloadavg()[0], self.stop, 5.0)
        self.scheduler = Scheduler(self.launcher, opts.cycle_s, self.stop)
        threads: list[threading.Thread] = [*self.readers, *self.writers, self.api_writer,
                                           self.subscriber, self.cluster_poller,
                                           self.lag_poller, self.credentials_poller,
                                           self.load_poller, self.scheduler]
        for t in threads:
            t.start()
        progress(f"load running: {READERS} readers x {READ_RATE:g}/s, 2 SQL writers x "
                 f"{WRITE_RATE:g}/s, an API writer {API_WRITE_RATE:g} tasks/s, a subscriber "
                 f"on /events, sync every {opts.cycle_s:.2f} s")
        schedule = self._schedule()
        inject_at = None
        if opts.inject_unexplained:
            # Between the first two faults (or mid-run): outside every fault's window.
            inject_at = (schedule[0][0] - 8) if schedule else opts.duration_s / 2
        try:
            for at, name in schedule:
                if inject_at is not None and at > inject_at:
                    self._sleep_until(inject_at)
                    self._inject_unexplained()
                    inject_at = None
                self._sleep_until(at)
                progress(f"fault {name}")
                result = self.inject(name)
                self.faults.append(result)
                rec = result.recovery_s
                progress(f"  outage {result.outage_s:.2f} s, recovery "
                         f"{'never' if rec is None else f'{rec:.2f} s'}: {result.detail}")
            if inject_at is not None:
                self._sleep_until(inject_at)
                self._inject_unexplained()
            self._sleep_until(opts.duration_s)
        finally:
            progress("stopping the load; final sync and checks")
            for w in self.writers:
                w.paused.set()
            self.api_writer.paused.set()
            time.sleep(3)  # the last writes' events reach the subscriber
            self.stop.set()
            for t in threads:
                t.join(timeout=130)
        return self.finish(progress)

    def _sleep_until(self, offset: float) -> None:
        delay = self.started + offset - time.time()
        if delay > 0:
            time.sleep(delay)

    def finish(self, progress: Callable[[str], None]) -> dict[str, Any]:
        assert self.log is not None
        finals = [self.launcher.run_once("final") for _ in range(2)]
        lost: list[dict[str, Any]] = []
        rows = self.ledger.snapshot()
        for side, url in (("local", self.local_url()), ("cluster", self.cluster_url(direct=True))):
            with psycopg.connect(url, autocommit=True) as conn:
                for miss in missing_or_stale(conn, rows):
                    lost.append({"side": side, **miss})
        self._stop_stack()
        errors = logscan.scan({
            "postgresql": self.pg.log_file, "api": self.api_log,
            **{_source(p): p for p in sorted(self.logs_dir.glob("*.log"))},
        })
        windows = [logscan.Window(f.name, _dt(f.window[0]), _dt(f.window[1]), EXPLAINS[f.name])
                   for f in self.faults]
        windows.append(logscan.Window("setup", _dt(self.setup_started), _dt(self.started),
                                      EXPLAINS["setup"]))
        unexplained = logscan.match(errors, windows, slack=timedelta(seconds=SLACK_S))
        always = [logscan.Window(reason, _dt(0), _dt(time.time() + 86400), patterns)
                  for reason, patterns in KNOWN.items()]
        known = [e for e in unexplained if logscan.match([e], always) == []]
        unexplained = [e for e in unexplained if e not in known]
        end = self.started + self.options.duration_s
        samples = sorted((s for r in self.readers for s in r.samples if s.at <= end),
                         key=lambda s: s.at)
        fault_windows = [(f.window[0] - SLACK_S, f.window[1] + SLACK_S) for f in self.faults]
        minutes = report.per_minute(samples, fault_windows, self.started)
        for m in minutes:
            loads = [v for at, v in self.load_poller.values
                     if v is not None and int((at - self.started) // 60) == m["minute"]]
            m["load_avg"] = round(max(loads), 1) if loads else None
        runs = [r.ended_at - r.started_at for r in self.launcher.runs if r.succeeded]
        p95s = [m["p95_ms"] for m in minutes if m["p95_ms"] is not None]
        max_p95 = max(p95s) if p95s else None
        lag = [(at, v * self.options.compress) for at, v in self.lag_poller.values
               if v is not None]
        # Checked outside fault windows, like the p95: inside one the sync is down by design
        # and its return is what recovery_s measures. Reported either way.
        max_lag = max((v for at, v in lag if not report.in_any(at, fault_windows)),
                      default=None)
        max_lag_all = max((v for _, v in lag), default=None)
        failed_outside = [s for s in samples if not s.ok
                          and not report.in_any(s.at, fault_windows)]
        v = report.verdict(unexplained=len(unexplained), lost_rows=len(lost),
                           max_p95_ms=max_p95, faults=self.faults, max_lag_s=max_lag,
                           reads=len(samples))
        v.check("reads_outside_faults", not failed_outside,
                f"{len(failed_outside)} read(s) failed outside every fault window")
        v.check("final_sync", finals[-1].succeeded, "the final sync run failed")
        seen = self.subscriber.seen.get("tasks", set())
        unseen = [t for t in self.api_writer.created if t not in seen]
        v.check("events", not unseen and self.subscriber.resets == 0 and
                self.subscriber.events > 0,
                f"/events: {len(unseen)} task(s) created through the API never reached the "
                f"subscriber ({self.subscriber.resets} reset(s), {self.subscriber.events} "
                "events)")
        v.check("faults_run", len(self.faults) == len(self._schedule()),
                "not every scheduled fault ran")
        plot = self.dir / "soak.png"
        report.plot(plot, origin=self.started, minutes=minutes, samples=samples, lag=lag,
                    faults=self.faults,
                    title=f"cesar soak: {self.options.duration_s / 60:g} min, compress "
                          f"{self.options.compress:g} (sync every {self.options.cycle_s:.2f} s)")
        result = {
            "ok": v.ok,
            "unexplained_errors": [e.as_dict() for e in unexplained],
            "lost_rows": len(lost),
            "max_p95_ms": max_p95,
            "faults": [f.as_dict() for f in self.faults],
            "failures": v.failures,
            "checks": v.checks,
            "duration_s": round(time.time() - self.started, 1),
            "compress": self.options.compress,
            "cycle_s": round(self.options.cycle_s, 3),
            "seed": self.options.seed,
            "max_sync_lag_s": None if max_lag is None else round(max_lag, 1),
            "max_sync_lag_in_faults_s": None if max_lag_all is None else round(max_lag_all, 1),
            "p95_per_minute": minutes,
            "reads": {"count": len(samples), "failed": sum(not s.ok for s in samples),
                      "failed_outside_faults": len(failed_outside)},
            "writes": {"acknowledged": self.ledger.acknowledged,
                       "in_doubt": self.ledger.in_doubt, "rows_checked": len(rows),
                       "through_api": len(self.api_writer.created),
                       "writer_failures": {**{w.side: w.failures for w in self.writers},
                                           "api": self.api_writer.failures},
                       "api_gave_up": self.api_writer.gave_up},
            "events": {"received": self.subscriber.events,
                       "reconnects": self.subscriber.reconnects,
                       "resets": self.subscriber.resets, "api_tasks_unseen": len(unseen),
                       # Where the unseen ones were among the API's tasks (0: first).
                       "unseen_positions": [self.api_writer.created.index(t)
                                            for t in unseen[:10]],
                       "api_tasks": len(self.api_writer.created)},
            "lost": lost[:20],
            "sync_runs": {"total": len(self.launcher.runs),
                          "succeeded": sum(r.succeeded for r in self.launcher.runs),
                          # Go to exit, real seconds (the process was started beforehand).
                          "seconds_median": (round(sorted(runs)[len(runs) // 2], 2)
                                             if runs else None),
                          "seconds_max": round(max(runs), 2) if runs else None},
            "load_avg_max": max((v for _, v in self.load_poller.values if v is not None),
                                default=None),
            "explained_errors": _count_by(e.explained_by for e in errors
                                         if e.explained_by and e not in known),
            "known_errors": _count_by(e.explained_by for e in known),
            "injected_unexplained_at": (None if self.injected_error_at is None
                                        else _dt(self.injected_error_at).isoformat()),
            "plot": str(plot),
            "logs": str(self.logs_dir),
            "state_dir": str(self.state_dir) if self.options.keep else None,
        }
        (self.sync_dir / ".env").unlink(missing_ok=True)  # generated credentials
        if not self.options.keep:
            shutil.rmtree(self.state_dir / "pgdata", ignore_errors=True)
            shutil.rmtree(self.state_dir / "backups", ignore_errors=True)
        return result

    def _stop_stack(self) -> None:
        launcher = getattr(self, "launcher", None)
        if launcher is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                launcher.close()
        if self.api_proc is not None and self.api_proc.poll() is None:
            self.api_proc.send_signal(signal.SIGTERM)
            try:
                self.api_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.api_proc.pid, signal.SIGKILL)
                self.api_proc.wait()
        if self.proxy is not None:
            self.proxy.stop()
        self.pg.down()
        if self.log is not None:
            self.log.close()

    def abort(self) -> None:
        """Stop everything a failed run started (the data directory is left for a look)."""
        self.stop.set()
        with contextlib.suppress(Exception):  # best effort on the way out
            self._stop_stack()


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _source(path: Path) -> str:
    return path.stem


def _count_by(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def soak(options: Options, settings: Settings,
         progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    if options.duration_s < 60:
        raise ConfigError("--duration must be at least 1m (a minute of p95 is the unit)")
    if not 1 <= options.compress <= 600:
        raise ConfigError("--compress must be between 1 and 600 (48: a day of 5-minute cycles "
                          "in 30 minutes)")
    unknown = [f for f in options.faults if f not in ALL_FAULTS]
    if unknown:
        raise ConfigError(f"unknown fault(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(ALL_FAULTS)}")
    if settings.environment != "development":
        raise ConfigError(f"the soak runs a stack of its own in development only, but "
                          f"ENVIRONMENT={settings.environment}")
    run = Soak(options, settings)
    try:
        return run.run(progress)
    except BaseException:
        run.abort()
        raise


__all__ = ["ALL_FAULTS", "LOCAL_DB", "Options", "parse_duration", "soak"]
