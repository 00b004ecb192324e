"""Where the API listens and where clients find it: ``CESAR_API_*``.

Read like the rest of the configuration (process environment, then ``.env.cockroach``, then
``.env``), so ``cesar api``, ``invoke up`` and ``cesar smoke`` agree on the port.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cesar.config import ENV_FILES, load
from cesar.errors import ConfigError


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CESAR_API_", env_file=ENV_FILES,
                                      env_file_encoding="utf-8", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="CESAR_API_HOST: address `cesar api` listens on")
    port: int = Field(8000, ge=1, le=65535, description="CESAR_API_PORT: its TCP port")
    workers: int = Field(1, ge=1, le=64, description="CESAR_API_WORKERS: worker processes")
    url: str | None = Field(None, description="CESAR_API_URL: where `cesar smoke` finds the API "
                                              "(default: the one `invoke up` started)")
    key: SecretStr | None = Field(None, description="CESAR_API_KEY: the API key `cesar smoke` "
                                                    "sends (development: made if missing)")
    access_log_flush_seconds: float = Field(
        0.5, ge=0, le=10, description="CESAR_API_ACCESS_LOG_FLUSH_SECONDS: access lines are "
        "written in batches at least this often (0: one write per line)")


def load_api_settings(**overrides: object) -> ApiSettings:
    return load(ApiSettings, **overrides)


class AuthSettings(BaseSettings):
    """``CESAR_API_*`` settings of authentication, read like the rest of the configuration."""

    model_config = SettingsConfigDict(env_prefix="CESAR_API_", env_file=ENV_FILES,
                                      env_file_encoding="utf-8", extra="ignore", frozen=True)

    key_cache_seconds: float = Field(
        2.0, ge=0, le=5, description="CESAR_API_KEY_CACHE_SECONDS: how long a worker trusts a "
        "key lookup; the bound on a revocation reaching every worker")
    auth_failure_limit: int = Field(
        20, ge=1, le=100_000, description="CESAR_API_AUTH_FAILURE_LIMIT: failures per address "
        "and window before 429")
    auth_failure_window_seconds: float = Field(
        60.0, gt=0, le=86_400, description="CESAR_API_AUTH_FAILURE_WINDOW_SECONDS")
    auth_block_seconds: float = Field(
        60.0, gt=0, le=86_400, description="CESAR_API_AUTH_BLOCK_SECONDS: how long a blocked "
        "address gets 429")
    usage_flush_seconds: float = Field(
        30.0, ge=0.05, le=3600, description="CESAR_API_USAGE_FLUSH_SECONDS: how often last uses "
        "are written")
    metrics_token: SecretStr | None = Field(
        None, description="CESAR_API_METRICS_TOKEN: a credential accepted on /metrics only")
    metrics_token_file: Path | None = Field(
        None, description="CESAR_API_METRICS_TOKEN_FILE: the same, read from a file")

    def metrics_secret(self) -> str | None:
        if self.metrics_token is not None:
            value = self.metrics_token.get_secret_value().strip()
            return value or None
        if self.metrics_token_file is not None:
            try:
                value = self.metrics_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"CESAR_API_METRICS_TOKEN_FILE={self.metrics_token_file} "
                                  f"cannot be read ({exc.strerror}); fix the path or its "
                                  "permissions") from None
            return value or None
        return None


def load_auth_settings(**overrides: object) -> AuthSettings:
    return load(AuthSettings, reveal=False, **overrides)  # a secret's value is never echoed
