"""The embedded PostgreSQL: the development default when no database URL is configured.

It runs the PostgreSQL binaries shipped by the ``pgserver`` package (or those in
``CESAR_PG_BINDIR``), configured the way the application meets a real server: TCP on 127.0.0.1
only, SCRAM-SHA-256 password authentication, and the application logging in with its own roles,
never the superuser. When the build has SSL (pgserver's does not; Debian's does) the server also
serves TLS with a CA generated here, and the cluster stand-in's URL uses ``sslmode=verify-full``.
The superuser is reachable only through the unix socket in a directory that only the server's
owner (and root) can enter.

Layout under the state directory (``.cesar/`` by default, gitignored)::

    pgdata/        the cluster's data directory (survives ``down``)
    run/           the unix socket
    tls/           ca.crt (public), server.crt/server.key (owned by the server's user)
    log/postgres.log
    backups/       the WAL archive (archive_command, always on) and base backups: cesar.backup
    stack.json     port, role names and generated passwords (mode 0600)

Two databases stand for the two sides of the design: ``cesar_local`` (the developer's local
PostgreSQL) and ``cesar_cluster`` (the stand-in for the CockroachDB cluster).

Roles: ``cesar_app`` (NOLOGIN) holds every grant and owns every object; the two logins
``cesar_app_a`` and ``cesar_app_b`` are its members and alternate for password rotation. Each
login's sessions start with ``SET ROLE cesar_app`` (a role default), so what either creates is
owned by ``cesar_app`` and privileges never drift between the two.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from cesar.config import DEV_STATE_FILE
from cesar.credentials import APP_ROLE, LOGINS, new_password, write_private
from cesar.db import urls
from cesar.db.sockets import free_port, unix_socket_dir
from cesar.errors import ConfigError, OperationFailed

SUPERUSER = "postgres"
LOCAL_DB = "cesar_local"
CLUSTER_DB = "cesar_cluster"
HOST = "127.0.0.1"
RUN_AS = "cesar-pg"  # system user that owns the server when we run as root
STATE_FILE = DEV_STATE_FILE
# The longest a committed transaction waits before its WAL segment is archived: the RPO bound.
ARCHIVE_TIMEOUT = 10


@dataclass
class StackState:
    """What ``up`` decided once and must keep: the port and the generated credentials."""

    port: int
    passwords: dict[str, str]
    active_login: str = LOGINS[0]
    # A rotation in progress keeps its new credential here, as *pending*, before the database
    # is touched (see cesar/rotate/rotator.py); the active login keeps serving until it is switched.
    pending_login: str | None = None
    pending_password: str | None = None
    socket_dir: str = ""
    tls: bool = False  # True when the server's build has SSL (pgserver's does not)
    created_at: float = field(default_factory=time.time)

    def url(self, dbname: str, login: str | None = None, *, ca_file: Path | None = None) -> str:
        login = login or self.active_login
        if ca_file is not None:
            params = {"sslmode": "verify-full", "sslrootcert": str(ca_file)}
        else:
            params = {"sslmode": "disable"}
        return urls.build(
            user=login, password=self.passwords[login], host=HOST, port=self.port,
            dbname=dbname, **params,
        )


class EmbeddedPostgres:
    """One embedded server rooted at ``state_dir``."""

    def __init__(
        self, state_dir: Path, port: int | None = None, bindir: Path | None = None,
        *, extra_listen: Sequence[str] = (), allow_networks: Sequence[str] = (),
    ) -> None:
        """``extra_listen`` adds addresses beyond 127.0.0.1 (e.g. the controller's end of the
        test hosts' veth link) and ``allow_networks`` admits those CIDR networks in pg_hba.conf
        with SCRAM passwords, the superuser refused. Both empty (the default): loopback only."""
        self.state_dir = Path(state_dir).absolute()
        self.requested_port = port
        self.bindir = bindir
        self.extra_listen = tuple(str(ipaddress.ip_address(a)) for a in extra_listen)
        self.allow_networks = tuple(str(ipaddress.ip_network(n)) for n in allow_networks)
        self.pgdata = self.state_dir / "pgdata"
        self.tls_dir = self.state_dir / "tls"
        self.log_file = self.state_dir / "log" / "postgres.log"
        self.state_file = self.state_dir / STATE_FILE

    # ---------------------------------------------------------------- state
    def load_state(self) -> StackState | None:
        if not self.state_file.exists():
            return None
        try:
            data = json.loads(self.state_file.read_text())
            # Handed over for the configuration and backups (save_state), not state.
            data.pop("urls", None)
            data.pop("server", None)
            return StackState(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{self.state_file} is unreadable ({exc}); move it aside and run `invoke up` again"
            ) from None

    def save_state(self, state: StackState) -> None:
        # The URLs ride in the same 0600 file, written in one atomic replace, so a rotation's
        # new password and the URL that carries it land together; config.dev_urls reads them.
        handed = {"urls": {"local": self.local_url(state), "cluster": self.cluster_url(state)},
                  "server": self._server_handover(state)}
        write_private(self.state_file, json.dumps({**asdict(state), **handed}, indent=2) + "\n")

    def _server_handover(self, state: StackState) -> dict[str, object]:
        """What backups need of this server (config.dev_server reads it back)."""
        try:
            bindir: str | None = str(self.bindir or pg_bindir())
        except ConfigError:
            bindir = None  # no pgserver: the backup then needs CESAR_PG_BINDIR
        return {"socket_dir": state.socket_dir, "port": state.port, "superuser": SUPERUSER,
                "database": LOCAL_DB, "data_dir": str(self.pgdata), "bindir": bindir}

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    def local_url(self, state: StackState) -> str:
        return state.url(LOCAL_DB)

    def cluster_url(self, state: StackState) -> str:
        """The stand-in for CockroachDB: ``verify-full`` whenever the server has TLS."""
        return state.url(CLUSTER_DB, ca_file=self.ca_file if state.tls else None)

    # ---------------------------------------------------------------- lifecycle
    def is_initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def pid(self) -> int | None:
        """The postmaster's pid if it is running, from ``postmaster.pid``."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def up(self) -> tuple[StackState, list[str]]:
        """Initialise (first time), configure and start the server; bootstrap roles and
        databases. Idempotent: a second call on a running server does one socket query."""
        done: list[str] = []
        bindir = self.bindir or pg_bindir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        owner = _server_owner()
        state = self.load_state()
        port = self.requested_port or (state.port if state else None) or free_port()
        if state is None:
            state = StackState(port=port, passwords={name: new_password() for name in LOGINS})
        state.port = port
        state.socket_dir = str(self._socket_dir(owner))
        state.tls = ssl_supported(bindir)

        if not self.is_initialised():
            self._initdb(bindir, owner)
            done.append(f"initialised {self.pgdata}")
        if state.tls:
            # Imported here: `cryptography` is a development dependency, and the hosts import
            # this module (through the CLI) with the runtime dependencies only.
            from cesar.dev import tls

            tls.ensure_server_certificates(self.tls_dir, owner_uid=owner.pw_uid if owner else None,
                                           extra_ips=self.extra_listen)
        changed = self._write_config(state)
        running = self.pid() is not None
        if running and changed:
            self._pg_ctl(bindir, owner, "restart", "-m", "fast")
            done.append(f"restarted PostgreSQL (configuration changed), port {state.port}")
        elif not running:
            self._pg_ctl(bindir, owner, "start")
            done.append(f"started PostgreSQL on {HOST}:{state.port}")
        self.save_state(state)
        done.extend(self._bootstrap(state))
        return state, done

    def down(self) -> bool:
        """Stop the server (fast shutdown: clean, no data lost). False if it was not running."""
        if self.pid() is None:
            return False
        self._pg_ctl(self.bindir or pg_bindir(), _server_owner(), "stop", "-m", "fast")
        return True

    def restart(self) -> None:
        self._pg_ctl(self.bindir or pg_bindir(), _server_owner(), "restart", "-m", "fast")

    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        state = self.load_state()
        if state is None:
            raise OperationFailed("the embedded PostgreSQL was never started: run `invoke up`")
        return psycopg.conninfo.make_conninfo(
            host=state.socket_dir, port=state.port, user=SUPERUSER, dbname=dbname
        )

    # ---------------------------------------------------------------- internals
    def _socket_dir(self, owner: pwd.struct_passwd | None) -> Path:
        # A deep checkout's state directory may not fit a unix socket path: then /tmp.
        path = unix_socket_dir(self.state_dir / "run")
        path.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        path.chmod(0o700)
        return path

    def _initdb(self, bindir: Path, owner: pwd.struct_passwd | None) -> None:
        # A new cluster is a new database system: the old archive and backups cannot serve it
        # (its WAL restarts at timeline 1 under the same names), so they are kept aside.
        wal = self.backup_repo / "wal"
        if wal.is_dir() and any(not p.name.startswith(".") for p in wal.iterdir()):
            aside = self.backup_repo.with_name(f"backups.before-{int(time.time())}")
            self.backup_repo.rename(aside)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        (self.state_dir / "log").mkdir(exist_ok=True)
        if owner is not None:
            _make_traversable(self.state_dir)
            for path in (self.pgdata, self.state_dir / "log"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run(
            [str(bindir / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER,
             "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
             "--locale=C", "--no-instructions"],
            owner, "initdb",
        )

    def _write_config(self, state: StackState) -> bool:
        """Write our settings and pg_hba.conf; True when the running server must restart."""
        conf = (
            "# Written by cesar (cesar/dev/embedded.py) on every `invoke up`; edits are lost.\n"
            f"listen_addresses = '{', '.join((HOST, *self.extra_listen))}'\n"
            f"port = {state.port}\n"
            f"unix_socket_directories = '{state.socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            "password_encryption = 'scram-sha-256'\n"
            + (
                "ssl = on\n"
                f"ssl_cert_file = '{self.tls_dir / 'server.crt'}'\n"
                f"ssl_key_file = '{self.tls_dir / 'server.key'}'\n"
                if state.tls else "ssl = off\n"
            )
            + self._archive_config(state)
            + "max_connections = 200\n"
            # Who connected, beside each failed login's FATAL line (mtail counts those).
            "log_connections = on\n"
            "fsync = on\n"
        )
        hba = (
            "# Written by cesar: the superuser only over the private unix socket;\n"
            "# everyone else over TCP on loopback with SCRAM-SHA-256 passwords.\n"
            f"local   all  {SUPERUSER}  trust\n"
            f"local   replication  {SUPERUSER}  trust\n"
            "local   all  all       reject\n"
            f"host    all  {SUPERUSER}  {HOST}/32  reject\n"
            f"host    all  all       {HOST}/32  scram-sha-256\n"
        ) + "".join(
            f"host    all  {SUPERUSER}  {net}  reject\n"
            f"host    all  all       {net}  scram-sha-256\n"
            for net in self.allow_networks
        )
        include = "include_if_exists = 'cesar.conf'\n"
        main_conf = self.pgdata / "postgresql.conf"
        text = main_conf.read_text()
        if include not in text:
            main_conf.write_text(text + "\n" + include)
        changed = _replace_if_different(self.pgdata / "cesar.conf", conf)
        changed |= _replace_if_different(self.pgdata / "pg_hba.conf", hba)
        return changed

    def _archive_config(self, state: StackState) -> str:
        """Continuous WAL archiving into ``backups/`` (cesar.backup): on from the first start,
        so any moment since the first base backup can be restored."""
        from cesar.backup import archive, base

        archive.prepare_repo(self.backup_repo, _server_owner())
        # Development has no backup timer: without this the archive only grows.
        base.prune_wal(self.backup_repo)
        return archive.config_lines(self.backup_repo, ARCHIVE_TIMEOUT)

    @property
    def backup_repo(self) -> Path:
        return self.state_dir / "backups"

    def _pg_ctl(self, bindir: Path, owner: pwd.struct_passwd | None, *action: str) -> None:
        self.log_file.parent.mkdir(exist_ok=True)
        if owner is not None:
            os.chown(self.log_file.parent, owner.pw_uid, owner.pw_gid)
        _run(
            [str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file),
             "-w", "-t", "60", *action],
            owner, f"pg_ctl {action[0]}", log_file=self.log_file,
        )

    def _bootstrap(self, state: StackState) -> list[str]:
        """Create the group role, the two logins and both databases if missing."""
        done: list[str] = []
        with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
            roles = {r for (r,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                [[APP_ROLE, *LOGINS]],
            )}
            dbs = {d for (d,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                [[LOCAL_DB, CLUSTER_DB]],
            )}
            if APP_ROLE not in roles:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(APP_ROLE)))
                done.append(f"created role {APP_ROLE}")
            for login in LOGINS:
                if login in roles:
                    continue
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                        sql.Identifier(login), sql.Literal(state.passwords[login]),
                        sql.Identifier(APP_ROLE),
                    )
                )
                conn.execute(
                    sql.SQL("ALTER ROLE {} SET role = {}").format(
                        sql.Identifier(login), sql.Literal(APP_ROLE)
                    )
                )
                done.append(f"created login {login}")
            for db in (LOCAL_DB, CLUSTER_DB):
                if db not in dbs:
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(db), sql.Identifier(APP_ROLE)))
                    done.append(f"created database {db}")
        return done


