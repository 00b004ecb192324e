"""What the sync records in each database: its identity and pairing, and ``sync_state``.

``sync_node`` (one row) holds the origin this database stamps on its writes, its role
(``local`` or ``cluster``) and its peer's origin once a run has paired the two. A run refuses a
pair that contradicts what is recorded (the same database twice, swapped URLs, a third
database): ``pending`` means "not yet at *the* peer", so only one peer is possible.

``sync_state`` has one row per table and direction, written to *both* databases at the end of
every run, so ``GET /health`` on either side and ``cesar sync status`` read the same figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from cesar import db
from cesar.errors import ConfigError

ROLES = ("local", "cluster")
DIRECTIONS = ("local_to_cluster", "cluster_to_local")


@dataclass(frozen=True)
class Node:
    origin: str
    role: str | None
    peer: str | None


def read_node(conn: psycopg.Connection, role: str, url: str) -> Node:
    """This database's identity; :class:`ConfigError` when the sync tables are missing."""
    try:
        row = conn.execute("SELECT origin, role, peer FROM sync_node WHERE singleton").fetchone()
    except pgerrors.UndefinedTable:
        raise ConfigError(
            f"the {role} database {url} has no sync tables; run `cesar migrate up` on it "
            "(migrations 010_sync_tables and 011_sync_capture)"
        ) from None
    if row is None:
        raise ConfigError(f"sync_node is empty in the {role} database {url}; run "
                          "`cesar migrate up` on it (migration 010_sync_tables seeds it)")
    return Node(str(row[0]), row[1], row[2])


def check_pair(local: Node, cluster: Node, *, repair: bool, sources: tuple[str, str]) -> bool:
    """Whether this is the pair's first run; :class:`ConfigError` when the pair is wrong.

    ``repair`` (``--full``) accepts a new peer: the full reconcile then makes both sides equal
    whatever the old peer had received. ``sources`` name where the local and the cluster URL
    came from (a flag, a variable, the embedded stack), so a message names what to change."""
    if local.origin == cluster.origin:
        raise ConfigError(
            f"{sources[0]} and {sources[1]} lead to the same database (same sync origin "
            f"{local.origin}); point them at two different databases"
        )
    for node, role in ((local, "local"), (cluster, "cluster")):
        if node.role is not None and node.role != role:
            raise ConfigError(
                f"the database given as the {role} side was paired as the {node.role} side; "
                f"the URLs look swapped ({sources[0]} is the local PostgreSQL, {sources[1]} "
                "the cluster)"
            )
    first = local.peer is None or cluster.peer is None
    wrong = [(n, r, o) for n, r, o in ((local, "local", cluster.origin),
                                       (cluster, "cluster", local.origin))
             if n.peer is not None and n.peer != o]
    if wrong and not repair:
        node, role, _ = wrong[0]
        raise ConfigError(
            f"the {role} database is paired with another database (origin {node.peer}); a "
            "database syncs with exactly one peer. If that peer is gone for good, run "
            "`cesar sync run --full` once: it re-pairs and reconciles every table"
        )
    return first or bool(wrong)


def pair(conns: dict[str, psycopg.Connection], nodes: dict[str, Node]) -> None:
    """Record each side's role and peer (a run's first write)."""
    for role, other in (("local", "cluster"), ("cluster", "local")):
        conns[role].execute(
            "UPDATE sync_node SET role = %s, peer = %s, paired_at = now() WHERE singleton",
            [role, nodes[other].origin],
        )


# ------------------------------------------------------------------------- sync_state
@dataclass
class StateRow:
    table: str
    direction: str
    ran_at: datetime
    succeeded: bool
    position: datetime | None
    rows: int
    conflicts: int
    pending: int
    oldest_pending_at: datetime | None
    error: str | None


