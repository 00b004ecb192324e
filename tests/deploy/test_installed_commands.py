"""What `cesar --help` offers on a host (the package as the wheel ships it: no infra/, no tests/)
works there; the checkout's extra command (`cesar infra`) is offered only in the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, child_env

# Runs the CLI with only a copy of cesar/ importable from the project: the checkout (and with it
# infra/ and tests/) is taken off sys.path, as on a host that installed the wheel.
HOST = """
import sys
from pathlib import Path
repo, copy = Path(sys.argv[1]).resolve(), sys.argv[2]
sys.path[:] = [copy] + [p for p in sys.path if p and Path(p).resolve() != repo]
for name in [m for m in sys.modules if m == "cesar" or m.startswith("cesar.")]:
    del sys.modules[name]
if sys.argv[3:] == ["--load-each"]:  # import every offered command, as running it would
    import click
    from cesar.cli import cli
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        print(name, type(cli.get_command(ctx, name)).__name__)
    sys.exit(0)
from cesar.cli import main
main(sys.argv[3:])
"""


def on_host(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / "site"
    if not copy.exists():
        shutil.copytree(REPO / "cesar", copy / "cesar",
                        ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", HOST, str(REPO), str(copy), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def _commands(help_text: str) -> set[str]:
    listed = help_text.split("Commands:", 1)[1]
    return {line.split()[0] for line in listed.splitlines() if line.startswith("  ")}


def test_every_command_offered_on_a_host_loads_there(tmp_path: Path) -> None:
    shown = on_host(tmp_path, "--help")
    assert shown.returncode == 0, shown.stderr
    commands = _commands(shown.stdout)
    assert "infra" not in commands and {"migrate", "sync", "api"} <= commands
    loaded = on_host(tmp_path, "--load-each")
    assert loaded.returncode == 0, loaded.stderr
    kinds = dict(line.split() for line in loaded.stdout.splitlines())
    assert set(kinds) == commands
    assert all(kind in ("Command", "Group", "LazyGroup") for kind in kinds.values()), kinds


def test_infra_is_not_a_command_on_a_host(tmp_path: Path) -> None:
    done = on_host(tmp_path, "infra", "plan")
    assert done.returncode == 2
    assert "No such command 'infra'" in done.stderr and "Traceback" not in done.stderr


def test_the_checkout_offers_infra(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cesar.cli", "--help"], capture_output=True,
                          text=True, env=child_env(), cwd=REPO, timeout=120)
    assert done.returncode == 0 and "infra" in _commands(done.stdout)
