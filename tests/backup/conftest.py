"""The backup tests' server: one BackupStack (tests/backup/helpers.py) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backup.helpers import BackupStack, drop_stack, make_stack


@pytest.fixture(scope="module")
def bk() -> Iterator[BackupStack]:
    stack = make_stack("backup")
    try:
        yield stack
    finally:
        drop_stack(stack)
