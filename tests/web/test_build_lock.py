"""`npm ci` waits for a build of the same checkout: it empties node_modules first, so an install
beside a running `next build` (`invoke up` and `invoke test` in one checkout, or `invoke
web.client`) would break that build."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest

from cesar import web


def test_install_waits_for_the_checkouts_build_lock(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "web"
    source.mkdir()
    (source / "package.json").write_text("{}")
    (source / "package-lock.json").write_text('{"lockfileVersion": 3}')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"  # stands in for npm: records that it ran, makes node_modules
    npm.write_text("#!/bin/sh\nmkdir -p node_modules\ntouch ran\n")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    result: list[bool] = []
    with (source / ".cesar-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what a running build holds
        worker = threading.Thread(target=lambda: result.append(web.install(source)))
        worker.start()
        time.sleep(1.0)
        assert not (source / "ran").exists(), "npm ci ran while a build held the lock"
    worker.join(timeout=30)
    assert result == [True] and (source / "ran").exists()
    assert web.install(source) is False  # the stamp now matches the lock file
