"""The committed lock file describes the committed package.json: `npm ci` installs from the lock
alone, so a field changed in package.json only (a dependency, the Node.js versions it supports)
would silently not be what CI and `invoke up` install or check."""

from __future__ import annotations

import json

from cesar import web


def test_lock_root_matches_package_json() -> None:
    package = json.loads((web.WEB_SOURCE / "package.json").read_text())
    lock = json.loads((web.WEB_SOURCE / "package-lock.json").read_text())
    root = lock["packages"][""]
    for field in ("name", "version", "dependencies", "devDependencies", "engines"):
        assert root.get(field) == package.get(field), (
            f"package-lock.json's {field} differs from package.json's: run "
            "`npm install --package-lock-only` in web/ and commit the lock")
