"""The CockroachDB backup, restore and verification SQL, pinned by golden files.

No CockroachDB binary exists on these machines: the statements are checked against the
documented syntax by review and pinned here so that any change to them is deliberate. Set
UPDATE_GOLDEN=1 to rewrite the files after such a change, and review the diff.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cesar.backup import cockroach
from cesar.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"
PLAN = cockroach.BackupPlan()
AT = datetime(2026, 11, 30, 10, 15, 30, 250000, tzinfo=UTC)
LOCATION = ("s3://cesar-backups/dev?AWS_ENDPOINT=http%3A%2F%2Fbackup-store%3A9000"
            "&AWS_ACCESS_KEY_ID=KEY&AWS_SECRET_ACCESS_KEY=SECRET&AWS_REGION=us-east-1")

CASES = {
    "setup.sql": lambda: cockroach.setup_sql(PLAN, LOCATION),
    "schedule_hourly_weekly.sql": lambda: cockroach.schedule_sql(
        cockroach.BackupPlan(recurring="@hourly", full="@weekly", label="operator_bucket",
                             connection="operator_backups")),
    "show.sql": lambda: cockroach.show_sql(PLAN),
    "verify.sql": lambda: cockroach.verify_sql(PLAN),
    "restore.sql": lambda: cockroach.restore_sql(PLAN, AT, "cesar_restored"),
    "restore_subdir.sql": lambda: cockroach.restore_sql(PLAN, AT, "cesar_restored",
                                                        "/2026/11/29-100000.00"),
    "drill.sql": lambda: cockroach.drill_sql(PLAN, AT, "cesar_drill", ["agents", "tasks"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_sql_matches_its_golden_file(name: str) -> None:
    text = CASES[name]()
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed: review it, then UPDATE_GOLDEN=1"


def test_the_schedule_never_carries_the_storage_credentials() -> None:
    assert "SECRET" not in cockroach.schedule_sql(PLAN)
    assert "SECRET" in cockroach.external_connection_sql(PLAN, LOCATION)


def test_restore_time_is_normalised_to_utc_and_needs_a_zone() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    assert cockroach.restore_sql(PLAN, local, "x") == cockroach.restore_sql(PLAN, AT, "x")
    with pytest.raises(ConfigError, match="time zone"):
        cockroach.restore_sql(PLAN, AT.replace(tzinfo=None), "x")


@pytest.mark.parametrize("subdir", ["LATEST", "/2026/11/29-100000.00' --", "../x"])
def test_restore_subdirectory_must_be_a_listed_path(subdir: str) -> None:
    with pytest.raises(ConfigError, match="subdirectory"):
        cockroach.restore_sql(PLAN, AT, "x", subdir)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"database": "cesar; DROP DATABASE cesar"}, "not a plain"),
    ({"recurring": "every hour"}, "crontab"),
    ({"label": "Bad-Label"}, "not a plain"),
])
def test_bad_plans_are_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        cockroach.BackupPlan(**kwargs)


def test_a_location_that_is_not_object_storage_is_refused() -> None:
    with pytest.raises(ConfigError, match="not an s3://"):
        cockroach.external_connection_sql(PLAN, "http://example.invalid/x")


@pytest.mark.parametrize("version, ok", [
    ("CockroachDB CCL v24.3.5 (x86_64-pc-linux-gnu)", True),
    ("CockroachDB CCL v22.2.0", True),
    ("CockroachDB CCL v22.1.9", False),
])
def test_minimum_version(version: str, ok: bool) -> None:
    if ok:
        cockroach.check_version(version)
    else:
        with pytest.raises(ConfigError, match="older than v22.2"):
            cockroach.check_version(version)
