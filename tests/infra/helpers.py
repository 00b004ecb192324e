"""Helpers of the Pulumi program's tests: the stack files, each stack's settings as the program
reads them, and the real tools they need. Fixtures live in conftest.py beside this file."""

from __future__ import annotations

import shutil
from pathlib import Path

from infra import offline
from infra import settings as stack_settings
from tests.helpers import REPO, require

STACKS = tuple(sorted(p.name[len("Pulumi."):-len(".yaml")] for p in REPO.glob("Pulumi.*.yaml")))
PROMTOOL_TESTS = Path(__file__).parent / "promtool"


def tool(name: str, package: str) -> str:
    """The path of ``name``, a requirement (apt-get install ``package``)."""
    path = shutil.which(name)
    require(path is not None, f"{name} (apt-get install {package})")
    assert path is not None
    return path


def settings_of(stack: str) -> stack_settings.StackSettings:
    values = {k.split(":", 1)[1]: offline.decode_value(v)
              for k, v in offline.stack_config(stack).items() if k.startswith("cesar:")}
    return stack_settings.from_values(values, stack=stack)
