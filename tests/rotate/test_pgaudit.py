"""No password in any log: Debian's PostgreSQL 15 with pgaudit logging every statement
(`pgaudit.log = 'all'`, `log_statement = 'all'`, `log_connections = on`) through several
rotations, then every server log, the rotation audit log and the tool's own output searched for
every password the stack has had: zero hits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

from cesar import migrate
from cesar.dev.embedded import CLUSTER_DB, LOCAL_DB, EmbeddedPostgres
from tests.helpers import REPO, child_env, make_settings, new_state_dir, require

DEBIAN_PG15 = Path("/usr/lib/postgresql/15")


def test_rotations_leave_no_password_in_any_log() -> None:
    require((DEBIAN_PG15 / "bin" / "postgres").exists(),
            "Debian's PostgreSQL 15: apt-get install postgresql-15")
    require((DEBIAN_PG15 / "lib" / "pgaudit.so").exists(),
            "pgaudit for PostgreSQL 15: apt-get install postgresql-15-pgaudit")
    state_dir = new_state_dir("pgaudit")
    pg = EmbeddedPostgres(state_dir, bindir=DEBIAN_PG15 / "bin")
    try:
        state, _ = pg.up()
        with psycopg.connect(pg.superuser_conninfo(), autocommit=True) as su:
            su.execute("ALTER SYSTEM SET shared_preload_libraries = 'pgaudit'")
        pg.down()
        state, _ = pg.up()
        for db in (LOCAL_DB, CLUSTER_DB):
            with psycopg.connect(pg.superuser_conninfo(db), autocommit=True) as su:
                su.execute("CREATE EXTENSION IF NOT EXISTS pgaudit")
        with psycopg.connect(pg.superuser_conninfo(), autocommit=True) as su:
            su.execute("ALTER SYSTEM SET pgaudit.log = 'all'")
            su.execute("ALTER SYSTEM SET log_statement = 'all'")
            su.execute("SELECT pg_reload_conf()")
        for db in (LOCAL_DB, CLUSTER_DB):
            migrate.apply_all(state.url(db, ca_file=pg.ca_file if state.tls else None),
                              make_settings(), migrations_dir=REPO / "sql" / "migrations")

        env = {**child_env(), "CESAR_STATE_DIR": str(state_dir),
               "CESAR_PG_BINDIR": str(DEBIAN_PG15 / "bin")}
        passwords = set(state.passwords.values())
        outputs = []
        for _ in range(3):
            run = subprocess.run([sys.executable, "-m", "cesar.cli", "rotate-password",
                                  "--grace", "0", "--json"], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=120)
            outputs += [run.stdout, run.stderr]
            assert run.returncode == 0, run.stderr
            assert json.loads(run.stdout)["retired"] is True
            now = pg.load_state()
            assert now is not None
            passwords |= set(now.passwords.values())
        status = subprocess.run([sys.executable, "-m", "cesar.cli", "rotate-password",
                                 "--status", "--json"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        outputs += [status.stdout, status.stderr]
        assert len(passwords) >= 5  # two first passwords, three new ones

        logs = {path: path.read_text(errors="replace")
                for path in [*state_dir.rglob("*.log"), *state_dir.rglob("*.jsonl"),
                             *(pg.pgdata / "log").glob("*")] if path.is_file()}
        server_log = logs[pg.log_file]
        # The logs did record what happened: pgaudit's lines and the ALTER ROLE statements...
        assert "AUDIT: SESSION" in server_log and "ALTER ROLE" in server_log
        assert "connection authorized" in server_log
        assert "rotation-audit.jsonl" in {p.name for p in logs}
        # ...and no password, anywhere.
        hits = [(str(path), pw[:4] + "...") for path, text in logs.items() for pw in passwords
                if pw in text]
        hits += [("tool output", pw[:4] + "...") for pw in passwords for out in outputs
                 if pw in out]
        assert hits == []
    finally:
        pg.down()
        shutil.rmtree(state_dir, ignore_errors=True)
