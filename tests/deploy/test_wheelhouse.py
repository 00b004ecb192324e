"""The wheelhouse the hosts install from: complete, hashed, reproducible, and enough on its own
for every cesar command to start (the hosts have the runtime dependencies only)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cesar.deploy import wheelhouse
from tests.helpers import REPO, require

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, wheelhouse.Release]:
    require(shutil.which("uv") is not None, "uv: python3 -m pip install uv")
    out = tmp_path_factory.mktemp("wh") / "wheelhouse"
    return out, wheelhouse.build(out, project_dir=REPO)


def test_every_wheel_is_pinned_with_its_hash(built) -> None:
    out, release = built
    requirements = (out / "requirements.txt").read_text()
    hashes = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", requirements))
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == release.wheels
    for wheel in wheels:
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() in hashes, wheel.name
    # Every requirement that applies on the hosts (Linux, CPython 3.11) has its wheel.
    lines = requirements.replace("\\\n", " ").splitlines()
    applicable = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line.split(" --hash")[0])
        if requirement.marker is None or requirement.marker.evaluate(
                {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11",
                 "implementation_name": "cpython"}):
            applicable.append(requirement.name)
    assert "cesar-ops" in applicable
    assert len(applicable) == len(wheels)
    assert release.id == wheelhouse.release_id(requirements)
    assert wheelhouse.load(out) == release


def test_same_checkout_gives_the_same_release(built, tmp_path: Path) -> None:
    """A redeploy of an unchanged checkout must be a no-op on the hosts: same id."""
    _out, first = built
    assert wheelhouse.build(tmp_path / "again", project_dir=REPO).id == first.id


def test_cli_starts_with_the_runtime_dependencies_only(built, tmp_path: Path) -> None:
    out, _release = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-index",
         f"--find-links={out}", "--require-hashes", f"--requirement={out / 'requirements.txt'}"],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr
    cesar = str(venv / "bin" / "cesar")
    for args in (["--help"], ["config", "check", "--help"], ["api", "--help"]):
        result = subprocess.run([cesar, *args], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        assert result.returncode == 0, f"cesar {' '.join(args)}: {result.stderr[-2000:]}"
