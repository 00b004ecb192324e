"""Base backups with ``pg_basebackup`` (plain format, WAL streamed in, with a manifest) and their
verification with ``pg_verifybackup``. A backup is written under ``base/.partial-<label>`` and
renamed when complete, so a killed run never leaves something that looks restorable."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cesar.backup import archive
from cesar.backup.settings import Server
from cesar.errors import ConfigError, OperationFailed

META = "cesar-backup.json"


@dataclass
class Backup:
    label: str
    path: str
    started_at: str          # ISO 8601, UTC
    finished_at: str         # the earliest point in time this backup can be restored to
    start_lsn: str
    end_lsn: str
    timeline: int
    start_segment: str
    end_segment: str
    segment_size: int
    server_version: str
    system_identifier: str
    seconds: float
    bytes: int

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def repo_lock(repo: Path, exclusive: bool) -> Iterator[None]:
    """Pruning takes it exclusively; a restore copying a backup holds it shared."""
    path = Path(repo) / "state" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _now() -> datetime:
    return datetime.now(UTC)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_archiving(server: Server) -> None:
    with server.connect() as conn:
        mode = conn.execute("SHOW archive_mode").fetchone()[0]
        command = conn.execute("SHOW archive_command").fetchone()[0]
    expected = archive.archive_command(server.repo)
    if mode != "on" or command != expected:
        raise ConfigError(
            f"WAL archiving into {server.repo} is not on for this server (archive_mode={mode}); "
            "run `invoke up` (embedded stack) or `cesar backup setup` and restart the server")


def take(server: Server) -> Backup:
    """One base backup now; the server must be archiving into the repository."""
    archive.prepare_repo(server.repo, server.owner)
    check_archiving(server)
    started = _now()
    label = started.strftime("%Y%m%dT%H%M%S%fZ")
    base = server.repo / "base"
    _remove_stale_partials(base)
    partial = base / f".partial-{label}"
    t0 = time.perf_counter()
    with server.connect() as conn:
        segment_size = int(conn.execute(
            "SELECT pg_size_bytes(current_setting('wal_segment_size'))").fetchone()[0])
        version = conn.execute("SHOW server_version").fetchone()[0]
        sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()"
                                 ).fetchone()[0])
    try:
        archive.run_as(
            [str(server.bindir / "pg_basebackup"), "-h", server.host, "-p", str(server.port),
             "-U", server.user, "-D", str(partial), "-Fp", "-X", "stream", "-c", "fast",
             "-l", f"cesar {label}", "--no-password"],
            server.owner, "pg_basebackup")
        start_lsn, timeline = _read_label(partial / "backup_label")
        end_lsn = _manifest_end(partial / "backup_manifest")
        finished = _now()
        backup = Backup(
            label=label, path=str(base / label), started_at=started.isoformat(),
            finished_at=finished.isoformat(), start_lsn=start_lsn, end_lsn=end_lsn,
            timeline=timeline, start_segment=archive.segment_of(start_lsn, timeline,
                                                                segment_size),
            end_segment=archive.segment_of(end_lsn, timeline, segment_size),
            segment_size=segment_size, server_version=version, system_identifier=sysid,
            seconds=round(time.perf_counter() - t0, 3), bytes=_tree_bytes(partial))
        meta = partial / META
        meta.write_text(json.dumps(backup.as_dict(), indent=2) + "\n")
        if server.owner is not None:
            os.chown(meta, server.owner.pw_uid, server.owner.pw_gid)
        os.replace(partial, base / label)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return backup


def _remove_stale_partials(base: Path, older_than: float = 86400.0) -> None:
    """A backup killed mid-way leaves its .partial directory; one untouched for a day is not
    being written any more (a running pg_basebackup writes continuously)."""
    now = time.time()
    for path in base.glob(".partial-*"):
        try:
            if now - path.stat().st_mtime > older_than:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _read_label(path: Path) -> tuple[str, int]:
    text = path.read_text()
    lsn = re.search(r"^START WAL LOCATION: (\S+)", text, re.M)
    tli = re.search(r"^START TIMELINE: (\d+)", text, re.M)
    if not lsn or not tli:
        raise OperationFailed(f"{path} has no START WAL LOCATION/START TIMELINE")
    return lsn.group(1), int(tli.group(1))


def _manifest_end(path: Path) -> str:
    ranges = json.loads(path.read_text()).get("WAL-Ranges") or []
    if not ranges:
        raise OperationFailed(f"{path} has no WAL-Ranges")
    return ranges[-1]["End-LSN"]


def load(path: Path) -> Backup | None:
    try:
        return Backup(**json.loads((path / META).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def backups(repo: Path) -> list[Backup]:
    """Complete backups, oldest first."""
    base = Path(repo) / "base"
    if not base.exists():
        return []
    found = [load(p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return sorted((b for b in found if b is not None), key=lambda b: b.finished_at)


def verify(server: Server, backup: Backup) -> None:
    """pg_verifybackup: every file against the manifest's checksums, and the WAL it needs."""
    archive.run_as([str(server.bindir / "pg_verifybackup"), "--quiet", "-i", META, backup.path],
                   server.owner, f"verifying backup {backup.label} (pg_verifybackup)")


def prune(server: Server) -> list[str]:
    """Keep the newest ``server.keep`` backups and the WAL from the oldest kept one onwards."""
    removed: list[str] = []
    with repo_lock(server.repo, exclusive=True):
        kept = backups(server.repo)
        for old in kept[:-server.keep]:
            shutil.rmtree(old.path, ignore_errors=True)
            removed.append(old.label)
        remaining = backups(server.repo)
        if remaining and removed:
            archive.remove_before(server.repo, remaining[0].start_segment)
    return removed


# With no base backup, archived WAL restores nothing; the newest segments are kept for a backup
# starting now (512 MiB at the default 16 MiB segments).
WAL_KEEP_WITHOUT_BACKUP = 32


def prune_wal(repo: Path, keep_without_backup: int = WAL_KEEP_WITHOUT_BACKUP) -> int:
    """Delete archived WAL no backup needs: before the oldest backup's start, or with no backup
    (and none being taken) all but the newest ``keep_without_backup`` segments. Returns how
    many segments were removed."""
    repo = Path(repo)
    with repo_lock(repo, exclusive=True):
        found = backups(repo)
        if found:
            return archive.remove_before(repo, found[0].start_segment)
        if any((repo / "base").glob(".partial-*")):
            return 0  # a backup is being taken: its start segment must stay
        segments = sorted((n for n in archive.archived(repo) if archive.SEGMENT_RE.match(n)),
                          key=lambda n: (n[8:], n[:8]))
        old = segments[:-keep_without_backup] if keep_without_backup > 0 else segments
        for name in old:
            (repo / "wal" / f"{name}.gz").unlink(missing_ok=True)
        return len(old)

