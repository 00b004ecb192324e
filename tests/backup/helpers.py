"""Helpers of the backup tests: a real embedded PostgreSQL of its own (archiving on, as
`invoke up` sets it) with a small table of its own in the local database, and ways to run the
``cesar`` and ``invoke`` commands against it. Fixtures live in conftest.py beside this file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cesar.backup.settings import BackupSettings, Server, resolve
from cesar.dev.embedded import EmbeddedPostgres, pg_bindir
from tests.helpers import REPO, child_env, make_settings, new_state_dir, require


@dataclass
class BackupStack:
    pg: EmbeddedPostgres
    state_dir: Path
    server: Server

    def su(self, dbname: str = "cesar_local") -> psycopg.Connection:
        return psycopg.connect(self.pg.superuser_conninfo(dbname), autocommit=True)

    def env(self) -> dict[str, str]:
        return {**child_env(), "CESAR_STATE_DIR": str(self.state_dir)}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cesar.cli", *args], cwd=REPO,
                              env=self.env(), capture_output=True, text=True, timeout=300)

    def invoke(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO,
                              env=self.env(), capture_output=True, text=True, timeout=300)


def make_stack(prefix: str) -> BackupStack:
    try:
        pg_bindir()
    except Exception as exc:  # noqa: BLE001 - reported as a requirement
        require(False, str(exc))
    state_dir = new_state_dir(prefix)
    pg = EmbeddedPostgres(state_dir)
    pg.up()
    settings = make_settings(state_dir=state_dir)
    server = resolve(settings, BackupSettings(_env_file=None))  # type: ignore[call-arg]
    stack = BackupStack(pg, state_dir, server)
    with stack.su() as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL, "
                     "n int NOT NULL DEFAULT 0)")
        conn.execute("CREATE TABLE notes (body text)")  # no primary key: ordered by row text
        conn.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
        conn.execute("INSERT INTO notes SELECT 'note ' || g FROM generate_series(1, 50) g")
    return stack


def drop_stack(stack: BackupStack) -> None:
    stack.pg.down()
    shutil.rmtree(stack.state_dir, ignore_errors=True)
