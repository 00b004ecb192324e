"""Settings and routing decisions that need no server: refusals and masking."""

from __future__ import annotations

import secrets

import pytest

from cesar import db
from cesar.config import load_settings
from cesar.db import urls
from cesar.errors import ConfigError
from tests.helpers import make_settings

SAFE = "postgresql://app:pw@db.example.internal:26257/cesar?sslmode=verify-full"


def test_unknown_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "prod")
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    assert "ENVIRONMENT='prod'" in str(err.value)
    assert err.value.exit_code == 2


def test_bad_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CESAR_POOL_MAX_SIZE", "lots")
    with pytest.raises(ConfigError, match="CESAR_POOL_MAX_SIZE"):
        load_settings(_env_file=None)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_missing_cluster_url_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ConfigError, match="COCKROACH_DB_URL is not set"):
        db.route(make_settings(environment=environment, local_db_url=SAFE))


@pytest.mark.parametrize("environment", ["staging", "production"])
@pytest.mark.parametrize(
    ("query", "shown"),
    [("sslmode=require", "sslmode=require"), ("sslmode=disable", "sslmode=disable"),
     ("sslmode=verify-ca", "sslmode=verify-ca"), ("", "no sslmode")],
)
def test_unsafe_sslmode_is_refused(environment: str, query: str, shown: str) -> None:
    url = "postgresql://app:pw@db.example.internal:26257/cesar" + (f"?{query}" if query else "")
    with pytest.raises(ConfigError) as err:
        db.route(make_settings(environment=environment, cockroach_db_url=url))
    message = str(err.value)
    assert "COCKROACH_DB_URL" in message and shown in message and "verify-full" in message
    assert "pw" not in message.replace("sslmode", "")  # the password is never echoed


def test_unsafe_read_replica_is_refused_in_production() -> None:
    with pytest.raises(ConfigError, match="COCKROACH_READ_REPLICA_URL"):
        db.route(make_settings(
            environment="production", cockroach_db_url=SAFE,
            cockroach_read_replica_url=SAFE.replace("verify-full", "require"),
        ))


def test_production_never_falls_back_even_with_a_local_url() -> None:
    r = db.route(make_settings(environment="production", cockroach_db_url=SAFE,
                               local_db_url="postgresql://u:p@127.0.0.1/x"))
    assert r.primary.name == "cluster" and r.fallback is None


def test_target_is_ignored_outside_development() -> None:
    r = db.route(make_settings(environment="staging", cockroach_db_url=SAFE,
                               database_target="local"))
    assert r.primary.name == "cluster"


@pytest.mark.parametrize("bad", ["mysql://u:p@h/db", "not a url", "postgresql://u:p@h/db?sslmode"])
def test_unparseable_url_names_the_variable(bad: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match="LOCAL_DB_URL"):
        db.route(make_settings(local_db_url=bad, state_dir=tmp_path))


@pytest.mark.parametrize("shape", ["postgresql://u:{}@h/db", "postgresql://u@h/db?password={}",
                                   "postgresql://u:p@h/db?{}"])
def test_an_unparseable_url_never_shows_its_password(shape: str) -> None:
    """libpq's own message quotes the part it could not read: here the password (generated,
    with a bad percent-encoding in it)."""
    password = f"{secrets.token_hex(4)}%zz{secrets.token_hex(4)}"
    with pytest.raises(ConfigError, match="LOCAL_DB_URL cannot be parsed") as info:
        urls.parse(shape.format(password), "LOCAL_DB_URL")
    assert password.split("%")[1] not in str(info.value)


def test_mask_hides_passwords() -> None:
    assert urls.mask("postgresql://u:s3cr%40t@h:5/db?sslmode=disable") == (
        "postgresql://u:***@h:5/db?sslmode=disable"
    )
    assert urls.mask("postgresql://h/db?user=u&password=s3cret") == (
        "postgresql://h/db?user=u&password=***"
    )
    assert urls.mask("postgresql://u@h/db") == "postgresql://u@h/db"


def test_build_round_trips_awkward_passwords() -> None:
    url = urls.build(user="a", password="p@ss:w/rd?&=", host="127.0.0.1", port=5, dbname="d",
                     sslmode="disable")
    assert urls.parse(url, "X")["password"] == "p@ss:w/rd?&="