# -------------------------------------------------------------------- helpers
def pg_bindir() -> Path:
    """The PostgreSQL binaries of the ``pgserver`` package, found without importing it."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded PostgreSQL needs the pgserver package: run `uv sync` "
            "(or set LOCAL_DB_URL and COCKROACH_DB_URL to use your own servers)"
        )
    bindir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (bindir / "pg_ctl").exists():
        raise ConfigError(f"pgserver is installed but {bindir} has no pg_ctl; reinstall it")
    return bindir


def ssl_supported(bindir: Path) -> bool:
    """Whether this PostgreSQL build can serve TLS (pgserver's cannot; Debian's can)."""
    try:
        out = subprocess.run([str(bindir / "pg_config"), "--configure"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-openssl" in out or "--with-ssl=openssl" in out


def _server_owner() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        _run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
              "--shell", "/usr/sbin/nologin", RUN_AS], None, "useradd")
        return pwd.getpwnam(RUN_AS)


def _make_traversable(path: Path) -> None:
    """Let the server's user reach ``path`` (as root, a checkout may sit under a 0700 dir)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _run(
    cmd: list[str], owner: pwd.struct_passwd | None, what: str, log_file: Path | None = None
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    try:
        subprocess.run(
            cmd, check=True, capture_output=True, text=True, env=env, timeout=120,
            user=owner.pw_uid if owner else None, group=owner.pw_gid if owner else None,
            cwd="/", start_new_session=True,  # the server must outlive this process group
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        tail = _log_reason(log_file) or (detail[-1] if detail else f"exit code {exc.returncode}")
        hint = f"; see {log_file}" if log_file else ""
        raise OperationFailed(f"{what} failed: {tail}{hint}") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{what} did not finish within 120 s") from None


def _log_reason(log_file: Path | None) -> str:
    """The server's own reason for not starting: its last FATAL or PANIC line, after what the
    same process said just before it that was not routine (``Unix-domain socket path ... is
    too long`` precedes ``could not create any Unix-domain sockets``), without their prefixes;
    empty when the log has none."""
    try:
        with open(log_file or "", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    routine = ("starting PostgreSQL", "listening on", "database system is")
    # this start only: an earlier start's reason is not this one's
    first = max((i for i, line in enumerate(lines) if "starting PostgreSQL" in line), default=0)
    for i in range(len(lines) - 1, first - 1, -1):
        if "FATAL:" in lines[i] or "PANIC:" in lines[i]:
            pid = lines[i].split("]", 1)[0]
            picked = [line for line in lines[max(first, i - 3):i]
                      if line.startswith(pid) and not any(r in line for r in routine)]
            return " / ".join(line.split(":  ", 1)[-1].strip() for line in [*picked, lines[i]])
    return ""


def _replace_if_different(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    # Keep the file owned like its directory (the server's user when we run as root).
    st = path.parent.stat()
    path.write_text(text)
    os.chown(path, st.st_uid, st.st_gid)
    return True


def tls_bindir() -> Path | None:
    """The newest PostgreSQL build with SSL among Debian's packages (/usr/lib/postgresql/*/bin),
    or None: what a verify-full server (the test hosts', the TLS tests') runs on."""
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "postgres").exists() and ssl_supported(bindir):
            return bindir
    return None


