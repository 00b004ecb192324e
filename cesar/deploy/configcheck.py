"""``cesar config check``: validate an environment file before it lands on a host.

Ansible writes the hosts' configuration as environment files (read by systemd's
``EnvironmentFile=`` for the API and sourced by the sync's cron wrapper) and validates each one
with this command before replacing the old file (``validate:``), so a typo or an unsafe URL
fails the deploy on the first host instead of stopping the service. It checks, reading the file
only (never the process environment):

- the syntax (``KEY='value'`` lines, comments, blank lines);
- every key is a variable cesar reads (a field of one of its settings classes);
- the values pass the settings' validation (``ENVIRONMENT``, numbers, ...);
- the routing accepts the URLs (staging and production: ``COCKROACH_DB_URL`` set, with
  ``sslmode=verify-full``), as ``cesar api`` would at start;
- for ``--for sync``: both sides of the sync are set (``LOCAL_DB_URL`` and ``COCKROACH_DB_URL``).

No connection is opened: the file is checked where it is written, which may be before the
database is reachable.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
from dotenv import dotenv_values
from pydantic import AliasChoices
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource

import cesar
from cesar import db
from cesar.config import Settings, load
from cesar.errors import ConfigError

Purpose = Literal["api", "sync"]
# Read by libraries the service runs, not by cesar's settings.
_RUNTIME_VARIABLES = frozenset({"PROMETHEUS_MULTIPROC_DIR"})


@dataclass(frozen=True)
class Report:
    path: Path
    environment: str
    serving: str
    keys: tuple[str, ...]

    def line(self) -> str:
        return (f"ok: {self.path}: ENVIRONMENT={self.environment}, serving {self.serving}; "
                f"{len(self.keys)} variables ({', '.join(self.keys)})")


def settings_modules() -> list[str]:
    """The cesar modules that define settings classes, found in the installed package's source.

    Every variable cesar reads is a field of one of them; finding them (rather than listing
    them) keeps a class added later from being refused by the deploy's check.
    """
    root = Path(cesar.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if re.search(r"^class \w+\([^)]*Settings\b", text, re.MULTILINE):
            parts = path.relative_to(root.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def settings_classes() -> list[type[BaseSettings]]:
    """The settings classes of :func:`settings_modules` (a module whose dependencies are not
    installed on this host is skipped: its service does not run here)."""
    found: list[type[BaseSettings]] = []
    for name in settings_modules():
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and issubclass(obj, BaseSettings)
                  and obj.__module__ == name]
    return found


def variable_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads (aliases, else prefix + field name)."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(c).upper() for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def known_variables() -> frozenset[str]:
    """Every variable name cesar reads."""
    names = set(_RUNTIME_VARIABLES)
    for cls in settings_classes():
        names |= variable_names(cls)
    return frozenset(names)


def _from_file(cls: type[BaseSettings], path: Path) -> BaseSettings:
    """``cls`` read from ``path`` alone: no process environment, no ./.env."""

    class FromFile(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(
            cls_, settings_cls: type[BaseSettings], *_sources: PydanticBaseSettingsSource,
            **_kw: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (DotEnvSettingsSource(settings_cls, env_file=path),)

    return load(FromFile, where=str(path))


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
    settings = _from_file(Settings, path)
    for cls in settings_classes():
        if cls is not Settings:
            _from_file(cls, path)
    assert isinstance(settings, Settings)
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
