"""A sync run paused inside a transaction does not hold its locks past its lease."""

from __future__ import annotations

import time

import psycopg
import pytest

from cesar.db import Endpoint
from cesar.sync import run
from cesar.sync.tables import load_sync_settings
from tests.helpers import make_settings


def test_an_idle_transaction_of_a_sync_session_ends_after_one_lease(
        fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CESAR_SYNC_LEASE_SECONDS", "1")
    sync = load_sync_settings()
    with psycopg.connect(fresh_db, autocommit=True) as admin:
        admin.execute("CREATE TABLE held (id INT PRIMARY KEY)")
        admin.execute("INSERT INTO held VALUES (1)")
        paused = run.connect(Endpoint("local", fresh_db, "--url"), make_settings(), sync)
        paused.execute("BEGIN")
        paused.execute("SELECT * FROM held WHERE id = 1 FOR UPDATE")
        time.sleep(2.5)  # paused (as under SIGSTOP) past its 1 s lease, lock held
        # The run that took over gets the row at once: the server ended the paused session.
        admin.execute("SET lock_timeout = '500ms'")
        assert admin.execute("SELECT id FROM held WHERE id = 1 FOR UPDATE").fetchone() == (1,)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            paused.execute("SELECT 1")
        paused.close()
