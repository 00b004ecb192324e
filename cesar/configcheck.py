"""``cesar config check``: validate an environment file before it lands on a host.

Ansible writes the hosts' configuration as environment files (read by systemd's
``EnvironmentFile=`` for the API and sourced by the sync's cron wrapper) and validates each one
with this command before replacing the old file (``validate:``), so a typo or an unsafe URL
fails the deploy on the first host instead of stopping the service. It checks, reading the file
only (never the process environment):

- the syntax (``KEY='value'`` lines, comments, blank lines);
- every key is a variable cesar reads (a setting, or an option's environment variable);
- the values pass the settings' validation (``ENVIRONMENT``, numbers, ...);
- the routing accepts the URLs (staging and production: ``COCKROACH_DB_URL`` set, with
  ``sslmode=verify-full``), as ``cesar api`` would at start;
- for ``--for sync``: both sides of the sync are set (``LOCAL_DB_URL`` and ``COCKROACH_DB_URL``).

No connection is opened: the file is checked where it is written, which may be before the
database is reachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
from dotenv import dotenv_values
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from cesar import db
from cesar.config import Settings
from cesar.errors import ConfigError

Purpose = Literal["api", "sync"]
# Read by libraries the service runs, not by cesar's settings.
_RUNTIME_VARIABLES = frozenset({"PROMETHEUS_MULTIPROC_DIR"})


class _FileOnlySettings(Settings):
    """Settings from the given values alone: no process environment, no .env file."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        *_others: PydanticBaseSettingsSource, **_kw: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@dataclass(frozen=True)
class Report:
    path: Path
    environment: str
    serving: str
    keys: tuple[str, ...]

    def line(self) -> str:
        return (f"ok: {self.path}: ENVIRONMENT={self.environment}, serving {self.serving}; "
                f"{len(self.keys)} variables ({', '.join(self.keys)})")


def known_variables() -> frozenset[str]:
    """Every variable name cesar reads: the settings' names and the CLI options' envvars."""
    names = set(_RUNTIME_VARIABLES)
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(c) for c in alias.choices if str(c).isupper())
        elif isinstance(alias, str):
            names.add(alias)
    from cesar.cli import cli

    names.update(_option_envvars(cli))
    return frozenset(names)


def _option_envvars(command: click.Command) -> set[str]:
    found: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            found.add(envvar)
        elif isinstance(envvar, (list, tuple)):
            found.update(envvar)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= _option_envvars(sub)
    return found


def read(path: Path) -> dict[str, str]:
    """The file's variables; a line that is not ``KEY=value`` is an error naming the line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#") and "=" not in line:
            raise ConfigError(f"{path}:{number}: not a KEY=value line; fix or remove it")
    values = dotenv_values(path, interpolate=False)
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise ConfigError(f"{path}: {missing[0]} has no value; write {missing[0]}=VALUE")
    return {key: str(value) for key, value in values.items()}


def check(path: Path, purpose: Purpose = "api") -> Report:
    """Validate the file for the given service; raise ConfigError naming the first problem."""
    values = read(path)
    known = known_variables()
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{path}: {unknown[0]} is not a variable cesar reads (a typo?); "
            "see docs/configuration.md for the list"
        )
    try:
        settings = _FileOnlySettings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str((first.get("loc") or ("?",))[0]).upper()
        raise ConfigError(
            f"{path}: {name}={first.get('input')!r} is not valid: {first.get('msg')}"
        ) from None
    try:
        route = db.route(settings)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if purpose == "sync":
        for variable in ("LOCAL_DB_URL", "COCKROACH_DB_URL"):
            if not values.get(variable):
                raise ConfigError(
                    f"{path}: {variable} is not set; the sync needs both sides "
                    "(LOCAL_DB_URL and COCKROACH_DB_URL)"
                )
    return Report(path, settings.environment, f"{route.primary.name} {route.primary.masked}",
                  tuple(sorted(values)))


@click.group("config")
def config_group() -> None:
    """Check configuration before it is used (the hosts' environment files)."""


@config_group.command("check")
@click.option("--env-file", "env_file", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The environment file to validate (KEY='value' lines).")
@click.option("--for", "purpose", type=click.Choice(["api", "sync"]), default="api",
              show_default=True, help="Which service the file configures.")
def check_command(env_file: Path, purpose: Purpose) -> None:
    """Validate an environment file without connecting anywhere; exit 2 naming the problem."""
    click.echo(check(env_file, purpose).line())
