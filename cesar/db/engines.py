"""What differs between the two engines, held by one object each instead of ``if`` branches.

Code asks the engine object of its connection (:func:`of`) for a fact, e.g. whether schema
changes are transactional, and never compares engine names itself. Facts about CockroachDB
carry their source; they were checked against CockroachDB's documentation, while the test suite
runs the PostgreSQL side for real (embedded PostgreSQL 16 and Debian's 15).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import psycopg

EngineName = Literal["cockroachdb", "postgresql"]
Mode = Literal["transactional", "per-statement"]


@dataclass(frozen=True)
class Engine:
    name: EngineName
    #: Schema changes take part in the enclosing transaction (a failed migration leaves no
    #: trace). CockroachDB runs schema changes reliably only as implicit transactions, one
    #: statement each (https://www.cockroachlabs.com/docs/stable/online-schema-changes).
    transactional_ddl: bool
    #: Statements that make a long-running session notice a vanished client within seconds;
    #: a release without one is tolerated (``client_connection_check_interval`` is PG 14+).
    #: CockroachDB cancels a session's work when its connection closes: none needed.
    liveness_settings: tuple[str, ...]
    #: Whether a failing ``RESET ALL`` / ``RESET ROLE`` / ``DEALLOCATE ALL`` between migrations
    #: is an error (PostgreSQL has all three) or is reported and the run goes on (a CockroachDB
    #: release lacking one; checked against CockroachDB's documentation only).
    strict_session_reset: bool

    @property
    def default_mode(self) -> Mode:
        """The migration runner's ``--mode auto`` on this engine."""
        return "transactional" if self.transactional_ddl else "per-statement"


POSTGRESQL = Engine(
    name="postgresql",
    transactional_ddl=True,
    liveness_settings=("SET client_connection_check_interval = '2s'",),
    strict_session_reset=True,
)
COCKROACHDB = Engine(
    name="cockroachdb",
    transactional_ddl=False,
    liveness_settings=(),
    strict_session_reset=False,
)
ENGINES: dict[str, Engine] = {e.name: e for e in (POSTGRESQL, COCKROACHDB)}


def named(name: str) -> Engine:
    return ENGINES[name]


def of(conn: psycopg.Connection) -> Engine:
    """The engine object of the server behind ``conn`` (one ``SELECT version()``)."""
    from cesar.db import detect_engine

    return ENGINES[detect_engine(conn)]
