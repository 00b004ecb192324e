"""Zero-downtime rotation of the application's database password.

Two login roles (``cesar_app_a``, ``cesar_app_b``) are members of one role (``cesar_app``) that
holds every grant. The application uses one of them, the *active* login; a rotation gives the
other, *inactive*, login a new password, proves it works, switches the application to it and,
only after a grace period, invalidates the previous login's password. At every moment the
application holds at least one valid credential.

Steps, each recorded before the next begins, so that a run interrupted anywhere (even by
SIGKILL) is resumed by the next one:

``preflight``  take the lock (a lease in the application's database); the login the database
               records as active is the one in the primary store (else the store is stale and
               the run stops); the active credential, the admin connection and the cluster
               work; the secondary stores are usable (tools present, vault decrypts)
``create``     generate a strong password and persist it as *pending* in the primary store,
               before the database is touched
``set``        ``ALTER ROLE inactive WITH PASSWORD 'SCRAM-SHA-256$...'``: a verifier computed
               here, so the plaintext never reaches the server, its logs or this tool's output
``test``       fresh connections with the pending credential (``verify-full`` outside
               development) to every database the application uses, with a write probe that is
               rolled back
``finish``     record the new login as active in the database, then switch the primary store,
               then the secondary stores (Ansible Vault and a rolling restart, Pulumi)
``retire``     once the previous login has no session left on the server, or the grace period
               ran out (the remaining sessions are then named): ``ALTER ROLE previous WITH
               PASSWORD NULL``

If ``test`` fails, nothing is switched: the inactive login is reset to its previous password
verifier and the pending credential dropped; the next attempt uses a new password; after
``max_attempts`` failures the run stops and says what a person must look at.

Every step is appended to a JSON Lines audit log (who, when, which login, step, outcome);
never a password or a verifier.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cesar.console import first_line
from cesar.credentials import LOGINS, new_password, write_private
from cesar.db import engines, lease, require_tls
from cesar.errors import ConfigError, OperationFailed
from cesar.rotate import record as rotate_record
from cesar.rotate import scram
from cesar.rotate.stores import Credential, PrimaryStore, SecondaryStore

STEPS = ("preflight", "create", "set", "test", "finish", "retire")
STATE_FILE = "rotation.json"
AUDIT_FILE = "rotation-audit.jsonl"
# The rotation lock: one row of rotation_lease (migration 014) in the application's database,
# so two operators, two checkouts or a CI job cannot rotate at once (cesar.db.lease: expiry by the
# database clock, a fencing generation checked inside the transaction that switches the record,
# a killed holder of this host taken over at once, a dead one elsewhere after LOCK_SECONDS).
LOCK_TABLE = lease.LeaseTable(
    "rotation_lease", key=rotate_record.NAME, what="the rotation lock", extra=("operator",),
    after_loss="this rotation stopped; run `invoke rotate-password --status`, then again")
LOCK_SECONDS = 30.0
LOCK_SECONDS_ENV = "CESAR_ROTATE_LOCK_SECONDS"  # test hook: a shorter lease
FAULT_ENV = "CESAR_ROTATE_KILL_AFTER"  # test hook: SIGKILL this process right after a step


@dataclass
class RotationState:
    """Progress of the current rotation (``rotation.json``, mode 0600), plus the last one."""

    id: str | None = None
    step: str | None = None  # the last step completed
    from_login: str | None = None
    to_login: str | None = None
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    retire_after: float | None = None
    # The inactive login's verifier before `set`, to put it back if `test` fails. A hash, not
    # a password, but still kept only here (0600) and never in the audit log.
    previous_verifier: str | None = None
    finished_stores: list[str] = field(default_factory=list)
    last: dict[str, Any] | None = None

    @property
    def in_progress(self) -> bool:
        return self.id is not None


@dataclass
class Report:
    rotation_id: str | None
    from_login: str | None
    to_login: str | None
    steps: list[str]
    retired: bool
    retire_after: float | None
    attempts: int
    # Sessions of the previous login still open when it was retired at the end of the grace.
    remaining_sessions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Audit:
    """Append-only JSON Lines log; every line is fsynced before the step goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.who = f"{getpass.getuser()}@{socket.gethostname()}"

    def __call__(self, rotation_id: str | None, step: str, outcome: str, *,
                 login: str | None = None, **extra: Any) -> None:
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "rotation": rotation_id, "step": step, "outcome": outcome, "login": login,
                  "who": self.who, **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]



