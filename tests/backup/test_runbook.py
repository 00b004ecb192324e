"""docs/runbook.md, "Disaster recovery": every command of each scenario runs, in order, on a real
embedded stack after the accident it answers, and its output must have the shape the runbook
shows (numbers, times, WAL names and labels aside). UPDATE_RUNBOOK=1 records the real output
into the runbook instead."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path

import psycopg
import pytest

from cesar.dev.embedded import EmbeddedPostgres, free_port
from tests.helpers import REPO, child_env, new_state_dir, require

RUNBOOK = REPO / "docs" / "runbook.md"
BLOCK = re.compile(r"<!-- dr: (?P<name>[a-z-]+) -->\n```console\n(?P<body>.*?)```", re.S)


def blocks(text: str) -> dict[str, list[tuple[str, list[str]]]]:
    """{scenario: [(command, documented output lines), ...]}"""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for m in BLOCK.finditer(text):
        steps: list[tuple[str, list[str]]] = []
        for line in m.group("body").splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        out[m.group("name")] = steps
    return out


def shape(lines: list[str]) -> list[str]:
    """What must not change: words and structure; not numbers, times, names of WAL files."""
    out = []
    for line in lines:
        line = re.sub(r"\d{8}T\d{6,12}Z", "LABEL", line)
        line = re.sub(r"\d{4}-\d\d-\d\d[T ][0-9:.]+(\+00(:00)?|Z)?", "TIME", line)
        line = re.sub(r"[0-9A-F]{24}(\.[0-9A-F]{8}\.backup)?", "SEGMENT", line)
        line = re.sub(r"_before_restore_\d+", "_before_restore_N", line)
        line = re.sub(r"\d+(\.\d+)?", "N", line)
        line = re.sub(r"\b(B|KiB|MiB|GiB)\b", "UNIT", line)
        out.append(" ".join(line.split()))
    return out


class Stack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**child_env(), "CESAR_STATE_DIR": str(state_dir),
                    "CESAR_API_PORT": str(free_port())}
        self.pg = EmbeddedPostgres(state_dir)

    def run(self, command: str, extra: dict[str, str] | None = None) -> tuple[int, list[str]]:
        result = subprocess.run(["bash", "-c", command], cwd=REPO, env={**self.env,
                                **(extra or {})}, capture_output=True, text=True, timeout=300)
        text = (result.stdout + result.stderr).replace(str(self.state_dir), ".cesar")
        return result.returncode, text.rstrip("\n").splitlines()

    def su(self, dbname: str = "cesar_local") -> psycopg.Connection:
        return psycopg.connect(self.pg.superuser_conninfo(dbname), autocommit=True)

    def now(self) -> str:
        with self.su("postgres") as conn:
            at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(0.3)
        return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require(shutil.which("uv") is not None, "uv on PATH (the runbook's commands use `uv run`)")
    s = Stack(new_state_dir("runbook"))
    code, lines = s.run("uv run invoke up")
    assert code == 0, lines
    code, lines = s.run("uv run invoke backup")
    assert code == 0, lines
    try:
        yield s
    finally:
        s.run("uv run invoke down")
        s.pg.down()
        shutil.rmtree(s.state_dir, ignore_errors=True)


def _destructive(s: Stack) -> str:
    before = s.now()
    with s.su() as conn:
        assert conn.execute("DELETE FROM agents").rowcount == 24
    return before


def _lost_database(s: Stack) -> str:
    before = s.now()
    with s.su("postgres") as conn:
        conn.execute("DROP DATABASE cesar_local WITH (FORCE)")
    return before


def _bad_migration(s: Stack) -> str:
    before = s.now()
    code, lines = s.run("uv run cesar migrate down --steps 2")
    assert code == 0, lines
    return before


def _lost_cluster(s: Stack) -> str:
    return "2026-11-30T09:30:00Z"


ACCIDENTS: dict[str, Callable[[Stack], str]] = {
    "destructive": _destructive, "lost-database": _lost_database,
    "bad-migration": _bad_migration, "lost-cluster": _lost_cluster,
}


def _agents(s: Stack) -> int:
    with s.su() as conn:
        return int(conn.execute("SELECT count(*) FROM agents").fetchone()[0])


@pytest.mark.parametrize("scenario", list(ACCIDENTS))
def test_runbook_scenario(stack: Stack, scenario: str) -> None:
    text = RUNBOOK.read_text()
    steps = blocks(text)[scenario]
    assert steps, f"no commands for {scenario} in the runbook"
    before = ACCIDENTS[scenario](stack)
    recorded = []
    for command, documented in steps:
        code, lines = stack.run(command, {"BEFORE": before})
        assert code == 0, (command, lines)
        recorded.append((command, lines))
        if os.environ.get("UPDATE_RUNBOOK") != "1":
            assert shape(lines) == shape(documented), (command, lines)
    if scenario != "lost-cluster":
        assert _agents(stack) == 24  # every agent is back
    if os.environ.get("UPDATE_RUNBOOK") == "1":
        body = "".join(f"$ {c}\n" + "".join(f"{line}\n" for line in out) for c, out in recorded)
        m = next(m for m in BLOCK.finditer(text) if m.group("name") == scenario)
        RUNBOOK.write_text(text[:m.start("body")] + body + text[m.end("body"):])
