"""``--mode transactional`` on CockroachDB: refused where ``autocommit_before_ddl`` would commit
a migration piece by piece.

No CockroachDB server runs here, so the decision is tested on what the runner reads from one:
``SELECT version()`` as CockroachDB answers it, and the session's ``autocommit_before_ddl``
(``SHOW autocommit_before_ddl``: ``on``/``off``; absent before v24.1). On PostgreSQL the mode
runs as before (tests/migrate/test_up.py and others).
"""

from __future__ import annotations

import pytest

from cesar.migrate import transactional_problem

V23_2 = "CockroachDB CCL v23.2.23 (x86_64-pc-linux-gnu, built 2025/04/09 00:00:00, go1.22.8)"
V24_3 = ("CockroachDB CCL v24.3.5 (x86_64-pc-linux-gnu, built 2025/02/13 16:46:31, go1.22.8 "
         "X:nocoverageredesign)")
V25_1 = "CockroachDB CCL v25.1.5 (x86_64-pc-linux-gnu, built 2025/04/28 00:00:00, go1.22.8)"
V25_4 = "CockroachDB CCL v25.4.10 (x86_64-pc-linux-gnu, built 2026/05/06 12:00:00, go1.23.12)"
V26_1 = "CockroachDB CCL v26.1.2 (x86_64-pc-linux-gnu, built 2026/03/10 11:02:03, go1.23.12)"
PG16 = ("PostgreSQL 16.4 on x86_64-pc-linux-gnu, compiled by gcc (GCC) 10.2.1 20210130 "
        "(Red Hat 10.2.1-11), 64-bit")


@pytest.mark.parametrize(("version", "setting", "refused"), [
    (V25_1, "on", True),     # the default since v25.1
    (V25_4, "on", True),     # the pinned release
    (V26_1, "on", True),
    (V25_4, None, True),     # not readable: the release's default (on) decides
    (V25_4, "off", False),   # an operator turned it off: DDL stays in the transaction
    (V24_3, "off", False),   # the default before v25.1
    (V24_3, "on", True),     # turned on by hand on an older release
    (V23_2, None, False),    # no such setting before v24.1
    (PG16, None, False),     # PostgreSQL: DDL is transactional
    (PG16, "on", False),
])
def test_transactional_mode_is_refused_where_ddl_would_autocommit(
    version: str, setting: str | None, refused: bool
) -> None:
    problem = transactional_problem(version, setting)
    assert (problem is not None) == refused
    if problem:
        assert "\n" not in problem
        assert problem.startswith("--mode transactional on CockroachDB v")
        assert "autocommit_before_ddl on" in problem and "--mode per-statement" in problem
