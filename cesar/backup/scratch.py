"""A scratch PostgreSQL server recovered from a base backup and the WAL archive to a point.

It runs beside the live server, as the same user, with its own data directory under the
repository's ``scratch/``, listening only on a unix socket of its own, with archiving off (a
restored server must never write into the archive it came from). ``stop`` removes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cesar.backup import archive
from cesar.backup.base import Backup, repo_lock
from cesar.backup.settings import Server
from cesar.db.sockets import free_port, unix_socket_dir
from cesar.errors import OperationFailed


@dataclass
class Scratch:
    server: Server
    pgdata: Path
    socket_dir: Path
    port: int
    log: Path

    def conninfo(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(host=str(self.socket_dir), port=self.port,
                                              user=self.server.user, dbname=dbname)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname), autocommit=True, connect_timeout=10)


def _recovery_conf(scratch: Scratch, target: dict[str, str]) -> str:
    restore = archive.restore_command(scratch.server.repo).replace("'", "''")
    lines = [
        "# A scratch server restored by cesar: no network, no archiving.",
        "listen_addresses = ''",
        f"port = {scratch.port}",
        f"unix_socket_directories = '{scratch.socket_dir}'",
        "unix_socket_permissions = 0700",
        "archive_mode = off",
        "hot_standby = off",
        "max_connections = 20",
        "ssl = off",
        f"restore_command = '{restore}'",
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'current'",
        "logging_collector = off",
    ]
    for key, value in target.items():
        lines.append(f"{key} = '{value}'")
    return "\n".join(lines) + "\n"


def start(server: Server, backup: Backup, target: dict[str, str]) -> Scratch:
    """Copy ``backup`` to a scratch directory and recover it to ``target`` (recovery_target_*
    settings; empty: the end of the archive). Returns once the server is promoted and
    answering; on failure the scratch is removed and the error names the log's reason."""
    root = server.repo / "scratch" / uuid.uuid4().hex[:12]
    scratch = Scratch(server, root / "pgdata", unix_socket_dir(root / "run", "cesar-scratch"),
                      free_port(), root / "postgres.log")
    root.mkdir(mode=0o700, parents=True)
    try:
        if server.owner is not None:
            os.chown(root, server.owner.pw_uid, server.owner.pw_gid)
        with repo_lock(server.repo, exclusive=False):
            archive.run_as(["cp", "-a", backup.path, str(scratch.pgdata)], server.owner,
                           f"copying backup {backup.label}")
        archive.run_as(["mkdir", "-m", "0700", str(scratch.socket_dir)], server.owner, "mkdir")
        for leftover in ("postmaster.pid", "postmaster.opts", "backup_manifest",
                         "cesar-backup.json", "standby.signal"):
            (scratch.pgdata / leftover).unlink(missing_ok=True)
        # Our settings only: the backup's own postgresql.conf may name certificates, ports and
        # an archive_command of the live server (postgresql.auto.conf is read last, so it wins).
        files = {
            "postgresql.conf": "# scratch server: see postgresql.auto.conf\n",
            "postgresql.auto.conf": _recovery_conf(scratch, target),
            "pg_hba.conf": f"local all {server.user} trust\nlocal all all reject\n",
            "recovery.signal": "",
        }
        for name, text in files.items():
            path = scratch.pgdata / name
            path.unlink(missing_ok=True)
            path.write_text(text)
            if server.owner is not None:
                os.chown(path, server.owner.pw_uid, server.owner.pw_gid)
        (scratch.pgdata / "cesar.conf").unlink(missing_ok=True)
        try:
            archive.run_as(
                [str(server.bindir / "pg_ctl"), "-D", str(scratch.pgdata), "-l",
                 str(scratch.log), "-w", "-t", "600", "start"],
                server.owner, "starting the scratch server", timeout=620)
        except OperationFailed:
            raise OperationFailed(f"recovery of backup {backup.label} failed: "
                                  f"{log_reason(scratch.log)}") from None
        _wait_promoted(scratch)
    except BaseException:
        stop(scratch)
        raise
    return scratch


def _wait_promoted(scratch: Scratch, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with scratch.connect() as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            if not (scratch.pgdata / "postmaster.pid").exists():
                raise OperationFailed(f"the scratch server stopped: {log_reason(scratch.log)}"
                                      ) from None
        if time.monotonic() > deadline:
            raise OperationFailed(f"the scratch server did not finish recovery in {timeout} s")
        time.sleep(0.1)


def log_reason(log: Path) -> str:
    """The most telling line of a scratch server's log: its last FATAL or PANIC."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        m = re.search(r"(FATAL|PANIC):\s+(.*)", line)
        if m:
            return m.group(2)
    return lines[-1] if lines else "empty log"


def recovered_to(log: Path) -> str | None:
    """The commit time recovery stopped at, as the scratch server logged it."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r"last completed transaction was at log time ([0-9][^\n]*)", text)
    return found[-1].strip() if found else None


def stop(scratch: Scratch) -> None:
    """Stop (immediate: it is disposable) and remove the scratch server."""
    root = scratch.pgdata.parent
    if (scratch.pgdata / "postmaster.pid").exists():
        with contextlib.suppress(OperationFailed):
            archive.run_as([str(scratch.server.bindir / "pg_ctl"), "-D", str(scratch.pgdata),
                            "-w", "-t", "60", "stop", "-m", "immediate"],
                           scratch.server.owner, "stopping the scratch server", timeout=90)
    shutil.rmtree(root, ignore_errors=True)
    if not scratch.socket_dir.is_relative_to(root):  # the short one under /tmp
        shutil.rmtree(scratch.socket_dir, ignore_errors=True)


@contextlib.contextmanager
def recovered(server: Server, backup: Backup, target: dict[str, str]) -> Iterator[Scratch]:
    scratch = start(server, backup, target)
    try:
        yield scratch
    finally:
        stop(scratch)
