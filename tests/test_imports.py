"""Imports run downward: the layers named here never import the ones above them.

The graph is read from the source (every ``import`` statement, also those inside functions, and
the ``"module:attribute"`` strings the root command imports lazily), so an import hidden in a
function or behind ``importlib`` counts like any other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cesar._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]
# The root command names its subcommands as "module:attribute" strings; those in cesar count as
# imports. One names infra/, which the wheel does not ship: it is listed only where infra is
# importable (tests/deploy/test_installed_commands.py proves it), so it is not an import of cesar.
LAZY = re.compile(r"^(cesar(?:\.\w+)+):\w+$")

# (importer, imported, why): a module named by the first prefix never imports the second.
RULES = [
    ("cesar.", "cesar.cli", "commands print through cesar.console; only the root loads them"),
    ("cesar.console", "cesar.", "the output module is a leaf every command imports"),
    ("cesar.migrate", "cesar.sync", "schema facts both need live in cesar.schema"),
    ("cesar.db", "cesar.dev", "the dev stack hands its URLs over in a 0600 file (config)"),
    ("cesar.config", "cesar.dev", "the configuration reads the dev stack's file, not its code"),
    ("cesar.credentials", "cesar.", "role names and secret files depend on nothing else"),
    ("infra", "cesar.dev", "the Pulumi program never needs the development stack"),
    ("tasks", "tests", "tasks.py calls cesar; the test suite is not a library"),
    ("cesar", "infra", "the wheel the hosts install has no infra/; infra imports cesar"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _canonical(name: str) -> str:
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return name


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, by its current name."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                me = _module_name(path).split(".")
                anchor = me[: len(me) - node.level + (path.name == "__init__.py")]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}") or f"{base}.{alias.name}" in MOVED:
                    found.add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            lazy = LAZY.match(node.value)
            if lazy:
                found.add(lazy.group(1))
    return {_canonical(name) for name in found}


def _sources() -> list[Path]:
    files = [*ROOT.joinpath("cesar").rglob("*.py"), *ROOT.joinpath("infra").rglob("*.py"),
             ROOT / "tasks.py"]
    return sorted(f for f in files if "__pycache__" not in f.parts)


def _under(name: str, prefix: str) -> bool:
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def _violations() -> list[str]:
    out = []
    for path in _sources():
        me = _module_name(path)
        for imported in sorted(imports_of(path)):
            for importer, forbidden, why in RULES:
                if _under(me, importer) and _under(imported, forbidden) and imported != me:
                    out.append(f"{me} imports {imported} ({why})")
    return out


def test_imports_run_downward() -> None:
    assert _violations() == []


@pytest.mark.parametrize(("source", "expected"), [
    ("from cesar.cli import emit_json\n", "cesar.cli"),
    ("def f():\n    from cesar import stack\n", "cesar.dev.stack"),
    ("X = {'sync': 'cesar.sync.cli:sync_group'}\n", "cesar.sync.cli"),
    ("import tests.helpers\n", "tests.helpers"),
])
def test_the_walk_sees_every_kind_of_import(tmp_path: Path, source: str, expected: str) -> None:
    module = tmp_path / "probe.py"
    module.write_text(source)
    assert expected in imports_of(module)
