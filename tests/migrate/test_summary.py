"""`summary()` is what /health and /metrics read: one query, never creating the table."""

from __future__ import annotations

import psycopg

from cesar import migrate


def test_summary_before_the_first_run_counts_files_and_creates_nothing(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        counts = migrate.summary(conn)
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    total = len(migrate.migration_names())
    assert total > 0
    assert counts == {"applied": 0, "total": total, "failed": 0, "pending": total}
    assert exists == (None,)


def test_summary_inside_a_transaction_leaves_it_usable(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        conn.execute("SELECT 1")  # now INTRANS
        migrate.summary(conn)
        assert conn.execute("SELECT 2").fetchone() == (2,)
