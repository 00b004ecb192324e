"""Module names from before the packages keep importing, as the very same module objects."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

from cesar._moved import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_name_is_the_new_module(old: str, new: str) -> None:
    moved = importlib.import_module(old)
    assert moved is importlib.import_module(new)
    assert moved.__name__ == new and moved.__spec__.name == new


def test_from_imports_and_attributes_see_one_module() -> None:
    # A fresh interpreter: the old name imported first, then the new one, then the package.
    code = (
        "import cesar.stack as old\n"
        "from cesar.dev import stack as new\n"
        "from cesar import stack as attr\n"
        "from cesar.migrate_cli import migrate_group\n"
        "from cesar.migrate.cli import migrate_group as g2\n"
        "old.MARK = 1\n"
        "assert new is old is attr and new.MARK == 1 and migrate_group is g2\n"
        "import importlib; importlib.reload(old)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_objects_from_a_moved_module_pickle_under_the_new_name() -> None:
    from cesar.migrate_store import Identity

    assert Identity.__module__ == "cesar.migrate.store"
    me = Identity(command="migrate up")
    assert pickle.loads(pickle.dumps(me)) == me


def test_the_public_faces_export_what_the_flat_modules_did() -> None:
    from cesar import deploy, migrate, rotate

    for package in (migrate, rotate, deploy):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert missing == []
    assert migrate.Runner.__module__ == "cesar.migrate.runner"
    assert rotate.Rotator.__module__ == "cesar.rotate.rotator"
    assert deploy.plan.__module__ == "cesar.deploy.playbook"


def test_the_flat_infra_names_are_the_grouped_modules() -> None:
    import infra

    for old, new in sorted(infra.MOVED.items()):
        moved = importlib.import_module(old)
        assert moved is importlib.import_module(new), old
    from infra.monitoring import GRAFANA_ADMIN_USER, Monitoring
    from infra.monitoring.component import GRAFANA_ADMIN_USER as user
    from infra.monitoring.component import Monitoring as component

    assert (Monitoring, GRAFANA_ADMIN_USER) == (component, user)
