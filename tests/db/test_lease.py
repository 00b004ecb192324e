"""A lease whose holder "is on this host and its pid is gone" is taken over at once, without
waiting for expiry. A hostname and a pid do not say that on their own: containers, nspawn
machines and pods share hostnames and have their own pid numbers, and a pid is reused. Here
holder rows are written as another process would leave them, on the real database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from cesar.db import lease

TABLE = lease.LeaseTable("liveness_lease", what="the test lease")


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute(lease.ddl("liveness_lease", "INT"))
        yield c


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hold(conn: psycopg.Connection, pid: int, mark: str) -> None:
    """A live (not expired) lease row left by process ``pid`` of this hostname."""
    host = socket.gethostname()
    conn.execute("INSERT INTO liveness_lease (id, holder, host, pid, expires_at, generation) "
                 "VALUES (1, %s, %s, %s, now() + interval '60 s', 7)",
                 [f"{host}:{pid}:feedbeef:{mark}", host, pid])


def take(conn: psycopg.Connection, fresh_db: str) -> lease.Lease:
    return lease.Lease.acquire(conn, lambda: psycopg.connect(fresh_db, autocommit=True), TABLE,
                               seconds=30, wait_seconds=0)


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip().replace("-", "")


def namespace() -> str:
    return str(os.stat("/proc/self/ns/pid").st_ino)


def start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def ours(start: str = "12345") -> str:
    """The mark of a process of this boot and pid namespace started at ``start``."""
    return f"{boot_id()}.{namespace()}.{start}"


@pytest.mark.parametrize("other", ["pid namespace", "boot"])
def test_a_dead_pid_of_another_namespace_or_boot_waits_for_expiry(
        conn: psycopg.Connection, fresh_db: str, other: str) -> None:
    pid = dead_pid()
    mark = (f"{boot_id()}.1.4242" if other == "pid namespace"
            else f"{'0' * 32}.{namespace()}.4242")
    hold(conn, pid, mark)
    with pytest.raises(lease.LeaseBusy):
        take(conn, fresh_db).release()
    assert conn.execute("SELECT generation FROM liveness_lease").fetchall() == [(7,)]


def test_a_holder_of_this_namespace_whose_pid_is_gone_is_taken_over_at_once(
        conn: psycopg.Connection, fresh_db: str) -> None:
    pid = dead_pid()
    hold(conn, pid, ours())
    taken = take(conn, fresh_db)
    try:
        assert taken.previous is not None and taken.previous.pid == pid
    finally:
        taken.release()


def test_a_reused_pid_is_taken_over_and_a_live_holder_is_not(
        conn: psycopg.Connection, fresh_db: str) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = start_time(live.pid)
        hold(conn, live.pid, ours(started))  # the holder itself, alive
        with pytest.raises(lease.LeaseBusy):
            take(conn, fresh_db).release()
        # The same pid, now another process (started at another time): the holder is gone.
        conn.execute("UPDATE liveness_lease SET holder = %s",
                     [f"{socket.gethostname()}:{live.pid}:feedbeef:"
                      f"{ours(str(int(started) - 1))}"])
        taken = take(conn, fresh_db)
        taken.release()
        assert taken.previous is not None and taken.previous.pid == live.pid
    finally:
        live.kill()
        live.wait()