def write_state(conn: psycopg.Connection, rows: Sequence[StateRow]) -> None:
    """Upsert the rows (one statement): totals accumulate, the position only moves forward,
    ``last_sync_at`` moves only on success. ``last_run_at`` and ``last_sync_at`` are this
    database's ``now()``, the clock its ``sync_lag`` view measures lag against (the rows'
    ``ran_at`` only says whether the run succeeded)."""
    if not rows:
        return
    conn.execute(
        "INSERT INTO sync_state AS s (table_name, direction, last_run_at, last_sync_at, position, "
        "rows_last_run, rows_total, conflicts_last_run, conflicts_total, pending, "
        "oldest_pending_at, last_error, updated_at) "
        "SELECT u.t, u.d, now(), CASE WHEN u.ok IS NOT NULL THEN now() END, u.pos, u.n, u.n, "
        "u.c, u.c, u.p, u.oldest, u.err, now() "
        "FROM (SELECT unnest(CAST(%b AS TEXT[])) AS t, unnest(CAST(%b AS TEXT[])) AS d, "
        "             unnest(CAST(%b AS TIMESTAMPTZ[])) AS ran, "
        "             unnest(CAST(%b AS TIMESTAMPTZ[])) AS ok, "
        "             unnest(CAST(%b AS TIMESTAMPTZ[])) AS pos, "
        "             unnest(CAST(%b AS BIGINT[])) AS n, unnest(CAST(%b AS BIGINT[])) AS c, "
        "             unnest(CAST(%b AS BIGINT[])) AS p, "
        "             unnest(CAST(%b AS TIMESTAMPTZ[])) AS oldest, "
        "             unnest(CAST(%b AS TEXT[])) AS err) AS u "
        "ON CONFLICT (table_name, direction) DO UPDATE SET "
        "last_run_at = excluded.last_run_at, "
        "last_sync_at = COALESCE(excluded.last_sync_at, s.last_sync_at), "
        "position = CASE WHEN s.position IS NULL OR excluded.position > s.position "
        "                THEN COALESCE(excluded.position, s.position) ELSE s.position END, "
        "rows_last_run = excluded.rows_last_run, "
        "rows_total = s.rows_total + excluded.rows_last_run, "
        "conflicts_last_run = excluded.conflicts_last_run, "
        "conflicts_total = s.conflicts_total + excluded.conflicts_last_run, "
        "pending = excluded.pending, oldest_pending_at = excluded.oldest_pending_at, "
        "last_error = excluded.last_error, updated_at = now()",
        [[r.table for r in rows], [r.direction for r in rows], [r.ran_at for r in rows],
         [r.ran_at if r.succeeded else None for r in rows], [r.position for r in rows],
         [r.rows for r in rows], [r.conflicts for r in rows], [r.pending for r in rows],
         [r.oldest_pending_at for r in rows], [r.error for r in rows]],
    )


def read_state(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """``sync_state`` with each row's lag (seconds, by the database's clock); [] before the
    first run, None-safe when the tables do not exist (raises UndefinedTable)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT s.table_name, s.direction, s.last_run_at, s.last_sync_at, s.position, "
            "s.rows_last_run, s.rows_total, s.conflicts_last_run, s.conflicts_total, s.pending, "
            "s.oldest_pending_at, s.last_error, l.lag_seconds "
            "FROM sync_state AS s JOIN sync_lag AS l "
            "  ON l.table_name = s.table_name AND l.direction = s.direction "
            "ORDER BY s.table_name, s.direction"
        ).fetchall()
    for row in rows:
        lag = row["lag_seconds"]
        row["lag_seconds"] = None if lag is None else round(float(lag), 3)
    return rows


def conflict_counts(conn: psycopg.Connection) -> dict[str, dict[str, int]]:
    """Per table, the conflicts recorded in this database, by resolution."""
    out: dict[str, dict[str, int]] = {}
    for table, resolution, count in conn.execute(
        "SELECT table_name, resolution, count(*) FROM sync_conflicts "
        "GROUP BY table_name, resolution"
    ).fetchall():
        out.setdefault(table, {})[resolution] = int(count)
    return out


def save_state(conn: psycopg.Connection, rows: Sequence[StateRow],
               fence: Callable[[psycopg.Connection], None], retry: dict[str, float]) -> None:
    """:func:`write_state` in a transaction of its own that ``fence`` (the run's lease) guards:
    a run paused past its lease cannot write its older figures over a newer run's. Retried on
    a serialization failure (``retry``: :func:`cesar.db.run_transaction`'s arguments)."""
    def write(c: psycopg.Connection) -> None:
        fence(c)
        write_state(c, rows)

    db.run_transaction(conn, write, **retry)
