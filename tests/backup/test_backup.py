"""Backups, point-in-time restores and drills on a real PostgreSQL (pgserver's build)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from cesar.backup import archive, base, drill, restore
from tests.backup.helpers import BackupStack


class Writers:
    """Threads inserting and updating rows of ``items`` until stopped; each commits per row."""

    def __init__(self, stack: BackupStack, count: int = 2, start_id: int = 1_000_000) -> None:
        self.stack, self.stop_event = stack, threading.Event()
        self.committed = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(start_id + i * 10_000_000,))
                        for i in range(count)]

    def _run(self, first: int) -> None:
        try:
            with self.stack.su() as conn:
                next_id = first
                while not self.stop_event.is_set():
                    conn.execute("INSERT INTO items (id, body) VALUES (%s, 'w')", [next_id])
                    conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", [next_id % 2000 + 1])
                    next_id += 1
                    self.committed += 1
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors


def count(stack: BackupStack, dbname: str, table: str = "items") -> int:
    with stack.su(dbname) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def server_now(stack: BackupStack) -> datetime:
    with stack.su() as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def test_backup_taken_while_writers_write_restores_every_committed_row(bk: BackupStack) -> None:
    """A base backup under steady writes, then a drill (also under writes) whose restore point
    lies beyond the backup: replay from the archive must give exactly the source's rows."""
    with Writers(bk) as writers:
        time.sleep(0.5)
        before = writers.committed
        backup = base.take(bk.server)
        assert writers.committed > before, "the writers were blocked by the backup"
        at_backup = count(bk, "cesar_local")
        time.sleep(1.0)
        result = drill.run(bk.server)
    assert result["ok"], result["problems"] or [t for t in result["tables"] if not t["match"]]
    assert result["backup"] == backup.label
    items = next(t for t in result["tables"] if t["table"] == "public.items")
    assert items["match"] and items["restored"]["rows"] > at_backup  # replayed past the backup
    assert {t["table"] for t in result["tables"]} >= {"public.items", "public.notes"}
    assert result["rto_seconds"] > 0 and result["rpo_seconds"] is not None
    assert not list((bk.server.repo / "scratch").iterdir()), "the scratch server was left behind"


