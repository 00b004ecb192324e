"""``cesar doctor`` against real PostgreSQL databases: it passes on a migrated database, and each
refusal is proved by a server that lacks the capability (a trigger dropped or disabled, a
function revoked, a setting changed) or, for what PostgreSQL always has, by judging the same
server with an older CockroachDB release's ``version()`` string."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cesar import doctor, migrate
from cesar.errors import OperationFailed
from cesar.sync.tables import SYNCED_TABLES
from tests.helpers import CliResult, PgStack, make_settings, run_in_process


@pytest.fixture(scope="module")
def migrated(pg_stack: PgStack) -> Iterator[str]:
    """One migrated database for the read-only checks (never altered)."""
    name = "t_doctor_ok"
    pg_stack.drop_database(name)
    url = pg_stack.create_database(name)
    migrate.apply_all(url, make_settings())
    try:
        yield url
    finally:
        pg_stack.drop_database(name)


@pytest.fixture
def broken(pg_stack: PgStack, fresh_db: str) -> tuple[str, Callable[[str], None]]:
    """A migrated database the test may break, with a superuser statement runner for it."""
    migrate.apply_all(fresh_db, make_settings())
    dbname = psycopg.conninfo.conninfo_to_dict(fresh_db)["dbname"]

    def as_superuser(statement: str) -> None:
        with pg_stack.superuser(str(dbname)) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    return fresh_db, as_superuser


@pytest.fixture
def cesar(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Callable[..., CliResult]:
    """``cesar ARGS`` in this process, in an empty directory (no .env files)."""
    monkeypatch.chdir(tmp_path)
    return lambda *args: run_in_process(capsys, args)


def _refusal(result: CliResult) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 1, result
    assert len(lines) == 1 and lines[0].startswith("cesar: error: capability "), result.err
    return lines[0]


def _check(url: str, version_text: str | None = None) -> doctor.Report:
    with psycopg.connect(url, autocommit=True) as conn:
        return doctor.check(conn, SYNCED_TABLES, url=url, version_text=version_text)


def test_a_migrated_postgresql_database_has_every_capability(
        cesar: Callable[..., CliResult], migrated: str) -> None:
    result = cesar("doctor", "--url", migrated)
    assert result.code == 0, result
    names = [c.name for c in doctor.CAPABILITIES]
    for name in names:
        assert f"  {name} " in result.out and "MISSING" not in result.out
    report = cesar("doctor", "--url", migrated, "--json")
    assert report.code == 0


def test_json_lists_each_capability_with_its_minimum_and_source(
        cesar: Callable[..., CliResult], migrated: str) -> None:
    import json

    data = json.loads(cesar("doctor", "--url", migrated, "--json").out)
    assert data["ok"] is True and data["engine"] == "postgresql"
    assert [c["name"] for c in data["capabilities"]] == [c.name for c in doctor.CAPABILITIES]
    for item in data["capabilities"]:
        assert item["present"] is True
        assert item["minimum"].startswith("v2") and item["source"].startswith("https://")


@pytest.mark.parametrize(("breakage", "expected"), [
    ("DROP TRIGGER sync_capture ON agents",
     "capability trigger-catalog is missing: pg_catalog.pg_trigger lists no sync_capture trigger "
     "on agents; the sync's start-up check"),
    ("ALTER TABLE audit_log DISABLE TRIGGER sync_capture",
     "capability trigger-catalog is missing: the sync_capture trigger is disabled on audit_log; "
     "the sync's start-up check"),
    ("DROP FUNCTION sync_capture() CASCADE",
     "capability plpgsql-trigger-function is missing: the trigger function sync_capture() does "
     "not exist (run `cesar migrate up`: migration 011_sync_capture); the sync's capture"),
    # A permission says nothing about the release: no "needs CockroachDB" for it.
    ("REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC",
     "capability set-config could not be checked: the server refused the probe: permission "
     "denied for function set_config (SQLSTATE 42501); the sync's apply marker"),
    ("REVOKE EXECUTE ON FUNCTION pg_catalog.json_populate_recordset(anyelement, json, boolean) "
     "FROM PUBLIC",
     "capability json-populate-recordset could not be checked: the server refused the probe: "
     "permission denied for function json_populate_recordset (SQLSTATE 42501); the sync's row"),
    ("REVOKE UPDATE ON agents FROM cesar_app",
     "capability for-update-nowait could not be checked: the server refused the probe: "
     "permission denied for table agents (SQLSTATE 42501); the sync's locked apply"),
])
def test_each_missing_capability_is_refused_in_one_line(
        cesar: Callable[..., CliResult], broken: tuple[str, Callable[[str], None]],
        breakage: str, expected: str, pg_stack: PgStack) -> None:
    url, as_superuser = broken
    assert cesar("doctor", "--url", url).code == 0  # the same database, before
    as_superuser(breakage)
    line = _refusal(cesar("doctor", "--url", url))
    assert expected in line, line
    assert "needs CockroachDB" not in line  # a PostgreSQL server: no CockroachDB minimum


def _probe(*statements: str) -> doctor.Capability:
    def run(p: doctor.Probe) -> str:
        for statement in statements:
            p.conn.execute(statement)  # type: ignore[arg-type]
        return "ran"

    return doctor.Capability("probe", "the test", doctor.Version(21, 2), "https://example.invalid",
                             run)


def test_only_an_unsupported_feature_counts_as_missing(migrated: str) -> None:
    with psycopg.connect(migrated, autocommit=True) as conn:
        report = doctor.check(conn, SYNCED_TABLES, capabilities=[
            _probe("SELECT cesar_no_such_function()"), _probe("SELEC 1")],
            version_text=V25_4)
    assert [(r.present, r.probed) for r in report.results] == [(False, True), (False, True)]
    assert report.refusal().startswith("capability probe is missing: the server does not support "
                                       "the probe: function cesar_no_such_function() does not "
                                       "exist (SQLSTATE 42883); it needs CockroachDB v21.2")


@pytest.mark.parametrize("lost", ["timeout", "connection"])
def test_a_timeout_or_a_lost_connection_is_not_a_missing_capability(
        migrated: str, lost: str, pg_stack: PgStack) -> None:
    with psycopg.connect(migrated, autocommit=True) as conn:
        if lost == "timeout":  # 57014, query_canceled
            probe = _probe("SET statement_timeout = 50", "SELECT pg_sleep(5)")
        else:  # the server ends the session under the probe
            def terminated(p: doctor.Probe) -> str:
                with pg_stack.superuser() as su:
                    su.execute("SELECT pg_terminate_backend(%s, 10000)",  # waits for its end
                               [p.conn.info.backend_pid])
                p.conn.execute("SELECT 1")
                return "ran"

            probe = doctor.Capability("probe", "the test", doctor.Version(21, 2),
                                      "https://example.invalid", terminated)
        with pytest.raises(OperationFailed, match="^doctor: the probe of probe did not finish: "):
            doctor.check(conn, SYNCED_TABLES, capabilities=[probe])


def test_md5_password_encryption_still_accepts_the_pre_hashed_verifiers_rotation_sends(
        cesar: Callable[..., CliResult], broken: tuple[str, Callable[[str], None]]) -> None:
    # password_encryption only hashes cleartext passwords; a SCRAM verifier is stored as given.
    import json

    url, as_superuser = broken
    as_superuser("ALTER ROLE cesar_app_a SET password_encryption = 'md5'")
    try:
        result = cesar("doctor", "--url", url, "--json")
        assert result.code == 0, result
        [item] = [c for c in json.loads(result.out)["capabilities"]
                  if c["name"] == "scram-sha-256"]
        assert item["present"] is True and item["warning"] is False, item
        assert "pre-hashed SCRAM-SHA-256 verifier is accepted" in item["detail"]
        with psycopg.connect(url) as conn:  # its password still works: the probe rolled back
            assert conn.execute("SHOW password_encryption").fetchone() == ("md5",)
    finally:
        as_superuser("ALTER ROLE cesar_app_a RESET password_encryption")


def test_the_scram_probe_reads_the_verifier_back_where_it_may_and_changes_nothing(
        pg_stack: PgStack, migrated: str) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(migrated)["dbname"])
    with pg_stack.superuser(dbname) as conn:
        conn.execute("SET password_encryption = 'md5'")
        before = conn.execute("SELECT rolpassword FROM pg_authid "
                              "WHERE rolname = current_user").fetchone()
        report = doctor.check(conn, SYNCED_TABLES, url=migrated)
        after = conn.execute("SELECT rolpassword FROM pg_authid "
                             "WHERE rolname = current_user").fetchone()
    [scram] = [r for r in report.results if r.capability.name == "scram-sha-256"]
    assert scram.present and not scram.warning
    assert scram.detail == "a pre-hashed SCRAM-SHA-256 verifier is stored as given"
    assert before == after


def test_skip_locked_is_reported_with_nowait_when_locking_is_refused(
        broken: tuple[str, Callable[[str], None]]) -> None:
    url, as_superuser = broken
    as_superuser("REVOKE UPDATE ON agents FROM cesar_app")
    report = _check(url)
    assert [r.capability.name for r in report.missing] == [
        "for-update-nowait", "for-update-skip-locked"]
    assert report.refusal().endswith("(also missing: for-update-skip-locked)")


def test_a_held_row_still_counts_as_nowait_present(migrated: str) -> None:
    with psycopg.connect(migrated) as holder:
        held = holder.execute("SELECT id FROM agents LIMIT 1 FOR UPDATE").fetchone()
        assert held is not None  # the migrations seed the agents
        report = _check(migrated)
        holder.rollback()
    [nowait] = [r for r in report.results if r.capability.name == "for-update-nowait"]
    assert nowait.present and "refused at once" in nowait.detail


# Real version() strings: CockroachDB's own (release builds and a dev build), and PostgreSQL's.
V24_3 = ("CockroachDB CCL v24.3.5 (x86_64-pc-linux-gnu, built 2025/02/13 16:46:31, go1.22.8 "
         "X:nocoverageredesign)")
V25_3 = "CockroachDB CCL v25.3.2 (x86_64-pc-linux-gnu, built 2025/09/02 17:01:28, go1.23.12)"
V23_2 = "CockroachDB OSS v23.2.15 (x86_64-pc-linux-gnu, built 2024/11/14 17:22:19, go1.22.5)"
V25_4 = ("CockroachDB CCL v25.4.10 (aarch64-unknown-linux-gnu, built 2026/05/06 12:00:00, "
         "go1.23.12 X:nocoverageredesign)")
V26_1_BETA = ("CockroachDB CCL v26.1.0-beta.2 (x86_64-pc-linux-gnu, built 2026/01/14 09:10:11, "
              "go1.23.12)")


@pytest.mark.parametrize(("version_text", "missing"), [
    (V23_2, ["server-release", "plpgsql-trigger-function", "trigger-catalog",
             "for-update-skip-locked", "read-committed"]),
    (V24_3, ["server-release", "trigger-catalog"]),
    (V25_3, ["server-release"]),
    (V25_4, []),
    (V26_1_BETA, []),
])
def test_an_older_cockroachdb_release_lacks_what_it_lacks(
        migrated: str, version_text: str, missing: list[str]) -> None:
    report = _check(migrated, version_text)
    assert report.server.engine == "cockroachdb"
    assert [r.capability.name for r in report.missing] == missing
    for result in report.missing:
        assert result.refusal().startswith(f"capability {result.capability.name} is missing: ")
        assert f"it needs CockroachDB {result.capability.minimum.series} or later" in \
            result.refusal()


def test_the_release_refusal_names_the_server_and_the_minimum(migrated: str) -> None:
    report = _check(migrated, V24_3)
    assert report.refusal().startswith(
        "capability server-release is missing: the server is CockroachDB v24.3.5 (it cannot be "
        "upgraded to v25.4 directly: upgrade it, one Regular release at a time, to v25.2 and "
        "finalize first: docs/cockroachdb.md, "
        "Upgrading an existing cluster); it needs CockroachDB v25.4 or later")
    assert "(also missing: trigger-catalog)" in report.refusal()
    # v25.3 (the Innovation release in between) may go to v25.4 at once
    assert _check(migrated, V25_3).refusal().startswith(
        "capability server-release is missing: the server is CockroachDB v25.3.2 (upgrade it to "
        "v25.4: docs/cockroachdb.md")


def test_read_committed_refusal_names_the_cluster_setting(migrated: str) -> None:
    report = _check(migrated, V23_2)
    [rc] = [r for r in report.missing if r.capability.name == "read-committed"]
    assert rc.refusal().startswith("capability read-committed is missing: the server is "
                                   "CockroachDB v23.2.15; it needs CockroachDB v24.1 or later")


def test_outside_development_the_url_must_be_verify_full(
        cesar: Callable[..., CliResult], migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    result = cesar("doctor", "--url", migrated)
    assert result.code == 2 and "--url has sslmode=disable" in result.err
