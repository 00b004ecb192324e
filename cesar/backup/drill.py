"""The restore drill: prove the newest backup and the archive restore what the server holds.

1. RPO: how old the newest restorable point is (WAL written since the last archived segment
   would be lost); 2. the newest backup is verified against its manifest (pg_verifybackup), and
   every WAL segment from its start to now is present and whole; 3. a restore point is created
   on the live server at a moment when the source's fingerprints are known exactly (writers are
   held off by a SHARE lock for the instant it takes to create it and open a snapshot); 4. the
   backup is recovered on a scratch server to that restore point (RTO: copy, replay, promote,
   first query); 5. per-table fingerprints (row count and an md5 over the rows in primary-key
   order) are compared; 6. the scratch server is removed. The result is kept in
   ``state/last-drill.json`` for ``dr.status`` and the metrics.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cesar.backup import archive, base, scratch
from cesar.backup.settings import Server
from cesar.console import first_line
from cesar.errors import CesarError

LAST_DRILL = "last-drill.json"
# The whole row as ``alias.*``: a bare alias would name a column of that name instead.
_ROW = sql.Identifier("_cesar_row")


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(s, t) for s, t in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%' "
        "ORDER BY 1, 2").fetchall()]


def _order_by(conn: psycopg.Connection, schema: str, table: str) -> sql.Composable:
    cols = [c for (c,) in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
        [sql.Identifier(schema, table).as_string(conn)]).fetchall()]
    if cols:
        return sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    return sql.SQL("ROW({}.*)::text").format(_ROW)


def fingerprint(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """{schema.table: {rows, hash}} for every user table, in the connection's snapshot."""
    out: dict[str, dict[str, Any]] = {}
    for schema, table in user_tables(conn):
        query = sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(md5(ROW({r}.*)::text), '' "
            "ORDER BY {order})), '') FROM {table} AS {r}").format(
                order=_order_by(conn, schema, table), table=sql.Identifier(schema, table), r=_ROW)
        rows, digest = conn.execute(query).fetchone()
        out[f"{schema}.{table}"] = {"rows": int(rows), "hash": digest}
    return out


def measure_rpo(conn: psycopg.Connection) -> float | None:
    """Seconds of committed work that would be lost now: 0 when every WAL byte written is in the
    archive, else the time since the last segment reached it (an underestimate by the archive
    command's own duration, a fraction of a second)."""
    row = conn.execute(
        "SELECT last_archived_wal, extract(epoch FROM now() - last_archived_time), "
        "pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver").fetchone()
    last, age, current = row
    if last is None:
        return None
    if last[:24] >= current:
        return 0.0
    return round(float(age), 3)


def _source_point(server: Server, name: str) -> tuple[dict[str, dict[str, Any]], str, str]:
    """Create restore point ``name`` while writers are held off; return the source's
    fingerprints as of that point, the restore point's LSN and its segment."""
    with server.connect(server.database) as holder, \
            psycopg.connect(server.conninfo(server.database)) as reader:
        tables = user_tables(holder)
        holder.execute("BEGIN")
        holder.execute("SET LOCAL lock_timeout = '30s'")
        if tables:
            holder.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)))
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        reader.execute("SELECT 1")  # the snapshot: taken while no writer can commit
        lsn = holder.execute("SELECT pg_create_restore_point(%s)::text", [name]).fetchone()[0]
        holder.execute("COMMIT")
        prints = fingerprint(reader)
        reader.rollback()
        segment = holder.execute("SELECT pg_walfile_name(%s::pg_lsn)", [lsn]).fetchone()[0]
        holder.execute("SELECT pg_switch_wal()")
        archive.wait_archived(holder, segment)
    return prints, lsn, segment


def run(server: Server) -> dict[str, Any]:
    """One drill; never raises for a failed check: the result says what failed."""
    started_at = datetime.now(UTC)
    result: dict[str, Any] = {
        "ok": False, "started_at": started_at.isoformat(), "database": server.database,
        "backup": None, "rpo_seconds": None, "rto_seconds": None, "restore_point": None,
        "tables": [], "problems": [],
    }
    terminated = False
    previous = None
    if threading.current_thread() is threading.main_thread():
        # A drill stopped by its timer (SIGTERM) must still record that it failed.
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _drill(server, result)
    except CesarError as exc:
        result["problems"].append(str(exc))
    except psycopg.Error as exc:
        first = first_line(exc)
        result["problems"].append(f"database error: {first}")
    except _Terminated:
        terminated = True
        result["problems"].append("the drill was stopped (SIGTERM) before it finished")
    except Exception as exc:  # noqa: BLE001 - any failure is a failed drill, recorded below
        first = first_line(exc)
        result["problems"].append(f"the drill failed: {type(exc).__name__}: {first}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    result["ok"] = not result["problems"] and bool(result["tables"]) and all(
        t["match"] for t in result["tables"])
    result["seconds"] = round((datetime.now(UTC) - started_at).total_seconds(), 3)
    save(server.repo, result)
    if terminated:
        raise SystemExit(128 + signal.SIGTERM)
    return result


class _Terminated(Exception):  # noqa: N818 - a signal, not an error of the drill's own
    pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _drill(server: Server, result: dict[str, Any]) -> None:
    with server.connect() as conn:
        result["rpo_seconds"] = measure_rpo(conn)
    found = base.backups(server.repo)
    if not found:
        result["problems"].append(f"no backup in {server.repo / 'base'}")
        return
    backup = found[-1]
    result["backup"] = backup.label
    try:
        base.verify(server, backup)
    except CesarError as exc:
        result["problems"].append(str(exc))
        return
    name = f"cesar-drill-{started_label(result)}"
    prints, lsn, segment = _source_point(server, name)
    result["restore_point"] = {"name": name, "lsn": lsn, "segment": segment}
    missing = archive.missing_between(server.repo, backup.start_segment, segment,
                                      backup.segment_size)
    if missing:
        result["problems"].append(
            f"WAL segment{'s' if len(missing) > 1 else ''} missing from the archive "
            f"{server.repo / 'wal'}: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}")
        return
    first = archive.parse_segment(backup.start_segment, backup.segment_size)
    last = archive.parse_segment(segment, backup.segment_size)
    assert first is not None and last is not None
    for number in range(first.number, last.number + 1):
        problem = archive.check_segment(server.repo, archive.segment_name(
            first.timeline, number, backup.segment_size), backup.segment_size)
        if problem:
            result["problems"].append(problem)
    if result["problems"]:
        return
    t0 = time.perf_counter()
    with scratch.recovered(server, backup, {"recovery_target_name": name}) as s, \
            s.connect(server.database) as conn:
        conn.execute("SELECT 1")
        result["rto_seconds"] = round(time.perf_counter() - t0, 3)
        restored = fingerprint(conn)
    for table in sorted(set(prints) | set(restored)):
        want, got = prints.get(table), restored.get(table)
        entry = {"table": table, "match": want == got,
                 "source": want, "restored": got}
        result["tables"].append(entry)


def started_label(result: dict[str, Any]) -> str:
    return result["started_at"].replace("-", "").replace(":", "").split(".")[0] + f"-{os.getpid()}"


def save(repo: Path, result: dict[str, Any]) -> None:
    state = Path(repo) / "state"
    if not state.exists():
        return
    tmp = state / f".{LAST_DRILL}.{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, state / LAST_DRILL)


def last(repo: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(repo) / "state" / LAST_DRILL).read_text())
    except (OSError, ValueError):
        return None