def test_a_destructive_delete_is_undone_by_restoring_to_just_before_it(bk: BackupStack) -> None:
    base.take(bk.server)
    with bk.su() as conn:
        conn.execute("UPDATE items SET body = 'edited' WHERE id = 5")  # after the backup
        expected = drill.fingerprint(conn)
    target = server_now(bk)
    time.sleep(0.3)
    with bk.su() as conn:
        deleted = conn.execute("DELETE FROM items WHERE id % 7 = 0").rowcount
        conn.execute("INSERT INTO notes VALUES ('after the delete')")
    assert deleted > 0
    live_before = count(bk, "cesar_local")

    out = bk.invoke("restore", "--to", target.isoformat(), "--into", "undo_delete", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["url"].endswith("/undo_delete?sslmode=disable") and ":***@" in doc["url"]
    with bk.su("undo_delete") as conn:
        restored = drill.fingerprint(conn)
    for table in ("public.items", "public.notes"):
        assert restored[table] == expected[table], table  # every row, byte for byte
    assert count(bk, "cesar_local") == live_before  # the live database untouched


def test_restore_refuses_a_database_in_use_and_keeps_it(bk: BackupStack) -> None:
    base.take(bk.server)
    with bk.su("postgres") as conn:
        conn.execute("CREATE DATABASE busy")
    with bk.su("busy") as busy, bk.su("cesar_local") as live:
        live.execute("SELECT 1")
        busy.execute("CREATE TABLE marker (v text)")
        busy.execute("INSERT INTO marker VALUES ('still here')")
        target = datetime.now(UTC).isoformat()
        for name in ("busy", "cesar_local"):
            out = bk.invoke("restore", "--to", target, "--into", name)
            assert out.returncode == 2, out.stdout + out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("cesar: error: database "), lines
            assert "in use" in lines[0] and "--force" in lines[0]
        assert busy.execute("SELECT v FROM marker").fetchone() == ("still here",)

        # Forced: the session is ended, the old database kept aside (renamed), never dropped.
        forced = bk.invoke("restore", "--to", target, "--into", "busy", "--force", "--json")
        assert forced.returncode == 0, forced.stderr
        aside = json.loads(forced.stdout)["replaced"]
        assert aside and aside.startswith("busy_before_restore_")
    with bk.su(aside) as kept:
        assert kept.execute("SELECT v FROM marker").fetchone() == ("still here",)
    assert count(bk, "busy") == count(bk, "cesar_local")  # the restored copy took its name


@pytest.mark.parametrize("to, fragment", [
    ("yesterday", "is not an ISO 8601 time"),
    ("2026-11-30T10:00:00", "has no time zone"),
    ("2999-01-01T00:00:00Z", "is in the future"),
])
def test_bad_restore_input_is_one_line_exit_2(bk: BackupStack, to: str, fragment: str) -> None:
    out = bk.cli("backup", "restore", "--to", to, "--into", "x_bad")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and fragment in out.stderr
    assert "Traceback" not in out.stderr


def _switch_segments(bk: BackupStack, n: int) -> str:
    with bk.su() as conn:
        for i in range(n):
            conn.execute("INSERT INTO notes VALUES (%s)", [f"switch {i}"])
            seg = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
            archive.wait_archived(conn, seg)
    return seg


def test_a_missing_wal_segment_fails_the_drill_and_is_named(bk: BackupStack) -> None:
    out = bk.invoke("backup")
    assert out.returncode == 0, out.stderr
    newest = base.backups(bk.server.repo)[-1]
    _switch_segments(bk, 3)
    first = archive.parse_segment(newest.start_segment, newest.segment_size)
    assert first is not None
    gone = archive.segment_name(first.timeline, first.number + 2, newest.segment_size)
    path = bk.server.repo / "wal" / f"{gone}.gz"
    aside = path.with_name(f"aside-{gone}")
    path.rename(aside)
    try:
        out = bk.invoke("dr.drill", "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert doc["ok"] is False
        assert any(gone in p and "missing" in p for p in doc["problems"]), doc["problems"]
        assert gone in out.stderr and out.stderr.startswith("cesar: error: drill failed")
        status = bk.invoke("dr.status", "--json")
        assert status.returncode == 1
        assert gone in json.loads(status.stdout)["gaps"]
    finally:
        aside.rename(path)


def test_a_corrupted_backup_or_wal_segment_fails_the_drill_and_is_named(bk: BackupStack) -> None:
    backup = base.take(bk.server)
    with bk.su() as conn:
        relpath = conn.execute("SELECT pg_relation_filepath('items')").fetchone()[0]
    data = Path(backup.path) / relpath
    raw = bytearray(data.read_bytes())
    raw[9000:9016] = b"\xff" * 16
    data.write_bytes(bytes(raw))
    result = drill.run(bk.server)
    assert result["ok"] is False
    assert any(relpath in p for p in result["problems"]), result["problems"]

    # Same backup repaired is not possible: take a new one, then damage an archived segment.
    backup = base.take(bk.server)
    _switch_segments(bk, 2)
    first = archive.parse_segment(backup.start_segment, backup.segment_size)
    assert first is not None
    victim = archive.segment_name(first.timeline, first.number + 1, backup.segment_size)
    gz = bk.server.repo / "wal" / f"{victim}.gz"
    good = gz.read_bytes()
    gz.write_bytes(good[: len(good) // 2])
    try:
        result = drill.run(bk.server)
        assert result["ok"] is False
        assert any(victim in p and "corrupt" in p for p in result["problems"]), result["problems"]
    finally:
        gz.write_bytes(good)


def test_restore_picks_the_newest_backup_before_the_target(bk: BackupStack) -> None:
    found = base.backups(bk.server.repo) or [base.take(bk.server)]
    with pytest.raises(Exception, match="no backup finished before"):
        restore.choose_backup(bk.server, datetime(2000, 1, 1, tzinfo=UTC))
    assert restore.choose_backup(bk.server, datetime.now(UTC)).label == found[-1].label


def fake_segment(bk: BackupStack, fill: bytes, sysid: int | None = None) -> bytes:
    """A segment's first bytes: a page header carrying the system identifier, then ``fill``."""
    import struct

    if sysid is None:
        with bk.su() as conn:
            sysid = int(conn.execute("SELECT system_identifier FROM pg_control_system()"
                                     ).fetchone()[0])
    return b"\0" * 24 + struct.pack("=Q", sysid) + fill * 992


def test_a_new_cluster_on_an_old_archive_is_refused_with_one_clear_line(
        bk: BackupStack, tmp_path: Path) -> None:
    """A re-initialised server (another system identifier) starts at timeline 1 again: its
    segments must not be mixed into the archive of the old one."""
    import subprocess

    base.take(bk.server)  # the archive has the live server's segments
    name = "00000001000000FE000000FE"
    seg = tmp_path / name
    seg.write_bytes(fake_segment(bk, b"n", sysid=1234567890123456789))
    out = subprocess.run([str(bk.server.repo / "bin" / "archive-wal"), str(seg), name],
                         capture_output=True, text=True)
    try:
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "belongs to database system" in lines[0], lines
        assert "1234567890123456789" in lines[0]
        assert not (bk.server.repo / "wal" / f"{name}.gz").exists()
    finally:
        (bk.server.repo / "wal" / f"{name}.gz").unlink(missing_ok=True)


def test_wal_archive_command_is_idempotent_and_refuses_different_content(
    bk: BackupStack, tmp_path: Path
) -> None:
    """The server retries a segment whose archiving it did not see succeed: the same content is
    a success, different content an error (history is never overwritten)."""
    import subprocess

    name = "00000001000000FF000000FF"
    seg = tmp_path / name
    seg.write_bytes(fake_segment(bk, b"a"))
    cmd = [str(bk.server.repo / "bin" / "archive-wal"), str(seg), name]
    try:
        first = subprocess.run(cmd, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        assert subprocess.run(cmd, capture_output=True).returncode == 0
        seg.write_bytes(fake_segment(bk, b"b"))
        again = subprocess.run(cmd, capture_output=True, text=True)
        assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    finally:
        (bk.server.repo / "wal" / f"{name}.gz").unlink(missing_ok=True)


def test_live_server_archives_with_the_stack(bk: BackupStack) -> None:
    with psycopg.connect(bk.pg.superuser_conninfo(), autocommit=True) as conn:
        assert conn.execute("SHOW archive_mode").fetchone()[0] == "on"
        assert conn.execute("SHOW archive_command").fetchone()[0] == \
            archive.archive_command(bk.server.repo)


def test_a_backup_killed_mid_way_is_never_listed_and_the_next_one_works(bk: BackupStack) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO

    before = {b.label for b in base.backups(bk.server.repo)}
    with bk.su() as conn:  # enough data that the copy takes a moment
        conn.execute("CREATE TABLE IF NOT EXISTS bulk AS SELECT g, repeat(md5(g::text), 8) AS t "
                     "FROM generate_series(1, 200000) g")
    proc = subprocess.Popen([sys.executable, "-m", "cesar.cli", "backup", "take"], cwd=REPO,
                            env=bk.env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    base_dir = bk.server.repo / "base"
    while time.monotonic() < deadline and not list(base_dir.glob(".partial-*/base")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert {b.label for b in base.backups(bk.server.repo)} == before  # nothing half-made listed
    fresh = base.take(bk.server)
    assert fresh.label in {b.label for b in base.backups(bk.server.repo)}
    base.verify(bk.server, fresh)


def test_failing_archiving_shows_in_status_and_metrics(bk: BackupStack, tmp_path: Path) -> None:
    """The archive directory made unwritable for the server: dr.status exits 1 naming it, the
    metrics say failing (what BackupArchiveFailing alerts on). Last in the module: the server
    retries a failed segment only after a pause, so nothing after it should need the archive."""
    from cesar.backup import status

    wal = bk.server.repo / "wal"
    mode = wal.stat().st_mode
    base.take(bk.server)
    try:
        wal.chmod(0o500)
        with bk.su() as conn:
            conn.execute("INSERT INTO notes VALUES ('while archiving fails')")
            segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] == 0:
                assert time.monotonic() < deadline, "archiving never failed"
                time.sleep(0.2)
        out = bk.invoke("dr.status", "--json")
        assert out.returncode == 1
        info = json.loads(out.stdout)
        assert info["archive"]["failing"] is True
        assert any("archiving is failing" in p for p in info["problems"]), info["problems"]
        prom = tmp_path / "backup.prom"
        status.write_metrics(info, prom)
        assert "cesar_backup_archive_failing 1.0" in prom.read_text()
    finally:
        wal.chmod(mode)
    assert segment


@pytest.mark.parametrize("into", [
    "dbname=cesar_local application_name=a",
    "postgresql://localhost/cesar_local",
    "postgres",
    "template1",
])
def test_restore_into_a_connection_string_or_reserved_name_is_refused(
        bk: BackupStack, into: str) -> None:
    """A name the client tools would read as a connection string (pointing at the live
    database) or a reserved database is refused before anything is written."""
    base.take(bk.server)
    with bk.su() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS canary (v text)")
        conn.execute("TRUNCATE canary")
        conn.execute("INSERT INTO canary VALUES ('live')")
    before = count(bk, "cesar_local")
    out = bk.invoke("restore", "--to", datetime.now(UTC).isoformat(), "--into", into,
                    "--force")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cesar: error: --into"), lines
    with bk.su() as conn:
        assert conn.execute("SELECT v FROM canary").fetchall() == [("live",)]
        conn.execute("DROP TABLE canary")
    assert count(bk, "cesar_local") == before


def test_the_drill_fingerprint_covers_every_column_even_one_named_t(bk: BackupStack) -> None:
    """A table with a column named like the query's alias: the fingerprint must still cover
    the other columns, so a difference in them is a mismatch."""
    with bk.su() as conn:
        conn.execute("CREATE TABLE aliased (t int, body text)")  # no primary key
        conn.execute("INSERT INTO aliased VALUES (1, 'same'), (2, 'same')")
        before = drill.fingerprint(conn)["public.aliased"]
        conn.execute("UPDATE aliased SET body = 'changed' WHERE t = 2")
        after = drill.fingerprint(conn)["public.aliased"]
        conn.execute("DROP TABLE aliased")
    assert before["rows"] == after["rows"] == 2
    assert before["hash"] != after["hash"]


def test_a_forced_restore_whose_rename_fails_leaves_the_database_accepting_connections(
        bk: BackupStack) -> None:
    """The old database is closed to connections while it is renamed aside; when the rename
    fails (here: every aside name it could pick is taken) it must be open again."""
    now = int(time.time())
    asides = [f"swapdst_before_restore_{t}" for t in range(now, now + 20)]
    with bk.su("postgres") as conn:
        for name in ("swapsrc", "swapdst", *asides):
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with pytest.raises(Exception) as failed:  # noqa: PT011 - its kind is checked below
            restore.swap_in(bk.server, "swapsrc", "swapdst", True)
        with bk.su("postgres") as conn:
            allowed = conn.execute("SELECT datallowconn FROM pg_database "
                                   "WHERE datname = 'swapdst'").fetchone()
        assert allowed == (True,)
        assert isinstance(failed.value, restore.OperationFailed)  # one line, no traceback
        assert "could not rename swapdst aside" in str(failed.value)
        with bk.su("swapdst") as conn:  # and it really does
            conn.execute("SELECT 1")
    finally:
        with bk.su("postgres") as conn:
            for name in ("swapsrc", "swapdst", *asides):
                conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
                conn.execute(f'DROP DATABASE "{name}"')


def test_a_drill_failing_in_an_unexpected_way_records_a_failure(
        bk: BackupStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error outside the expected kinds (a tool timing out) must still overwrite the last
    drill's success, or the metrics keep saying the drill passes."""
    import subprocess

    base.take(bk.server)
    (bk.server.repo / "state" / drill.LAST_DRILL).write_text(json.dumps({"ok": True}))

    def times_out(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired("pg_verifybackup", 60)

    monkeypatch.setattr(drill.base, "verify", times_out)
    result = drill.run(bk.server)
    assert not result["ok"]
    kept = drill.last(bk.server.repo)
    assert kept is not None and kept["ok"] is False
    assert any("TimeoutExpired" in p for p in kept["problems"]), kept["problems"]


def test_a_drill_stopped_by_sigterm_records_a_failure(bk: BackupStack) -> None:
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO

    base.take(bk.server)
    (bk.server.repo / "state" / drill.LAST_DRILL).write_text(json.dumps({"ok": True}))
    proc = subprocess.Popen([sys.executable, "-m", "cesar.cli", "backup", "drill", "--json"],
                            cwd=REPO, env=bk.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    scratch_dir = bk.server.repo / "scratch"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if scratch_dir.exists() and any(scratch_dir.iterdir()):
            break  # the scratch server is being made: the drill is mid-way
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    kept = drill.last(bk.server.repo)
    assert kept is not None and kept["ok"] is False
    assert any("SIGTERM" in p for p in kept["problems"]), kept["problems"]
    assert not list(scratch_dir.iterdir()), "the scratch server was left behind"


def test_setup_keeps_the_operators_settings(bk: BackupStack, tmp_path: Path) -> None:
    """`backup setup` never downgrades wal_level (logical archives too) and never silently
    replaces another archive_command."""
    from tests.backup.helpers import drop_stack, make_stack

    # Another command: refused, unless forced (checked on the shared server, changing nothing).
    with bk.su("postgres") as conn:
        with pytest.raises(archive.ConfigError, match="already has archive_command"):
            archive.enable(conn, tmp_path, bk.server.archive_timeout)
        assert conn.execute("SHOW archive_command").fetchone()[0] == archive.archive_command(
            bk.server.repo)

    stack = make_stack("setup")
    try:
        with stack.su("postgres") as conn:
            conn.execute("ALTER SYSTEM SET wal_level = 'logical'")
        stack.pg.down()
        stack.pg.up()
        with stack.su("postgres") as conn:
            assert conn.execute("SHOW wal_level").fetchone()[0] == "logical"
            changed = archive.enable(conn, stack.server.repo, stack.server.archive_timeout)
            assert "wal_level" not in changed
            pending = conn.execute("SELECT count(*) FROM pg_settings WHERE pending_restart"
                                   ).fetchone()[0]
            assert pending == 0  # nothing asks for a restart
    finally:
        drop_stack(stack)


def test_a_re_initialised_embedded_server_archives_into_a_fresh_repository() -> None:
    """`rm -rf .cesar/pgdata && invoke up`: the old archive is kept aside and the new cluster
    archives (and backs up) without colliding with the old segment names."""
    import shutil

    from tests.backup.helpers import drop_stack, make_stack

    stack = make_stack("reinit")
    try:
        base.take(stack.server)
        stack.pg.down()
        shutil.rmtree(stack.pg.pgdata)
        stack.pg.up()
        with stack.su() as conn:
            segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
            archive.wait_archived(conn, segment, timeout=30)
            failed = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0]
        assert failed == 0
        aside = [p for p in stack.state_dir.iterdir() if p.name.startswith("backups.before-")]
        assert len(aside) == 1 and any((aside[0] / "wal").iterdir())
    finally:
        drop_stack(stack)


def test_archived_wal_no_backup_needs_is_pruned(bk: BackupStack, tmp_path: Path) -> None:
    """The embedded stack has no backup timer: `up` prunes the WAL before the oldest backup,
    and with no backup keeps only the newest segments."""
    repo = tmp_path / "repo"
    archive.prepare_repo(repo)
    names = [archive.segment_name(1, n, 16 * 1024 * 1024) for n in range(1, 41)]
    for name in names:
        (repo / "wal" / f"{name}.gz").write_bytes(b"")
    assert base.prune_wal(repo, keep_without_backup=32) == 8
    assert archive.archived(repo) == names[8:]

    base.take(bk.server)
    oldest = base.backups(bk.server.repo)[0].start_segment
    stale = bk.server.repo / "wal" / "000000010000000000000000.gz"  # before any backup
    stale.write_bytes(b"")
    bk.pg.up()  # `invoke up` again, on the running stack
    assert not stale.exists()
    assert oldest in archive.archived(bk.server.repo)  # what the backups need is kept