class Rotator:
    def __init__(
        self,
        primary: PrimaryStore,
        secondaries: list[SecondaryStore],
        *,
        state_dir: Path,
        environment: str = "development",
        grace_seconds: float = 300.0,
        max_attempts: int = 3,
        audit_path: Path | None = None,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.primary = primary
        self.secondaries = secondaries
        self.state_dir = state_dir
        self.environment = environment
        self.grace_seconds = grace_seconds
        self.max_attempts = max_attempts
        self.audit = Audit(audit_path or state_dir / AUDIT_FILE)
        self.progress = progress
        self.state_path = state_dir / STATE_FILE
        # Checks, inside a writing transaction, that this process still holds the rotation
        # lock (set while the lock is held).
        self._fence: Callable[[psycopg.Connection], None] | None = None
        self._lease: lease.Lease | None = None
        # Backend ids of this process's own lock connections: not sessions to wait for at retire.
        self._own_sessions: set[str] = set()

    # ---------------------------------------------------------------- state
    def load(self) -> RotationState:
        if not self.state_path.exists():
            return RotationState()
        try:
            return RotationState(**json.loads(self.state_path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.state_path} is unreadable ({exc}); "
                              "inspect it, then move it aside to start over") from None

    def save(self, st: RotationState) -> None:
        write_private(self.state_path, json.dumps(asdict(st), indent=2) + "\n")

    def _done(self, st: RotationState, step: str, *, login: str | None, **extra: Any) -> None:
        st.step = step
        self.save(st)
        self.audit(st.id, step, "ok", login=login, **extra)
        self.progress(f"{step}: ok" + (f" ({login})" if login else ""))
        self._still_locked()  # a lost lock stops the run before its next step
        if os.environ.get(FAULT_ENV) == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def _still_locked(self) -> None:
        """Raise unless this run still holds the lock: a round trip, so a run that was paused
        past its lease (and taken over) finds out before it changes anything more."""
        if self._lease is not None:
            self._lease.check(self._lease.conn)

    def _lock_connection(self) -> psycopg.Connection:
        active = self.primary.active()
        try:
            conn = psycopg.connect(self.primary.record_url(active), autocommit=True,
                                   connect_timeout=10, application_name="cesar-rotate-lock")
        except psycopg.OperationalError as exc:
            raise OperationFailed(
                f"preflight: the active credential ({active.login}) does not connect: "
                f"{first_line(exc)}; fix that before rotating") from None
        self._own_sessions.add(rotate_record.session_id(conn))
        return conn

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold the rotation lock (a lease in the application's database) while working."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conn = self._lock_connection()
        try:
            try:
                held = lease.Lease.acquire(conn, self._lock_connection, LOCK_TABLE,
                                           seconds=float(os.environ.get(LOCK_SECONDS_ENV,
                                                                        LOCK_SECONDS)),
                                           wait_seconds=0,
                                           values={"operator": self.audit.who})
            except lease.LeaseBusy as exc:
                raise OperationFailed(f"another rotation is running: {exc.info.describe()}; "
                                      "wait for it to finish") from None
            except psycopg.errors.UndefinedTable:
                raise ConfigError("the database has no rotation_lease table (migration 014): "
                                  "run `invoke migrate` (or `cesar migrate up`) before "
                                  "rotating") from None
            self._lease, self._fence = held, held.fence
            try:
                with held:
                    yield
            finally:
                self._lease = self._fence = None
        finally:
            conn.close()

    # ---------------------------------------------------------------- public
    def status(self) -> dict[str, Any]:
        st = self.load()
        active = self.primary.active().login
        pending = None
        if st.in_progress:
            pending = {"id": st.id, "step": st.step, "from_login": st.from_login,
                       "to_login": st.to_login, "attempt": st.attempt,
                       "retire_after": st.retire_after}
        return {"active_login": active, "store": self.primary.name,
                "secondary_stores": [s.name for s in self.secondaries],
                "last_rotation": st.last, "pending": pending,
                "audit_log": str(self.audit.path)}

    def plan(self) -> dict[str, Any]:
        """What a run would do now (``--dry-run``): nothing is changed."""
        st = self.load()
        active = self.primary.active().login
        if st.in_progress:
            todo = STEPS[STEPS.index(st.step or "preflight") + 1:]
            return {"resume": st.id, "from_login": st.from_login, "to_login": st.to_login,
                    "steps": list(todo), "retire_after": st.retire_after}
        return {"resume": None, "from_login": active, "to_login": _other(active),
                "steps": list(STEPS), "grace_seconds": self.grace_seconds,
                "stores": [self.primary.name, *(s.name for s in self.secondaries)]}

    def run(self, *, wait: bool = True) -> Report:
        if not self.load().in_progress:
            # Before the lock: a stale file's password may no longer open a connection.
            rotate_record.check_not_stale(self._record(), self.primary.active().login,
                                          self.primary.source)
        with self._lock():
            st = self.load()
            steps: list[str] = []
            if not st.in_progress:
                st = self._preflight(st)
                steps.append("preflight")
            elif st.step in ("preflight", "create", "set", "test"):
                self.audit(st.id, "resume", "ok", login=st.to_login, from_step=st.step)
                self.progress(f"resuming rotation {st.id} after step {st.step}")
                record = self._record()
                self._check_connections(st, record)
                if record.active_login not in (st.from_login, st.to_login) or (
                        record.active_login == st.to_login and record.rotation_id != st.id):
                    raise ConfigError(
                        f"{self.state_path} holds rotation {st.id} ({st.from_login} -> "
                        f"{st.to_login}), but the database records {record.describe()}: another "
                        "rotation ran since; move that file aside and run again")
            if st.step in ("preflight", "create", "set"):
                steps += self._create_set_test(st)
            if st.step == "test":
                self._finish(st)
                steps.append("finish")
            report = Report(st.id, st.from_login, st.to_login, steps, False, st.retire_after,
                            st.attempt)
            if st.step == "finish" and self._retire(st, wait=wait, report=report):
                report.retired = True
                report.steps.append("retire")
            return report

    # ---------------------------------------------------------------- steps
    def _check_connections(self, st: RotationState,
                           record: rotate_record.Record | None = None) -> None:
        active = self.primary.active()
        app_urls = self.primary.urls_for(active)
        for url in app_urls:  # all judged before any is dialled
            require_tls(url, f"the application URL in the {self.primary.name} store",
                        self.environment)
        for url in app_urls:
            try:
                psycopg.connect(url, connect_timeout=10).close()
            except psycopg.OperationalError as exc:
                hint = (f"; if {self.primary.source} is stale (the database records "
                        f"{record.describe()}), fetch the current credential"
                        if record is not None else "")
                raise OperationFailed(
                    f"preflight: the active credential ({active.login}) does not connect: "
                    f"{first_line(exc)}{hint}; fix that before rotating") from None
        with self.primary.admin() as admin:
            engine = engines.of(admin)
            if engine.passwords_need_tls and not admin.pgconn.ssl_in_use:
                raise ConfigError(
                    f"the {engine.label} cluster is insecure (no TLS): it has no passwords to "
                    "rotate; rotation needs a secure cluster")

    def _record(self) -> rotate_record.Record:
        """The database's record of the active login, read by the admin (so that a stale file
        whose password no longer works is still named as stale); written from the primary
        store's credential the first time."""
        active = self.primary.active()
        with self.primary.admin() as admin:
            record = rotate_record.read(admin)
        if record is None:
            with psycopg.connect(self.primary.record_url(active), autocommit=True,
                                 connect_timeout=10) as conn:
                record = rotate_record.ensure(conn, active.login, self.audit.who)
        return record

    def _preflight(self, st: RotationState) -> RotationState:
        record = self._record()
        active = self.primary.active().login
        rotate_record.check_not_stale(record, active, self.primary.source)
        self._check_connections(st, record)
        for store in self.secondaries:
            store.check()
        if active not in LOGINS:
            raise ConfigError(f"the active login {active} is not one of {', '.join(LOGINS)}; "
                              "rotation alternates between those two")
        new = RotationState(id=uuid.uuid4().hex[:12], from_login=active, to_login=_other(active),
                            started_at=time.time(), last=st.last)
        stale = self.primary.pending()
        if stale is not None:  # left by a create that died before it was recorded
            self.primary.clear_pending()
        self._done(new, "preflight", login=new.to_login, from_login=active)
        return new

    def _create_set_test(self, st: RotationState) -> list[str]:
        steps: list[str] = []
        assert st.to_login is not None
        while True:
            if st.step == "preflight":
                st.attempt += 1
                self.primary.put_pending(Credential(st.to_login, new_password()))
                self._done(st, "create", login=st.to_login, attempt=st.attempt)
                steps.append("create")
            pending = self.primary.pending()
            if pending is None:
                raise OperationFailed(f"the pending credential disappeared from the "
                                      f"{self.primary.name} store; run the rotation again")
            try:
                if st.step == "create":
                    self._set(st, pending)
                    steps.append("set")
                self._test(pending)
            except lease.LeaseLost:
                raise  # another run holds the lock now: it decides, this one touches nothing
            except OperationFailed as exc:
                self._undo(st, exc)
                if st.attempt >= self.max_attempts:
                    self._abandon(st, exc)
                continue
            self._done(st, "test", login=st.to_login)
            steps.append("test")
            return steps

    def _set(self, st: RotationState, pending: Credential) -> None:
        with self.primary.admin() as admin:
            if st.previous_verifier is None:
                st.previous_verifier = read_verifier(admin, pending.login) or ""
                self.save(st)
            try:
                self._still_locked()
                admin.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                    sql.Identifier(pending.login), sql.Literal(scram.verifier(pending.password))))
            except psycopg.Error as exc:
                raise OperationFailed(f"set: the database refused the new password for "
                                      f"{pending.login}: {first_line(exc)}") from None
        self._done(st, "set", login=pending.login)

    def _test(self, pending: Credential) -> None:
        for url in self.primary.urls_for(pending):
            require_tls(url, f"test: the application URL in the {self.primary.name} store",
                        self.environment)
            try:
                with psycopg.connect(url, connect_timeout=10,
                                     application_name="cesar-rotate-test") as conn:
                    (user,) = conn.execute("SELECT session_user").fetchone()  # type: ignore[misc]
                    if user != pending.login:
                        raise OperationFailed(f"test: connected as {user}, not {pending.login}")
                    with conn.transaction(force_rollback=True):
                        _write_probe(conn)
            except psycopg.Error as exc:
                raise OperationFailed(f"test: {pending.login} cannot work with its new "
                                      f"password: {first_line(exc)}") from None

    def _undo(self, st: RotationState, exc: OperationFailed) -> None:
        """Put the inactive login back as it was and drop the pending credential."""
        failed_step = "set" if st.step == "create" else "test"
        self.audit(st.id, failed_step, "failed", login=st.to_login, attempt=st.attempt,
                   error=str(exc))
        self.progress(f"attempt {st.attempt} failed: {exc}")
        with self.primary.admin() as admin:
            restore = st.previous_verifier or None
            admin.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(st.to_login or ""),
                sql.Literal(restore) if restore else sql.SQL("NULL")))
        self.primary.clear_pending()
        st.step = "preflight"
        self.save(st)
        self.audit(st.id, "rollback", "ok", login=st.to_login, attempt=st.attempt)

    def _abandon(self, st: RotationState, exc: OperationFailed) -> None:
        self.audit(st.id, "abandon", "failed", login=st.to_login, attempts=st.attempt)
        st.last = {"id": st.id, "from_login": st.from_login, "to_login": st.to_login,
                   "outcome": "abandoned", "finished_at": time.time(), "error": str(exc)}
        login = st.to_login
        active = st.from_login
        cleared = RotationState(last=st.last)
        self.save(cleared)
        raise OperationFailed(
            f"rotation abandoned after {st.attempt} failed attempts; the application still uses "
            f"{active}, nothing was switched. Look at: whether {login} exists, can LOGIN and is "
            "a member of cesar_app; the cluster's allowlist / pg_hba for this host; the "
            f"server's authentication log. Last error: {exc}")

    def _finish(self, st: RotationState) -> None:
        pending = self.primary.pending()
        if pending is None:  # resumed after the primary store was already switched
            pending = self.primary.active()
            if pending.login != st.to_login:
                raise OperationFailed("finish: the pending credential is gone from the "
                                      f"{self.primary.name} store; run the rotation again")
        if "database" not in st.finished_stores:
            with psycopg.connect(self.primary.record_url(self.primary.active()),
                                 autocommit=True, connect_timeout=10) as conn:
                rotate_record.switch(conn, from_login=st.from_login or "",
                                     to_login=pending.login, rotation_id=st.id or "",
                                     who=self.audit.who, fence=self._fence)
            st.finished_stores.append("database")
            self.save(st)
            self.audit(st.id, "switch", "ok", login=pending.login, store="database")
        if self.primary.name not in st.finished_stores:
            self.primary.activate(pending)
            st.finished_stores.append(self.primary.name)
            self.save(st)
            self.audit(st.id, "switch", "ok", login=pending.login, store=self.primary.name)
        for store in self.secondaries:
            if store.name in st.finished_stores:
                continue
            store.activate(pending)
            st.finished_stores.append(store.name)
            self.save(st)
            self.audit(st.id, "switch", "ok", login=pending.login, store=store.name)
        st.finished_at = time.time()
        st.retire_after = st.finished_at + self.grace_seconds
        self._done(st, "finish", login=pending.login, retire_after=st.retire_after)

    def _retire(self, st: RotationState, *, wait: bool,
                report: Report | None = None) -> bool:
        """Retire the previous login once nothing uses it, or when the grace period ran out.

        Every store that feeds a running application must have the new login first: a store
        left out would keep a process on the login about to lose its password.
        """
        assert st.retire_after is not None
        missing = [s for s in ("database", self.primary.name, *(x.name for x in self.secondaries))
                   if s not in st.finished_stores]
        if missing:
            raise OperationFailed(f"retire: the store(s) {', '.join(missing)} do not have "
                                  f"{st.to_login} yet; run the rotation again to switch them")
        announced = False
        with self.primary.admin() as admin:
            while True:
                sessions = [s for s in rotate_record.sessions_of(admin, st.from_login or "")
                            if s.id not in self._own_sessions]
                self._still_locked()
                delay = st.retire_after - time.time()
                if not sessions or delay <= 0:
                    break
                if not wait:
                    self.progress(f"retire of {st.from_login} waits for its {len(sessions)} "
                                  f"open session(s), at most {delay:.0f} s more: run again "
                                  "then (or `--retire-now`)")
                    return False
                if not announced:
                    self.progress(f"grace period: {st.from_login} stays valid until its "
                                  f"{len(sessions)} open session(s) close, at most {delay:.0f} s")
                    announced = True
                time.sleep(min(1.0, delay))
            named = [s.describe() for s in sessions]
            if named:
                self.progress(f"grace period over; {st.from_login} still has "
                              f"{len(named)} open session(s): " + "; ".join(named))
            self._still_locked()
            admin.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD NULL").format(
                sql.Identifier(st.from_login or "")))
        st.last = {"id": st.id, "from_login": st.from_login, "to_login": st.to_login,
                   "outcome": "completed", "finished_at": st.finished_at,
                   "retired_at": time.time(), "remaining_sessions": named}
        self.audit(st.id, "retire", "ok", login=st.from_login, remaining_sessions=named)
        self.progress(f"retire: ok ({st.from_login} can no longer log in)")
        if report is not None:
            report.remaining_sessions = named
        self.save(RotationState(last=st.last))
        return True

    def retire_now(self) -> None:
        """Skip the rest of the grace period of a finished rotation."""
        with self._lock():
            st = self.load()
            if st.step != "finish":
                raise ConfigError("no finished rotation is waiting to retire its previous login")
            st.retire_after = time.time()
            self._retire(st, wait=False)


