"""``dr.status``: the age of the newest backup, the archive's lag and gaps, the last drill; and the
same figures as Prometheus metrics (a textfile the systemd units refresh after each run)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from cesar.backup import archive, base, drill
from cesar.backup.settings import Server
from cesar.errors import CesarError


def collect(server: Server) -> dict[str, Any]:
    now = datetime.now(UTC)
    found = base.backups(server.repo)
    newest = found[-1] if found else None
    info: dict[str, Any] = {
        "repo": str(server.repo),
        "database": server.database,
        "backups": len(found),
        "last_backup": newest.label if newest else None,
        "last_backup_at": newest.finished_at if newest else None,
        "last_backup_age_seconds": round((now - newest.finished).total_seconds(), 1)
        if newest else None,
        "schedule_seconds": server.schedule_seconds,
        "oldest_restorable": found[0].finished_at if found else None,
        "archive": None,
        "gaps": [],
        "last_drill": None,
        "problems": [],
    }
    try:
        with server.connect() as conn:
            row = conn.execute(
                "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                "last_failed_wal, last_failed_time, pg_walfile_name(pg_current_wal_lsn()), "
                "current_setting('archive_mode') FROM pg_stat_archiver").fetchone()
            lag = drill.measure_rpo(conn)
        info["archive"] = {
            "mode": row[7], "archived_count": row[0], "last_archived_wal": row[1],
            "last_archived_at": row[2].isoformat() if row[2] else None,
            "failed_count": row[3], "last_failed_wal": row[4],
            "last_failed_at": row[5].isoformat() if row[5] else None,
            "current_wal": row[6], "lag_seconds": lag,
            "failing": bool(row[5] and (row[2] is None or row[5] > row[2])),
        }
        if row[7] != "on":
            info["problems"].append("WAL archiving is off")
        if newest and row[1]:
            info["gaps"] = archive.missing_between(server.repo, newest.start_segment,
                                                   min(row[1][:24], row[6]), newest.segment_size)
    except CesarError as exc:
        info["problems"].append(str(exc))
    if info["gaps"]:
        info["problems"].append(f"WAL missing from the archive: {', '.join(info['gaps'][:5])}")
    if newest is None:
        info["problems"].append("no backup yet: run `invoke backup`")
    elif info["last_backup_age_seconds"] > 2 * server.schedule_seconds:
        info["problems"].append(f"the newest backup is {info['last_backup_age_seconds']:.0f} s "
                                f"old, over twice the schedule ({server.schedule_seconds} s)")
    if info["archive"] and info["archive"]["failing"]:
        info["problems"].append(f"archiving is failing (last failure on "
                                f"{info['archive']['last_failed_wal']})")
    last = drill.last(server.repo)
    if last:
        info["last_drill"] = {k: last.get(k) for k in (
            "ok", "started_at", "rpo_seconds", "rto_seconds", "backup", "problems")}
        if not last.get("ok"):
            info["problems"].append("the last drill failed")
    info["ok"] = not info["problems"]
    return info


def write_metrics(info: dict[str, Any], path: Path) -> None:
    """The textfile (node_exporter's textfile collector format, also served by the API)."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float | None) -> None:
        if value is not None:
            Gauge(name, doc, registry=registry).set(value)

    last_at = info.get("last_backup_at")
    gauge("cesar_backup_last_success_timestamp_seconds",
          "When the newest complete base backup finished.",
          datetime.fromisoformat(last_at).timestamp() if last_at else 0)
    gauge("cesar_backup_schedule_seconds", "Seconds between scheduled base backups.",
          info.get("schedule_seconds"))
    arch = info.get("archive") or {}
    gauge("cesar_backup_archive_failures", "WAL segments the server failed to archive "
          "(pg_stat_archiver.failed_count, since the statistics were reset).",
          arch.get("failed_count"))
    gauge("cesar_backup_archive_failing", "1 when the last archive attempt failed.",
          None if not arch else int(bool(arch.get("failing"))))
    gauge("cesar_backup_archive_gaps", "WAL segments missing from the archive since the newest "
          "backup.", len(info.get("gaps") or []))
    d = info.get("last_drill") or {}
    if d:
        gauge("cesar_backup_drill_success", "1 when the last restore drill matched every table.",
              int(bool(d.get("ok"))))
        started = d.get("started_at")
        gauge("cesar_backup_drill_timestamp_seconds", "When the last drill started.",
              datetime.fromisoformat(started).timestamp() if started else None)
        gauge("cesar_backup_drill_rpo_seconds", "RPO the last drill measured.",
              d.get("rpo_seconds") if isinstance(d.get("rpo_seconds"), (int, float)) else None)
        gauge("cesar_backup_drill_rto_seconds", "RTO the last drill measured.",
              d.get("rto_seconds"))
    gauge("cesar_backup_status_timestamp_seconds", "When these figures were collected.",
          time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    os.chmod(path, 0o644)
