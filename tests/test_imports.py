"""Imports run downward: the layers named here never import the ones above them.

The graph is read from the source (every ``import`` statement, also those inside functions, and
the ``"module:attribute"`` strings the root command imports lazily), so an import hidden in a
function or behind ``importlib`` counts like any other.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import re
from pathlib import Path

import pytest

import infra
from cesar._moved import MOVED as CESAR_MOVED

# Old names of both packages; each resolves to its new module (tests/test_moved.py).
MOVED = {**CESAR_MOVED, **infra.MOVED}

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
    ("cesar.backup", "cesar.dev",
     "backups run on hosts; the dev stack hands its server over in its state file (config)"),
    ("cesar.api", "cesar.web",
     "the API serves the export (cesar.api.dashboard); building it and its client use the API"),
]


@functools.cache
def _tree(path: Path) -> ast.Module:
    """One parse per file for every check (the test session reads each file once)."""
    return ast.parse(path.read_text(), str(path))


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


def _import_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` in ``module`` names (relative ones resolved)."""
    base = node.module or ""
    if not node.level:
        return base
    me = module.split(".")
    anchor = me[: len(me) - node.level + is_package]
    return ".".join([*anchor, base] if base else anchor)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, by its current name."""
    tree = _tree(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, _module_name(path) if node.level else "",
                                path.name == "__init__.py")
            found.add(base)
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}") or f"{base}.{alias.name}" in MOVED:
                    found.add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            lazy = LAZY.match(node.value)
            if lazy:
                found.add(lazy.group(1))
    return {_canonical(name) for name in found}


def _sources(*trees: str) -> list[Path]:
    trees = trees or ("cesar", "infra")
    files = [*(f for tree in trees for f in ROOT.joinpath(tree).rglob("*.py")), ROOT / "tasks.py"]
    return sorted(f for f in files if "__pycache__" not in f.parts)


# A table of old names maps each to the module it now is: the package holding the table names
# (and loads, on the first import of an old name) every target, so the targets count as imports.
ALIAS_TABLES = {"cesar._moved": CESAR_MOVED, "infra": infra.MOVED}


def _imports_with_aliases(path: Path) -> set[str]:
    return imports_of(path) | set(ALIAS_TABLES.get(_module_name(path), {}).values())


def _under(name: str, prefix: str) -> bool:
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def _violations() -> list[str]:
    out = []
    for path in _sources():
        me = _module_name(path)
        for imported in sorted(_imports_with_aliases(path)):
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


def _raw_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Module and ``module.name`` paths as written (old names not mapped to new ones)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, module, is_package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"):
            found.add(str(node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            lazy = LAZY.match(node.value)
            if lazy:
                found.add(lazy.group(1))
            elif "import " in node.value:
                # Code handed to a child interpreter (``python -c``) imports like any other.
                with contextlib.suppress(SyntaxError):
                    found |= _raw_imports(ast.parse(node.value), module, is_package)
    return found


# Where an old name is imported on purpose: the proof that old names keep working.
OLD_NAMES_ALLOWED = {"tests.test_moved": "proves each old name is its new module",
                     "tests.test_imports": "its probes import old names to see them caught"}


def _old_name_imports() -> list[str]:
    out = []
    for path in _sources("cesar", "infra", "tests", "checks"):
        me = _module_name(path)
        if me in OLD_NAMES_ALLOWED:
            continue
        tree = _tree(path)
        for name in sorted(_raw_imports(tree, me, path.name == "__init__.py")):
            old = next((o for o in MOVED if name == o or name.startswith(o + ".")), None)
            if old:
                out.append(f"{me} imports {name}: use {MOVED[old]}{name[len(old):]}")
    return out


def test_project_code_imports_modules_by_their_current_names() -> None:
    # The old names are for code outside the project; inside, an import of one hides where the
    # module lives and keeps the alias table loaded for no reason.
    assert _old_name_imports() == []


@pytest.mark.parametrize("source", [
    "from cesar import stack\n",
    "import cesar.urls\n",
    "from infra import monitoring_files as files\n",
    "from infra.selfhosted import require_success\n",
    "def f():\n    from infra import (\n        grafana,\n    )\n",
    "import importlib\nimportlib.import_module('cesar.service')\n",
    "CODE = 'from cesar.migrate_cli import migrate_group'\n",
])
def test_the_old_name_walk_sees_every_kind_of_import(source: str) -> None:
    found = _raw_imports(ast.parse(source), "tests.probe", False)
    assert any(name == old or name.startswith(old + ".") for name in found for old in MOVED)


def test_an_alias_table_counts_as_importing_its_targets() -> None:
    assert set(infra.MOVED.values()) <= _imports_with_aliases(ROOT / "infra" / "__init__.py")


# Development tools that run only beside the embedded stack, so they load it at import.
DEV_TOOLS = ("cesar.dev", "cesar.bench", "cesar.soak")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: its body, and ``if``/``try`` blocks in it,
    except ``if TYPE_CHECKING:`` (never run)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                todo += node.body
            todo += node.orelse
        elif isinstance(node, ast.Try):
            todo += [*node.body, *node.orelse, *node.finalbody,
                     *(s for h in node.handlers for s in h.body)]
    return found


def _dev_loaded_at_import(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted(root.joinpath("cesar").rglob("*.py")):
        me = _module_name(path) if root == ROOT else path.stem
        if any(_under(me, tool) for tool in DEV_TOOLS):
            continue
        for node in _top_level_imports(_tree(path)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
            names = [_canonical(n) for n in names]
            if any(_under(n, "cesar.dev") for n in names):
                out.append(f"{me}:{node.lineno} imports the dev stack at import time")
    return out


def test_shipped_modules_load_the_dev_stack_only_when_they_use_it() -> None:
    # The wheel the hosts install carries cesar/dev/, but nothing there may run on a host: an
    # operator command loads it inside the development branch that needs it.
    assert _dev_loaded_at_import() == []


def test_a_dev_import_at_import_time_is_found(tmp_path: Path) -> None:
    (tmp_path / "cesar").mkdir()
    (tmp_path / "cesar" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cesar.dev.embedded\n"
        "try:\n    from cesar import stack\nexcept ImportError:\n    pass\n")
    (tmp_path / "cesar" / "good.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cesar.dev.embedded\n"
        "def f():\n    from cesar.dev import embedded\n")
    assert _dev_loaded_at_import(tmp_path) == ["bad:5 imports the dev stack at import time"]


def _private_imports() -> list[str]:
    """``from M import _name`` where M is not a sibling in the importer's own package."""
    out = []
    for path in _sources():
        me = _module_name(path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        for node in ast.walk(_tree(path)):
            if not (isinstance(node, ast.ImportFrom) and node.module and not node.level):
                continue
            module = _canonical(node.module)
            is_package = (ROOT.joinpath(*module.split(".")) / "__init__.py").is_file()
            home = module if is_package else module.rpartition(".")[0]
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") \
                        and home != package:
                    out.append(f"{me} imports {module}.{alias.name}")
    return out


def test_no_module_reaches_a_private_name_of_another_package() -> None:
    # A private name can change with its module; what another package needs gets a public one.
    assert _private_imports() == []


ENGINE_NAMES = {"cockroachdb", "postgresql"}
# Where code outside cesar/db/engines.py still compares an engine name, and why.
ENGINE_NAME_ALLOWED = {
    "cesar.db": "detect_engine turns the server's version() into the name engines.named reads",
}


def _is_engine_name(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in ENGINE_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_engine_name(e) for e in node.elts)
    return False


def engine_name_comparisons(path: Path, module: str) -> list[str]:
    """``x == "cockroachdb"``, ``"postgresql" != x``, ``x in ("cockroachdb", ...)`` and
    ``match x: case "cockroachdb":`` in ``path``."""
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Compare) and any(
                _is_engine_name(side) for side in (node.left, *node.comparators)):
            out.append(f"{module}:{node.lineno} compares an engine name")
        elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue) \
                and _is_engine_name(node.pattern.value):
            out.append(f"{module}:{node.pattern.lineno} matches an engine name")
    return out


def test_engine_facts_come_from_the_engine_objects() -> None:
    # A fact that differs between the engines lives on cesar.db.engines' objects, with its
    # source; a name compared elsewhere is a fact kept where no one looks for it.
    found = []
    for path in _sources():
        me = _module_name(path)
        if me == "cesar.db.engines" or me in ENGINE_NAME_ALLOWED:
            continue
        found += engine_name_comparisons(path, me)
    assert found == []


@pytest.mark.parametrize("source", [
    "if engine == 'cockroachdb':\n    pass\n",
    "ok = 'postgresql' != server.engine\n",
    "ok = name in ('cockroachdb', 'x')\n",
    "match engine:\n    case 'postgresql':\n        pass\n",
])
def test_an_engine_name_comparison_is_found(tmp_path: Path, source: str) -> None:
    (tmp_path / "probe.py").write_text(source)
    assert len(engine_name_comparisons(tmp_path / "probe.py", "probe")) == 1
