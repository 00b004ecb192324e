"""Module names that moved into packages keep importing, as the very same module object.

Scripts, cron lines and code written against the flat layout import ``cesar.stack``,
``cesar.migrate_cli`` and the like. Each old name below resolves to its new module itself (not
a copy), so attributes set on one are seen through the other. There is deliberately no file at
the old path: git then records each move as a rename, and edits made meanwhile to the old file
follow it to the new one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Mapping

MOVED: dict[str, str] = {
    "cesar.migrate_cli": "cesar.migrate.cli",
    "cesar.migrate_files": "cesar.migrate.files",
    "cesar.migrate_lease": "cesar.migrate.lease",
    "cesar.migrate_plan": "cesar.migrate.plan",
    "cesar.migrate_regions": "cesar.migrate.regions",
    "cesar.migrate_sql": "cesar.migrate.sql",
    "cesar.migrate_store": "cesar.migrate.store",
    "cesar.rotate_cli": "cesar.rotate.cli",
    "cesar.rotate_record": "cesar.rotate.record",
    "cesar.secret_stores": "cesar.rotate.stores",
    "cesar.scram": "cesar.rotate.scram",
    "cesar.embedded": "cesar.dev.embedded",
    "cesar.stack": "cesar.dev.stack",
    "cesar.service": "cesar.dev.service",
    "cesar.tls": "cesar.dev.tls",
    "cesar.wheelhouse": "cesar.deploy.wheelhouse",
    "cesar.configcheck": "cesar.deploy.configcheck",
    "cesar.lease": "cesar.db.lease",
    "cesar.urls": "cesar.db.urls",
    "tests.hosts.testhosts": "cesar.dev.testhosts",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and hands back the module that now lives under the new one."""

    def __init__(self) -> None:
        self.moved: dict[str, str] = {}

    def find_spec(self, fullname: str, path: object = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.moved:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.moved[spec.name])
        # The import system stamps the old name's spec on what this returns; the real one
        # rides along on the spec so exec_module can put it back (reload, pickling).
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        real = module.__spec__.loader_state
        if real is not None:
            module.__spec__ = real


def install(moved: Mapping[str, str] = MOVED) -> None:
    """Old name -> new name, for this package's ``MOVED`` or another's (``infra`` has its own)."""
    finder = next((f for f in sys.meta_path if isinstance(f, _MovedFinder)), None)
    if finder is None:
        finder = _MovedFinder()
        sys.meta_path.insert(0, finder)
    finder.moved.update(moved)
