"""Where a restore "to a time" stops: just after the last commit at or before that time.

PostgreSQL's ``recovery_target_time`` stops before the first commit *after* the time, so it
also replays what non-transactional records lie between the two commits. ``DROP DATABASE``
writes exactly such records (the database marked invalid in place, its files removed) before
its commit: a restore to a moment before the drop would come back with the database gone. So
the archive is read with ``pg_waldump`` (newest segments first) for the last commit at or before
the time, and recovery stops at that commit's LSN (``recovery_target_lsn``, inclusive).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cesar.backup import archive
from cesar.backup.base import Backup
from cesar.backup.settings import Server

_COMMIT = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+), prev [^,]+, desc: COMMIT "
                     r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


@dataclass(frozen=True)
class StopPoint:
    lsn: str | None      # None: no commit after the backup's start is old enough: the backup
    committed_at: str | None

    def recovery_settings(self) -> dict[str, str]:
        if self.lsn is None:
            return {"recovery_target": "immediate"}
        return {"recovery_target_lsn": self.lsn, "recovery_target_inclusive": "true"}


def find(server: Server, backup: Backup, target: datetime) -> StopPoint:
    first = archive.parse_segment(backup.start_segment, backup.segment_size)
    assert first is not None
    names = [n for n in archive.archived(server.repo)
             if archive.SEGMENT_RE.match(n) and n[:8] == backup.start_segment[:8]
             and n >= backup.start_segment]
    work = server.repo / "scratch" / f"waldump-{uuid.uuid4().hex[:8]}"
    archive.run_as(["mkdir", "-p", "-m", "0700", str(work)], server.owner, "mkdir")
    try:
        # Newest first; two segments at a time so that a record crossing into the later one
        # is read whole.
        for i in range(len(names) - 1, -1, -1):
            chunk = names[max(i - 1, 0): i + 1]
            for name in chunk:
                dest = work / name
                if not dest.exists():
                    archive.run_as(["sh", "-c", f"gzip -dc '{server.repo}/wal/{name}.gz' > "
                                                f"'{dest}'"], server.owner, f"reading {name}")
            commits = _commits(server, work, chunk[0], chunk[-1])
            # Only commits past the backup's end: anything before it is in the backup already
            # (the backup finished before the target), and recovery cannot stop earlier.
            end = archive.lsn_to_int(backup.end_lsn)
            older = [(lsn, at) for lsn, at in commits
                     if at <= target and archive.lsn_to_int(lsn) >= end]
            if older:
                lsn, at = max(older, key=lambda c: archive.lsn_to_int(c[0]))
                return StopPoint(lsn, at.isoformat())
            if commits and all(archive.lsn_to_int(lsn) < end for lsn, _ in commits):
                break  # reached the backup's own WAL: nothing later is old enough
            for name in chunk[1:]:
                (work / name).unlink(missing_ok=True)
        return StopPoint(None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _commits(server: Server, work: Path, start: str, end: str) -> list[tuple[str, datetime]]:
    """Commit records of the segments ``start``..``end``. pg_waldump exits non-zero where the
    newest segment's valid WAL ends (zeros, a partial record): what it printed still counts."""
    result = subprocess.run(
        [str(server.bindir / "pg_waldump"), "--rmgr=Transaction", "-p", str(work), start, end],
        capture_output=True, text=True, env={"LC_ALL": "C", "TZ": "UTC"},
        user=server.owner.pw_uid if server.owner else None,
        group=server.owner.pw_gid if server.owner else None, cwd="/", timeout=300)
    found = []
    for m in _COMMIT.finditer(result.stdout):
        found.append((m.group(1), datetime.fromisoformat(m.group(2)).replace(tzinfo=UTC)))
    return found
