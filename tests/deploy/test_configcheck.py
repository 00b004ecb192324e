"""`cesar config check`: what Ansible's `validate:` runs before an environment file lands."""

from __future__ import annotations

from pathlib import Path

import pytest

from cesar.cli import main
from cesar.deploy.configcheck import check, known_variables
from cesar.errors import ConfigError

CLUSTER = "postgresql://cesar_app_a:pw@db.example.invalid:26257/cesar"


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "api.env"
    path.write_text(text)
    return path


def test_a_staging_file_with_verify_full_passes(tmp_path: Path) -> None:
    path = _file(tmp_path, f"# written by Ansible\nENVIRONMENT='staging'\n"
                           f"COCKROACH_DB_URL='{CLUSTER}?sslmode=verify-full&sslrootcert=/c.crt'\n"
                           "CESAR_API_WORKERS='4'\n")
    report = check(path, "api")
    assert report.environment == "staging"
    assert report.serving.startswith("cluster postgresql://cesar_app_a:***@")
    assert "pw" not in report.line()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"ENVIRONMENT='staging'\nCOCKROACH_DB_URL='{CLUSTER}?sslmode=require'\n",
         "requires sslmode=verify-full"),
        ("ENVIRONMENT='production'\n", "COCKROACH_DB_URL is not set"),
        ("ENVIRONMENT='prod'\n", "ENVIRONMENT='prod' is not valid"),
        (f"ENVIRONMENT='development'\nLOCAL_DB_URL='{CLUSTER}'\nCESAR_POOL_MAX_SZE='3'\n",
         "CESAR_POOL_MAX_SZE is not a variable cesar reads"),
        (f"ENVIRONMENT='development'\nLOCAL_DB_URL='{CLUSTER}'\nCESAR_POOL_MAX_SIZE='0'\n",
         "CESAR_POOL_MAX_SIZE='0' is not valid"),
        ("ENVIRONMENT='staging'\nthis is not an assignment\n", ":2: not a KEY=value line"),
    ],
    ids=["sslmode", "no-url", "bad-environment", "typo", "bad-number", "bad-line"],
)
def test_a_bad_file_is_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(_file(tmp_path, text), "api")


def test_the_sync_needs_both_sides(tmp_path: Path) -> None:
    path = _file(tmp_path, f"ENVIRONMENT='staging'\n"
                           f"COCKROACH_DB_URL='{CLUSTER}?sslmode=verify-full'\n")
    assert check(path, "api").environment == "staging"
    with pytest.raises(ConfigError, match="LOCAL_DB_URL is not set"):
        check(path, "sync")


def test_the_process_environment_does_not_leak_in(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COCKROACH_DB_URL", f"{CLUSTER}?sslmode=verify-full")
    with pytest.raises(ConfigError, match="COCKROACH_DB_URL is not set"):
        check(_file(tmp_path, "ENVIRONMENT='staging'\n"), "api")


def test_known_variables_come_from_every_settings_class() -> None:
    known = known_variables()
    assert {"ENVIRONMENT", "COCKROACH_DB_URL", "CESAR_POOL_MAX_SIZE", "CESAR_API_PORT",
            "CESAR_SYNC_BATCH_SIZE"} <= known


def test_command_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    path = _file(tmp_path, "ENVIRONMENT='production'\n")
    with pytest.raises(SystemExit) as exc:
        main(["config", "check", "--env-file", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cesar: error: ")


@pytest.mark.parametrize(
    "line",
    ["CESAR_EVENTS_RETENTION_HOURS='48'", "CESAR_API_READ_PATH='async'",
     "CESAR_BACKUP_KEEP='5'"],
    ids=["events", "read-path", "backup"],
)
def test_every_variable_cesar_reads_passes_the_deploy_check(tmp_path: Path, line: str) -> None:
    # Ansible validates app.env with this command: a variable the API reads must not fail it.
    path = _file(tmp_path, f"ENVIRONMENT='development'\nLOCAL_DB_URL='{CLUSTER}'\n{line}\n")
    assert line.split("=")[0] in check(path, "api").keys


def test_a_bad_value_of_such_a_variable_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, f"ENVIRONMENT='development'\nLOCAL_DB_URL='{CLUSTER}'\n"
                           "CESAR_EVENTS_RETENTION_HOURS='0'\n")
    with pytest.raises(ConfigError, match="CESAR_EVENTS_RETENTION_HOURS='0' is not valid"):
        check(path, "api")


def test_the_check_finds_every_settings_class_in_cesar() -> None:
    # Import every cesar module and collect the settings classes defined in them: the check
    # must know each one, so a class added later cannot be forgotten by a second list.
    import importlib
    import pkgutil

    from pydantic_settings import BaseSettings

    import cesar
    from cesar.deploy.configcheck import settings_classes

    defined = set()
    for info in pkgutil.walk_packages(cesar.__path__, "cesar."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        defined |= {obj for obj in vars(module).values()
                    if isinstance(obj, type) and issubclass(obj, BaseSettings)
                    and obj.__module__ == info.name}
    assert defined, "no settings class found: the walk is broken"
    missing = sorted(f"{c.__module__}.{c.__qualname__}" for c in defined - set(settings_classes()))
    assert not missing
