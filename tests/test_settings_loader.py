"""One settings loader (cesar.config.load) for every settings model: a bad value is one line
naming the variable as the operator types it, and a secret's value is never echoed."""

from __future__ import annotations

import ast

import pytest

from cesar.api.settings import load_api_settings, load_auth_settings
from cesar.backup.settings import load_backup_settings
from cesar.config import load_settings
from cesar.errors import ConfigError
from cesar.sync.tables import load_sync_settings
from tests.helpers import REPO


def test_only_the_loader_handles_pydantic_validation_errors() -> None:
    handlers = []
    for path in sorted((REPO / "cesar").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ExceptHandler) and node.type is not None
                    and "ValidationError" in ast.unparse(node.type)):
                handlers.append(str(path.relative_to(REPO)))
    assert handlers == ["cesar/config.py"]


@pytest.mark.parametrize(("variable", "value", "load", "shown"), [
    ("ENVIRONMENT", "prod", load_settings, "ENVIRONMENT='prod' is not valid"),
    ("CESAR_API_PORT", "eighty", load_api_settings, "CESAR_API_PORT='eighty' is not valid"),
    ("CESAR_SYNC_BATCH_SIZE", "0", load_sync_settings, "CESAR_SYNC_BATCH_SIZE='0' is not valid"),
    ("CESAR_BACKUP_KEEP", "none", load_backup_settings, "CESAR_BACKUP_KEEP='none' is not valid"),
])
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str,
                                        value: str, load, shown: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load()
    message = str(info.value)
    assert message.startswith(shown) and "\n" not in message
    assert message.endswith("fix it in the environment, .env or .env.cockroach")


def test_the_authentication_settings_never_echo_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CESAR_API_KEY_CACHE_SECONDS", "s3cr3t-looking")
    with pytest.raises(ConfigError) as info:
        load_auth_settings()
    assert str(info.value).startswith("CESAR_API_KEY_CACHE_SECONDS is not valid")
    assert "s3cr3t" not in str(info.value)
