"""Helpers of the Pulumi program's tests: the stack files, each stack's settings as the program
reads them, what a mocked run registered (containers' uploads and images), config overrides, and
the real tools they need. Fixtures live in conftest.py beside this file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from infra import offline
from infra import settings as stack_settings
from tests.helpers import REPO, require

STACKS = tuple(sorted(p.name[len("Pulumi."):-len(".yaml")] for p in REPO.glob("Pulumi.*.yaml")))
PROMTOOL_TESTS = Path(__file__).parent / "promtool"
CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/remoteImage:RemoteImage"


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


def upload(container: offline.Registered, path: str) -> dict[str, Any]:
    found = [u for u in container.plain_inputs.get("uploads", []) if u["file"] == path]
    assert len(found) == 1, f"{container.name} has {len(found)} uploads at {path}"
    return found[0]


def image_of(run: offline.OfflineRun, container: offline.Registered) -> str:
    """The image reference a container runs (it runs the image id of a RemoteImage)."""
    image_id = container.plain_inputs["image"]
    by_id = {"sha256:" + offline.stand_in(str(r.plain_inputs["name"]), 64): r.plain_inputs["name"]
             for r in run.of_type(IMAGE)}
    return by_id[image_id]


def override(stack: str, key: str, change: dict[str, Any]) -> dict[str, str]:
    """Config that sets ``key`` to the stack file's object value updated with ``change``."""
    current = offline.stack_config(stack).get(key)
    value = json.loads(current) if current else {}
    if isinstance(value, dict):
        value.update(change)
    return {key: json.dumps(value)}
