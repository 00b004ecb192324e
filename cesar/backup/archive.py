"""Continuous WAL archiving with the server's own ``archive_command``.

Why not a separate WAL receiver (Barman's ``receive-wal``, ``pg_receivewal``): the server
itself runs ``archive_command`` and keeps each segment until the command has succeeded, so the
archive cannot have a gap while archiving is failing, only a lag (which ``pg_stat_archiver``
counts and the alert reports). A receiver needs a replication slot and a supervised process, and
a dead receiver with a slot fills the server's disk. ``archive_timeout`` bounds the RPO.

The commands are small POSIX shell scripts (gzip, cmp, mv, sync): the server runs them as its
own user, which cannot read the Python environment of an operator's checkout.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from cesar.errors import ConfigError, OperationFailed

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")

# Idempotent as PostgreSQL asks: an identical file already archived is a success (a crash
# between the rename and the server noting success retries the same segment); a different one
# is an error that stops archiving instead of overwriting history.
# The archive belongs to one database system: a segment carries its server's system identifier
# (bytes 24-31 of its first page), recorded by the first segment archived. A new cluster on an
# old archive (re-initialised data directory) restarts at timeline 1 with the same names, so it
# is refused with a line saying so instead of colliding segment by segment.
ARCHIVE_SCRIPT = """#!/bin/sh
# archive_command for PostgreSQL, written by cesar: archive-wal %p %f
set -eu
src="$1"; name="$2"
dir="$(dirname "$0")/../wal"
dest="$dir/$name.gz"
case "$name" in
    [0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F]\
[0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F])
        sysid="$(od -An -tu8 -j24 -N8 "$src" | tr -d ' ')"
        mark="$dir/.system-identifier"
        if [ ! -s "$mark" ]; then
            printf '%s\\n' "$sysid" > "$mark.$$"; mv "$mark.$$" "$mark"
        fi
        if [ "$(cat "$mark")" != "$sysid" ]; then
        printf '%s %s, %s %s %s\\n' "archive-wal: the archive $dir belongs to database system" \\
                "$(cat "$mark")" "this server is $sysid (a new cluster?):" \\
                "move the repository aside (or set another CESAR_BACKUP_REPO)," \\
                "then take a backup" >&2
            exit 1
        fi;;
esac
if [ -f "$dest" ]; then
    if gzip -dc "$dest" | cmp -s - "$src"; then exit 0; fi
    echo "archive-wal: $dest exists with different content; refusing to overwrite" >&2
    exit 1
fi
tmp="$dir/.$name.$$.tmp"
trap 'rm -f "$tmp"' EXIT
gzip -1 -c "$src" > "$tmp"
sync "$tmp"
# ln fails when the name exists: two archivers never replace each other's file.
if ! ln "$tmp" "$dest" 2>/dev/null; then
    if gzip -dc "$dest" | cmp -s - "$src"; then exit 0; fi
    echo "archive-wal: $dest appeared with different content; refusing to overwrite" >&2
    exit 1
fi
sync "$dir"
"""

RESTORE_SCRIPT = """#!/bin/sh
# restore_command for PostgreSQL, written by cesar: restore-wal %f %p
set -eu
src="$(dirname "$0")/../wal/$1.gz"
[ -f "$src" ] || exit 1
gzip -dc "$src" > "$2"
"""


def _chown(path: Path, owner) -> None:  # noqa: ANN001 - pwd.struct_passwd | None
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def prepare_repo(repo: Path, owner=None) -> None:  # noqa: ANN001
    """Create the repository's directories and commands (idempotent), owned like the server."""
    repo = Path(repo)
    if "'" in str(repo) or "\n" in str(repo):
        raise ConfigError(f"the backup repository path {repo} contains a quote or newline; "
                          "choose a plain path")
    for sub in ("", "base", "wal", "bin", "state", "scratch"):
        path = repo / sub
        path.mkdir(mode=0o700, exist_ok=True)
        _chown(path, owner)
    for name, text in (("archive-wal", ARCHIVE_SCRIPT), ("restore-wal", RESTORE_SCRIPT)):
        path = repo / "bin" / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            _chown(tmp, owner)
            os.replace(tmp, path)


def archive_command(repo: Path) -> str:
    return f"'{Path(repo) / 'bin' / 'archive-wal'}' \"%p\" \"%f\""


def restore_command(repo: Path) -> str:
    return f"'{Path(repo) / 'bin' / 'restore-wal'}' \"%f\" \"%p\""


def config_lines(repo: Path, archive_timeout: int) -> str:
    """postgresql.conf lines that turn continuous archiving on into ``repo``."""
    command = archive_command(repo).replace("'", "''")
    return ("wal_level = replica\n"
            "archive_mode = on\n"
            f"archive_command = '{command}'\n"
            f"archive_timeout = {int(archive_timeout)}\n")


