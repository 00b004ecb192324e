"""The test suite's own layout, and the reader's view of the code, kept from drifting back.

- Fixtures live in conftest.py, helpers in a helpers module (tests/helpers.py for what no one
  subsystem owns, tests/<area>/helpers.py for one subsystem's): pytest loads a conftest as a
  plugin, so a helper there is a second, hidden way in, and a test module imported by another
  runs its tests' module code twice.
- Tests use public names only: a test that reaches a private name breaks on a rename that no
  reader of the code would see coming.
- Code comments give the reason, not the history.
"""

from __future__ import annotations

import ast
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("cesar", "infra", "tests")

# History in code: the founding document by its nickname, or an issue number. A test's random
# seed is fine.
HISTORY = r"(\b|_)the[ _]seed(\b|_)|(\b|_)[Ii]ssue[ _][0-9]+"
HISTORY_PATHS = ("cesar", "infra", "ansible", "tasks.py", "tests", "sql", "web/src")
# Applied migrations are checksummed byte for byte: rewording a comment there would report
# drift on every database that ran them. These lines (path, line number) stay, and no others.
FROZEN = {("sql/migrations/001_agents.up.sql", 4), ("sql/migrations/010_sync_tables.up.sql", 59)}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every ``from``/``import`` in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                me = _module_name(path, root).split(".")
                anchor = me[: len(me) - node.level + (path.name == "__init__.py")]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            out.append((node.lineno, base, names))
            # ``from tests.sync import conftest`` imports the module itself.
            out.extend((node.lineno, f"{base}.{n}", []) for n in names
                       if n == "conftest" or n.startswith("test_"))
    return out


def _test_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / "tests").rglob("*.py") if "__pycache__" not in p.parts)