def _other(login: str) -> str:
    return LOGINS[1] if login == LOGINS[0] else LOGINS[0]


def read_verifier(admin: psycopg.Connection, login: str) -> str | None:
    """The stored password verifier of ``login``, or None where no catalog may show it."""
    query = engines.of(admin).verifier_query
    if query is None:
        # As with a CREATEROLE admin on PostgreSQL below, a failed test then leaves the
        # inactive login with no password.
        return None
    try:
        with admin.transaction():
            row = admin.execute(query, [login]).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        # Only superusers read pg_authid; a CREATEROLE admin cannot, and a failed test then
        # leaves the inactive login with no password (its state after a normal retire).
        return None
    return row[0] if row else None


def _write_probe(conn: psycopg.Connection) -> None:
    """A write the application would make, inside a transaction that is rolled back."""
    exists = conn.execute("SELECT to_regclass('agents') IS NOT NULL").fetchone()
    if exists and exists[0]:
        conn.execute("UPDATE agents SET updated_at = updated_at "
                     "WHERE id = (SELECT id FROM agents ORDER BY id LIMIT 1)")
    else:
        conn.execute("CREATE TABLE cesar_rotation_probe (id INT PRIMARY KEY)")
        conn.execute("INSERT INTO cesar_rotation_probe VALUES (1)")