def enable(conn: psycopg.Connection, repo: Path, archive_timeout: int,
           force: bool = False) -> list[str]:
    """ALTER SYSTEM the archiving settings on a server not started by cesar; returns what changed
    (``archive_mode`` and ``wal_level`` need a restart, which the caller names). An operator's
    settings are kept: ``wal_level`` is only raised from ``minimal`` (``logical`` already
    archives), and a different ``archive_command`` is refused unless ``force``."""

    def current(name: str) -> str | None:
        row = conn.execute("SELECT setting, unit FROM pg_settings WHERE name = %s",
                           [name]).fetchone()
        return f"{row[0]}{'s' if row[1] == 's' else ''}" if row else None

    command = archive_command(repo)
    have_command = current("archive_command")
    if have_command not in (None, "", "(disabled)", command) and not force:
        raise ConfigError(f"the server already has archive_command {have_command!r}; refusing "
                          "to replace it: archive with one command only, or pass --force")
    wanted = {"archive_mode": "on", "archive_command": command,
              "archive_timeout": f"{archive_timeout}s"}
    if current("wal_level") == "minimal":
        wanted["wal_level"] = "replica"
    changed = []
    for name, value in wanted.items():
        if current(name) != value:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name),
                                                                   sql.Literal(value)))
            changed.append(name)
    if changed:
        conn.execute("SELECT pg_reload_conf()")
    return changed


@dataclass(frozen=True)
class Segment:
    timeline: int
    number: int      # (log * segments_per_log) + seg
    name: str


def parse_segment(name: str, segment_size: int) -> Segment | None:
    m = SEGMENT_RE.match(name)
    if not m:
        return None
    per_log = 0x100000000 // segment_size
    return Segment(int(m.group(1), 16), int(m.group(2), 16) * per_log + int(m.group(3), 16),
                   name)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def segment_of(lsn: str, timeline: int, segment_size: int) -> str:
    return segment_name(timeline, lsn_to_int(lsn) // segment_size, segment_size)


def archived(repo: Path) -> list[str]:
    """Names of the archived files (segments and history files), sorted."""
    wal = Path(repo) / "wal"
    if not wal.exists():
        return []
    return sorted(p.name[:-3] for p in wal.glob("*.gz") if not p.name.startswith("."))


def missing_between(repo: Path, first: str, last: str, segment_size: int) -> list[str]:
    """Segments from ``first`` to ``last`` (inclusive, same timeline) absent from the archive."""
    a, b = parse_segment(first, segment_size), parse_segment(last, segment_size)
    if a is None or b is None:
        raise OperationFailed(f"not WAL segment names: {first}, {last}")
    have = set(archived(repo))
    return [segment_name(a.timeline, n, segment_size) for n in range(a.number, b.number + 1)
            if segment_name(a.timeline, n, segment_size) not in have]


def check_segment(repo: Path, name: str, segment_size: int) -> str | None:
    """None when the archived segment decompresses to a whole segment; else what is wrong."""
    path = Path(repo) / "wal" / f"{name}.gz"
    try:
        with gzip.open(path, "rb") as fh:
            size = 0
            while chunk := fh.read(1 << 20):
                size += len(chunk)
    except FileNotFoundError:
        return f"WAL segment {name} is missing from {path.parent}"
    except (OSError, EOFError, zlib.error) as exc:
        return f"WAL segment {name} is corrupt ({exc})"
    if size != segment_size:
        return f"WAL segment {name} is {size} bytes, not {segment_size}"
    return None


def wait_archived(conn: psycopg.Connection, segment: str, timeout: float = 60.0) -> None:
    """Wait until the server reports ``segment`` (or a later one) archived."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute("SELECT last_archived_wal, last_failed_wal, failed_count "
                           "FROM pg_stat_archiver").fetchone()
        last = row[0] if row else None
        if last and last[:24] >= segment and SEGMENT_RE.match(last[:24]):
            return
        if time.monotonic() > deadline:
            failed = f"; the last failure was on {row[1]} ({row[2]} failures)" if row and row[1] \
                else ""
            raise OperationFailed(
                f"WAL segment {segment} was not archived within {timeout:.0f} s (last archived: "
                f"{last or 'none'}{failed}); check archive_command in the server's log")
        time.sleep(0.1)


def remove_before(repo: Path, segment: str) -> int:
    """Delete archived segments older than ``segment`` (any timeline); returns how many."""
    removed = 0
    for name in archived(repo):
        if SEGMENT_RE.match(name) and name[8:] < segment[8:]:
            (Path(repo) / "wal" / f"{name}.gz").unlink(missing_ok=True)
            removed += 1
    return removed


def run_as(cmd: list[str], owner, what: str, *, timeout: float = 3600,  # noqa: ANN001
           stdin=None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:  # noqa: ANN001
    """Run a PostgreSQL binary as the server's user; a failure is one line naming ``what``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["TZ"] = "UTC"  # pg_waldump prints commit times in the process's zone
    try:
        result = subprocess.run(
            cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
            timeout=timeout, user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None, cwd="/")
    except FileNotFoundError:
        raise ConfigError(f"{cmd[0]} not found: set CESAR_BACKUP_BINDIR to the server's "
                          "PostgreSQL binaries") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{what} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        lines = [ln for ln in (result.stderr or "").strip().splitlines() if ln.strip()]
        raise OperationFailed(f"{what} failed: {lines[-1] if lines else result.returncode}")
    return result
