"""Where the API listens and where clients find it: ``CESAR_API_*``.

Read like the rest of the configuration (process environment, then ``.env.cockroach``, then
``.env``), so ``cesar api``, ``invoke up`` and ``cesar smoke`` agree on the port.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cesar.config import ENV_FILES
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


def load_api_settings(**overrides: object) -> ApiSettings:
    try:
        return ApiSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "CESAR_API_" + str((first.get("loc") or ("?",))[0]).upper()
        raise ConfigError(f"{name}={first.get('input')!r} is not valid: {first.get('msg')}; "
                          "fix it in the environment, .env or .env.cockroach") from None