def helper_imports(root: Path = ROOT) -> list[str]:
    """Imports of a conftest or of a test module: a helper belongs in a helpers module."""
    found = []
    for path in _test_files(root):
        for line, module, _ in _imported_modules(path, root):
            last = module.rsplit(".", 1)[-1]
            if module.split(".")[0] == "tests" and (last == "conftest" or last.startswith("test_")):
                found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def _is_fixture(node: ast.FunctionDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "fixture":
            return True
    return False


def conftest_helpers(root: Path = ROOT) -> list[str]:
    """Public functions and classes of a conftest that are neither fixtures nor pytest hooks."""
    found = []
    for path in sorted((root / "tests").rglob("conftest.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                found.append(f"{path.relative_to(root)}:{node.lineno} class {node.name}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and not node.name.startswith(("_", "pytest_")) and not _is_fixture(node):
                found.append(f"{path.relative_to(root)}:{node.lineno} def {node.name}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


SELF = "tests/test_layout.py"
# Private modules a test may import, each with its reason.
DELIBERATE_PRIVATE_MODULES = {
    # The import hook for moved module names: its own tests read its table of names.
    "cesar._moved",
}


def _script_trees(tree: ast.AST, where: str) -> list[tuple[ast.Module, str]]:
    """Python programs written as string constants (scripts a test runs in a child process)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "\n" in node.value and "import " in node.value:
            try:
                script = ast.parse(textwrap.dedent(node.value))
            except SyntaxError:
                continue
            out.append((script, f"{where}:{node.lineno} (script)"))
    return out


def private_uses(root: Path = ROOT) -> list[str]:
    """Private names of the project that tests reach: ``from x import _y``, ``import x._y``,
    ``module._y`` (also deeper, ``module.Class._y``), ``obj._y`` on an object a project
    callable returned, and ``setattr(module, "_y", ...)``; in the test's code and in the
    scripts it hands to a child process."""
    found = []
    for path in _test_files(root):
        tree = ast.parse(path.read_text(), str(path))
        where = f"{path.relative_to(root)}"
        found += _private_in(tree, where, _imported_modules(path, root))
        if where == SELF:
            continue  # its strings are examples of what this check finds
        for script, place in _script_trees(tree, where):
            found += _private_in(script, place, _imports_of(script))
    return found


def _imports_of(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.append((node.lineno, node.module or "", [alias.name for alias in node.names]))
    return out


def _private_in(tree: ast.AST, where: str,
                imports: list[tuple[int, str, list[str]]]) -> list[str]:
    found = []
    bound: dict[str, str] = {}  # local name -> what of the project it is
    for line, module, names in imports:
        if module.split(".")[0] not in PROJECT:
            continue
        if any(_private(part) for part in module.split(".")) \
                and module not in DELIBERATE_PRIVATE_MODULES:
            found.append(f"{where}:{line} imports {module}")
        if not names:
            bound[module.split(".")[0]] = module.split(".")[0]
        for name in names:
            if _private(name):
                found.append(f"{where}:{line} from {module} import {name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and \
                ((node.module or "").split(".")[0] in PROJECT or node.level):
            for alias in node.names:
                bound[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name.split(".")[0] in PROJECT:
                    bound[alias.asname] = alias.name
    # ``x = Project(...)``: x is the project's object, its private names are the project's.
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            while isinstance(func, ast.Attribute):
                func = func.value
            if isinstance(func, ast.Name) and func.id in bound:
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bound[target.id] = ast.unparse(node.value.func)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(f"{where}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and len(node.args) >= 2 \
                and isinstance(node.args[0], ast.Name) and node.args[0].id in bound \
                and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and _private(node.args[1].value):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else \
                getattr(node.func, "id", "")
            if name in ("setattr", "getattr", "delattr", "hasattr"):
                found.append(f"{where}:{node.lineno} {name}({node.args[0].id}, "
                             f"{node.args[1].value!r})")
    return found


def history_comments(root: Path = ROOT) -> list[str]:
    """Lines of code that name the founding document by its nickname, or an issue number."""
    out = subprocess.run(["git", "grep", "-nIE", HISTORY, "--", *HISTORY_PATHS], cwd=root,
                         capture_output=True, text=True, check=False)
    assert out.returncode in (0, 1), out.stderr
    found = []
    for line in out.stdout.splitlines():
        path, number, _ = line.split(":", 2)
        if (path, int(number)) not in FROZEN:
            found.append(line)
    return found


def test_no_test_module_imports_a_conftest_or_another_test_module() -> None:
    assert helper_imports() == []


def test_conftests_define_fixtures_and_hooks_only() -> None:
    assert conftest_helpers() == []


def test_tests_use_public_names_only() -> None:
    assert private_uses() == []


def test_code_comments_give_the_reason_not_the_history() -> None:
    assert history_comments() == []


# ------------------------------------------------------------------ the checks see each kind
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("source", [
    "from tests.sync.conftest import Pair\n",
    "from .conftest import query\n",
    "from tests.sync import conftest\n",
    "import tests.conftest\n",
    "def f():\n    from tests.api.test_server import cesar_api\n",
    "from .test_concurrency import finish\n",
])
def test_an_import_of_a_conftest_or_test_module_is_found(tmp_path: Path, source: str) -> None:
    root = _tree(tmp_path, {"tests/sync/__init__.py": "", "tests/sync/test_x.py": source})
    assert len(helper_imports(root)) == 1


def test_a_helper_in_a_conftest_is_found_and_fixtures_hooks_private_pass(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"tests/conftest.py": (
        "import pytest\n\n"
        "@pytest.fixture\ndef a(): ...\n\n"
        "@pytest.fixture(scope='session')\ndef b(): ...\n\n"
        "def pytest_configure(config): ...\n\n"
        "def _used_by_a(): ...\n\n"
        "def helper(): ...\n\n"
        "class Stack: ...\n")})
    assert [f.split(" ", 1)[1] for f in conftest_helpers(root)] == ["def helper", "class Stack"]


@pytest.mark.parametrize("source", [
    "from cesar.sync import reconcile\nreconcile._versions\n",
    "from cesar.rotate import rotator as r\nr._read_verifier(1, 2)\n",
    "import cesar.dev.testhosts\ncesar.dev.testhosts._run([])\n",
    "from infra.offline import _stand_in\n",
    "from cesar.migrate import Runner\nRunner._transactional\n",
    "from cesar.sync import reconcile\ndef t(monkeypatch):\n"
    "    monkeypatch.setattr(reconcile, '_versions', None)\n",
    "from tests.infra.helpers import _override\n",
    "from cesar.rotate import Rotator\nrotator = Rotator(1)\nrotator._test(2)\n",
    "from cesar.sync._apply import write\n",
    "import cesar.sync._apply\n",
    'KILLER = """\nfrom cesar.sync import apply\napply._write = None\n"""\n',
    'PAUSER = """\n    from cesar import migrate\n    real = migrate.Runner._finish\n"""\n',
])
def test_a_private_name_reached_by_a_test_is_found(tmp_path: Path, source: str) -> None:
    root = _tree(tmp_path, {"tests/test_x.py": source})
    assert len(private_uses(root)) == 1


def test_private_names_of_the_test_s_own_objects_pass(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"tests/test_x.py": (
        "import threading\nfrom cesar import __version__\n"
        "class W:\n    def __init__(self):\n        self._t = threading.Thread()\n"
        "threading._shutdown\n")})
    assert private_uses(root) == []
