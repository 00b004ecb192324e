"""The log matcher: every error line is found, and only a fault that declares it explains it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cesar.soak import logscan
from cesar.soak.run import EXPLAINS, KNOWN

T0 = datetime(2026, 11, 30, 11, 0, 0, tzinfo=UTC)

PG_LOG = """\
2026-11-30 11:00:01.100 UTC [101] LOG:  connection received: host=127.0.0.1 port=5000
2026-11-30 11:00:02.200 UTC [101] ERROR:  relation "nope" does not exist at character 15
2026-11-30 11:00:02.200 UTC [101] STATEMENT:  SELECT * FROM nope
2026-11-30 11:00:03.300 UTC [102] FATAL:  terminating connection due to administrator command
2026-11-30 11:00:04.400 UTC [103] WARNING:  there is no transaction in progress
waiting for server to shut down.... done
"""

API_LOG = """\
2026-11-30 11:00:05,000 INFO uvicorn.error: Started server process [9]
2026-11-30 11:00:06,000 INFO access: 127.0.0.1:5 "GET /agents HTTP/1.1" 200
2026-11-30 11:00:07,000 INFO access: 127.0.0.1:5 "GET /agents HTTP/1.1" 503
2026-11-30 11:00:08,000 ERROR cesar.api.app: unhandled error
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: boom
2026-11-30 11:00:09,000 WARNING psycopg.pool: error connecting in 'pool-1'
Traceback (most recent call last):
RuntimeError: printed straight to stderr
"""

OWN_LOG = """\
2026-11-30T11:00:10.000000+00:00 INFO sync-cron: pid 7: sync done in 0.05 s: moved 3 rows
2026-11-30T11:00:11.000000+00:00 ERROR writer-cluster: OperationalError: server closed the c\
onnection unexpectedly
2026-11-30T11:00:12.000000+00:00 INFO sync-cron: pid 8: cesar: error: cannot connect to the cl\
uster database
"""


def _errors(tmp_path: Path) -> list[logscan.ErrorLine]:
    for name, text in (("postgresql", PG_LOG), ("api", API_LOG), ("soak", OWN_LOG)):
        (tmp_path / f"{name}.log").write_text(text)
    return logscan.scan({n: tmp_path / f"{n}.log" for n in ("postgresql", "api", "soak",
                                                             "absent")})


def test_every_error_line_of_the_three_formats_is_found_with_its_time(tmp_path: Path) -> None:
    errors = _errors(tmp_path)
    found = [(e.source, e.at - T0) for e in errors]
    assert found == [
        ("postgresql", timedelta(seconds=2.2)),  # ERROR
        ("postgresql", timedelta(seconds=3.3)),  # FATAL (the WARNING is not an error)
        ("api", timedelta(seconds=7)),  # an access line answering 503
        ("api", timedelta(seconds=8)),  # ERROR with its traceback
        ("api", timedelta(seconds=9)),  # a traceback after a WARNING: a crash of its own
        ("writer-cluster", timedelta(seconds=11)),  # ERROR, named by the component
        ("sync-cron", timedelta(seconds=12)),  # INFO, but carrying `cesar: error:`
    ]
    # Continuation lines stay with their entry: the statement, the traceback's body.
    assert "STATEMENT:  SELECT * FROM nope" in errors[0].text
    assert "ValueError: boom" in errors[3].text
    assert "RuntimeError: printed straight to stderr" in errors[4].text


def test_an_error_is_explained_only_inside_its_faults_window_and_patterns(tmp_path: Path) -> None:
    errors = _errors(tmp_path)
    restart = logscan.Window("pg_restart", T0 + timedelta(seconds=3), T0 + timedelta(seconds=8),
                             EXPLAINS["pg_restart"])
    unexplained = logscan.match(errors, [restart])
    explained = [e for e in errors if e.explained_by == "pg_restart"]
    # The FATAL of the restart and the 503 during it: explained.
    assert [e.at - T0 for e in explained] == [timedelta(seconds=3.3), timedelta(seconds=7)]
    # A bad statement before the fault, a traceback inside its window (not one of its
    # patterns), and client errors after the window: not explained.
    assert [e.at - T0 for e in unexplained] == [
        timedelta(seconds=2.2), timedelta(seconds=8), timedelta(seconds=9),
        timedelta(seconds=11), timedelta(seconds=12)]


def test_the_same_line_outside_any_window_is_unexplained(tmp_path: Path) -> None:
    errors = _errors(tmp_path)
    cut = logscan.Window("cluster_unreachable", T0 + timedelta(seconds=10.5),
                         T0 + timedelta(seconds=12.5), EXPLAINS["cluster_unreachable"])
    unexplained = logscan.match(errors, [cut])
    assert {e.at - T0 for e in errors if e.explained_by} == {
        timedelta(seconds=11), timedelta(seconds=12)}
    later = logscan.Window("cluster_unreachable", T0 + timedelta(seconds=20),
                           T0 + timedelta(seconds=30), EXPLAINS["cluster_unreachable"])
    for e in errors:
        e.explained_by = None
    assert len(logscan.match(errors, [later])) == len(errors)
    assert len(unexplained) == len(errors) - 2


def test_the_syncs_foreign_key_error_is_explained_by_nothing() -> None:
    """The sync holds back a child whose parent is not on the target yet: a foreign-key
    error of its own statement is a bug again, in any window, known or not."""
    line = ('2026-11-30 11:00:02.200 UTC [101] ERROR:  insert or update on table "agent_runs" '
            'violates foreign key constraint "agent_runs_task_id_fkey"\n'
            '2026-11-30 11:00:02.200 UTC [101] DETAIL:  Key (task_id)=(x) is not present\n'
            '2026-11-30 11:00:02.200 UTC [101] STATEMENT:  INSERT INTO "agent_runs" ("id") '
            'SELECT "id" FROM json_populate_recordset(CAST(NULL AS "agent_runs"), $1)\n')
    everything = [logscan.Window(r, T0 - timedelta(days=1), T0 + timedelta(days=1), p)
                  for r, p in {**KNOWN, **EXPLAINS}.items()]
    errors = logscan.parse(line.splitlines(), "postgresql")
    assert errors and logscan.match(errors, everything) == errors


def test_a_refused_login_is_not_explained_by_a_rotation() -> None:
    """A process that follows the rotation never presents the previous password: a refusal
    inside the rotation's window fails the run like anywhere else."""
    window = logscan.Window("password_rotation", T0, T0 + timedelta(seconds=15),
                            EXPLAINS["password_rotation"])
    lines = [
        '2026-11-30 11:00:03.000 UTC [102] FATAL:  password authentication failed for user '
        '"cesar_app_a"',
        '2026-11-30 11:00:03.000 UTC [102] DETAIL:  User "cesar_app_a" has no password assigned.',
    ]
    errors = logscan.parse(lines, "postgresql")
    sync = logscan.parse(["2026-11-30T11:00:03.100000+00:00 ERROR sync-cron: pid 7: cesar: "
                          "error: cannot connect to the local database (LOCAL_DB_URL): "
                          "password authentication failed"], "soak")
    assert errors and sync
    assert logscan.match(errors + sync, [window]) == errors + sync


def test_a_paused_sync_run_ended_by_the_idle_in_transaction_limit_is_explained() -> None:
    """The continued run reports the server's reason or the closed socket, whichever psycopg
    reads first; both are the pause's doing (a clean-clone run met the first, unexplained)."""
    window = logscan.Window("sync_sigstop", T0, T0 + timedelta(seconds=15),
                            EXPLAINS["sync_sigstop"])
    lines = [
        "ERROR sync-fault: pid 17091: cesar: error: database error: terminating connection due "
        "to idle-in-transaction timeout (SQLSTATE 25P03)",
        "ERROR sync-fault: pid 17091: cesar: error: database error: server closed the "
        "connection unexpectedly",
    ]
    errors = [logscan.ErrorLine("sync-fault", T0 + timedelta(seconds=12), text)
              for text in lines]
    assert logscan.match(errors, [window]) == []
