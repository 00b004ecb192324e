"""The host tier: real Debian hosts (systemd-nspawn, one network namespace each) for Ansible and
testinfra. Needs root, debootstrap and systemd-nspawn: in CI (CI=true) their absence fails the
run with a message naming what to install; elsewhere the tier is skipped with that message.
Everything a session starts is torn down at its end, failed or not (and, if the session itself
was killed, by the next session)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest

from cesar.dev import testhosts
from tests.helpers import require

HOSTS = 2


def _say(message: str) -> None:
    print(f"[testhosts] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def host_run() -> Iterator[testhosts.Run]:
    missing = testhosts.missing_requirements()
    require(not missing, "the host tier needs " + ", ".join(missing))
    # A CI job cancelled with SIGTERM still tears the hosts down (pytest unwinds on
    # KeyboardInterrupt); SIGKILL cannot be caught: the next session reaps that run.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run = testhosts.up(HOSTS, owner="pytest", progress=_say)
        try:
            yield run
        finally:
            testhosts.down(run, progress=_say)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
