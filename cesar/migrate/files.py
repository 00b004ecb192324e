"""Migration files on disk: where they are, how they are named, what they contain.

A migration is a pair ``NNN_name.up.sql`` / ``NNN_name.down.sql`` in one directory, applied in
name order. :func:`load` reads a directory strictly (a misnamed ``.sql`` file, a down file alone
or two migrations with one number are configuration errors); :func:`migration_names` is lenient,
for ``/health``. Statements are parsed only when needed (``cesar.migrate.sql``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from cesar.errors import ConfigError, OperationFailed
from cesar.migrate.sql import Script, Statement, parse

Direction = Literal["up", "down"]

DEFAULT_DIR = Path("sql/migrations")
PACKAGED_DIR = Path(__file__).resolve().parents[1] / "_sql" / "migrations"

_UP_FILE = re.compile(r"^(?P<name>\d{3,}_[a-z0-9_]+)\.up\.sql$")
_ANY_FILE = re.compile(r"^(?P<name>(?P<number>\d{3,})_[a-z0-9_]+)\.(?P<direction>up|down)\.sql$")


def resolve_dir(migrations_dir: Path | None = None) -> Path:
    """The migrations directory: the given one, else ``sql/migrations`` relative to the cwd,
    else the copy packaged in the wheel (``cesar/_sql/migrations``), else (a source checkout
    run from elsewhere) the checkout's ``sql/migrations``."""
    if migrations_dir is not None:
        return migrations_dir
    if DEFAULT_DIR.is_dir():
        return DEFAULT_DIR
    # A source checkout run from another directory has no packaged copy, but has its own.
    checkout = Path(__file__).resolve().parents[2] / DEFAULT_DIR
    return checkout if not PACKAGED_DIR.is_dir() and checkout.is_dir() else PACKAGED_DIR


def migration_names(migrations_dir: Path | None = None) -> list[str]:
    """Names (``001_agents``) of the up files in the directory, in apply order. Lenient (for
    /health): a missing directory or a stray file is not an error here; :func:`load` is strict."""
    directory = resolve_dir(migrations_dir)
    if not directory.is_dir():
        return []
    names = (m["name"] for p in directory.iterdir() if (m := _UP_FILE.match(p.name)))
    return sorted(names)


#: Earlier revisions of shipped up files that leave the same objects behind: a database that
#: applied one of them is not drifted. Only for changes that are proven equivalent (the test of
#: each names it); any other change to an applied file is drift, accepted only by `repair`.
EQUIVALENT_REVISIONS: dict[str, frozenset[str]] = {
    # the triggers are now dropped before CREATE OR REPLACE FUNCTION (CockroachDB before v26.2
    # cannot replace a function a trigger uses); same function, same triggers
    "011_sync_capture": frozenset(
        {"e832c496fd776e5d34750afe87947bbcebf92a987cc13886ac479825b6c5df40"}),
}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Migration:
    """One migration on disk. Statements are parsed only when needed."""

    name: str
    up_path: Path
    down_path: Path | None

    @cached_property
    def checksum(self) -> str:
        """SHA-256 of the up file: what drift detection compares."""
        return sha256_file(self.up_path)

    def matches(self, applied_checksum: str | None) -> bool:
        """Whether a database that applied a file with this checksum has what this file makes:
        the same file, or an earlier revision listed in :data:`EQUIVALENT_REVISIONS`."""
        return applied_checksum == self.checksum or \
            applied_checksum in EQUIVALENT_REVISIONS.get(self.name, frozenset())

    def path(self, direction: Direction) -> Path:
        if direction == "up":
            return self.up_path
        if self.down_path is None:
            raise OperationFailed(
                f"{self.name} has no down file ({self.up_path.with_name(self.name + '.down.sql')})"
                "; write one to roll it back"
            )
        return self.down_path

    def file_checksum(self, direction: Direction) -> str:
        return self.checksum if direction == "up" else sha256_file(self.path("down"))

    def statements(self, direction: Direction) -> list[Statement]:
        return self.script(direction).statements

    def script(self, direction: Direction) -> Script:
        """The file's statements and header directives (``-- cesar:no-transaction``)."""
        path = self.path(direction)
        return parse(path.read_text(encoding="utf-8"), str(path))


def load(migrations_dir: Path | None = None) -> list[Migration]:
    """The migrations of the directory, in order. Strict: a misnamed ``.sql`` file, a down file
    without its up file, or two migrations with one number are configuration errors."""
    directory = resolve_dir(migrations_dir)
    if not directory.is_dir():
        raise ConfigError(
            f"the migrations directory {directory} does not exist; run from the repository root "
            "or pass --migrations-dir DIR"
        )
    ups: dict[str, Path] = {}
    downs: dict[str, Path] = {}
    numbers: dict[str, str] = {}
    for filename in sorted(e.name for e in os.scandir(directory) if e.name.endswith(".sql")):
        path = directory / filename
        m = _ANY_FILE.match(filename)
        if m is None:
            raise ConfigError(
                f"{path} is not named NNN_name.up.sql or NNN_name.down.sql (three or more "
                "digits, then lower-case letters, digits and _); rename it"
            )
        name, number = m["name"], m["number"]
        if numbers.setdefault(number, name) != name:
            raise ConfigError(
                f"{numbers[number]} and {name} in {directory} share the number {number}; "
                "renumber the newer one after the last migration"
            )
        (ups if m["direction"] == "up" else downs)[name] = path
    for name, path in downs.items():
        if name not in ups:
            raise ConfigError(f"{path} has no {name}.up.sql beside it; add it or remove the file")
    return [Migration(n, ups[n], downs.get(n)) for n in sorted(ups)]
