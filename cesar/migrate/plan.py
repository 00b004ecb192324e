"""The plan: what the files and the tracking table say is to be done, and every reason to refuse.

Computed from one read of ``schema_migrations`` (``cesar.migrate.store.read_tracked``) and the
files (``cesar.migrate.files``), without touching the database: the dry run, ``status`` and the
real run all start from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from cesar.errors import OperationFailed
from cesar.migrate.files import Direction, Migration
from cesar.migrate.sql import prefix_checksum
from cesar.migrate.store import APPLIED_STATUSES, Tracked

#: The server cannot say whether the statement committed (CockroachDB: an ambiguous result).
STATEMENT_COMPLETION_UNKNOWN = "40003"
#: ``Step.resume`` of a run whose last statement was in doubt.
IN_DOUBT = "in-doubt"


def in_doubt_row(row: Tracked) -> bool:
    """A tracking row left by a statement whose commit was in doubt."""
    return (row.status == "failed" and row.resumable
            and row.error_sqlstate == STATEMENT_COMPLETION_UNKNOWN)


def counts(files: set[str], rows: list[tuple[str, str]]) -> dict[str, int]:
    applied = {name for name, status in rows if status in APPLIED_STATUSES}
    failed = {name for name, status in rows if status == "failed"}
    total = len(files | applied)
    return {"applied": len(applied), "total": total, "failed": len(failed),
            "pending": total - len(applied)}


@dataclass
class Step:
    """A migration the run will apply (or roll back), and where it starts."""

    migration: Migration
    direction: Direction
    start: int = 0  # statements already done (per-statement progress kept from a failed run)
    resume: str | None = None  # why it resumes: "failed", "interrupted"
    previous: Tracked | None = None  # its tracking row when the plan was made
    refused: str | None = None  # why its file cannot run (a dry run reports it and goes on)

    @property
    def name(self) -> str:
        return self.migration.name


@dataclass
class Plan:
    """What the database holds compared with the files; computed from one read."""

    migrations: list[Migration]
    tracked: dict[str, Tracked]
    tables_exist: bool
    pending: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        rows = [(t.name, t.status) for t in self.tracked.values()]
        return counts({m.name for m in self.migrations}, rows)

    def line(self) -> str:
        c = self.counts
        text = f"{c['applied']}/{c['total']} applied, {c['pending']} pending"
        return text + (f", {c['failed']} failed" if c["failed"] else "")

    def checksum_status(self, name: str) -> str:
        """``ok``, ``drift``, ``missing-file`` for applied migrations; ``-`` otherwise."""
        row = self.tracked.get(name)
        if row is None or not row.applied:
            return "-"
        m = self.by_name.get(name)
        if m is None:
            return "missing-file"
        return "ok" if m.matches(row.checksum) else "drift"

    @cached_property
    def by_name(self) -> dict[str, Migration]:
        return {m.name: m for m in self.migrations}

    def raise_problems(self) -> None:
        if self.problems:
            more = len(self.problems) - 1
            suffix = f" (and {more} more problem{'s' if more > 1 else ''}: `cesar migrate status`)"
            raise OperationFailed(self.problems[0] + (suffix if more else ""))


def make_plan(migrations: list[Migration], tracked: dict[str, Tracked] | None) -> Plan:
    """Compare files and rows: pending steps in order, and every reason to refuse to run."""
    plan = Plan(migrations, tracked or {}, tracked is not None)
    rows = plan.tracked
    applied_names = sorted(n for n, t in rows.items() if t.applied)
    last_applied = applied_names[-1] if applied_names else ""
    for name in applied_names:
        row = rows[name]
        m = plan.by_name.get(name)
        if m is None:
            plan.problems.append(
                f"{name} is applied ({row.status}) but has no file in the migrations directory: "
                "this checkout is older than the database; update it, or pass --migrations-dir"
            )
        elif not m.matches(row.checksum):
            plan.problems.append(
                f"{m.up_path} changed after it was applied: applied sha256 {row.checksum}, "
                f"file sha256 {m.checksum}; restore the file, or accept the change with "
                f"`cesar migrate repair {name} --reason TEXT`"
            )
    for row in rows.values():
        if row.interrupted_rollback:
            plan.problems.append(rollback_blocked(row, plan.by_name.get(row.name)))
    for m in migrations:
        row = rows.get(m.name)
        if row is not None and row.applied:
            continue
        if row is not None and row.interrupted_rollback:
            continue
        if row is None and m.name < last_applied:
            plan.problems.append(
                f"{m.name} is new but sorts before the applied {last_applied}; migrations apply "
                "in order, so renumber it after the last applied one"
            )
            continue
        step = Step(m, "up", previous=row)
        if row is not None and row.status in ("failed", "running"):
            step.resume = "failed" if row.status == "failed" else "interrupted"
            if in_doubt_row(row):
                step.resume = IN_DOUBT
            if row.status == "failed" and row.attempt_checksum == m.checksum and not row.resumable:
                plan.problems.append(_failed_message(row, m))
                continue
            if row.partial:
                problem = check_prefix(row, m, "up")
                if problem:
                    plan.problems.append(problem)
                    continue
                step.start = row.statements_done
        plan.pending.append(step)
    return plan


def rollback_blocked(row: Tracked, m: Migration | None) -> str:
    """What blocks ``up`` while a rollback is unfinished, and every command that unblocks it."""
    down = m.down_path if m is not None and m.down_path is not None else f"{row.name}.down.sql"
    done = row.statements_done
    where = f"it resumes at statement {done + 1}" if done else "it starts again"
    fix = (f"fix {down} and finish it with `cesar migrate down --steps 1` ({where})"
           if row.status == "failed" else
           f"finish it with `cesar migrate down --steps 1` ({where})")
    retry = (f", or run the unchanged file again with `cesar migrate repair {row.name} --reason "
             "TEXT` then `cesar migrate down --steps 1`" if row.status == "failed" else "")
    return (f"the rollback of {row.name} is {_state(row)}; {fix}{retry}; or, to keep "
            f"{row.name} applied, restore what the rollback removed and record it with "
            f"`cesar migrate mark-applied {row.name} --reason TEXT`")


def _state(row: Tracked) -> str:
    if row.status == "running":
        return f"interrupted after statement {row.statements_done}/{row.statements_total}"
    return (f"failed at statement {row.error_statement} (line {row.error_line}, SQLSTATE "
            f"{row.error_sqlstate}: {row.error_message})")


def _failed_message(row: Tracked, m: Migration) -> str:
    done = row.statements_done
    verb = "stays" if done == 1 else "stay"
    kept = f"{first_statements(done)} {verb} applied, " if done else ""
    return (
        f"{m.name} failed at statement {row.error_statement} (line {row.error_line}) with "
        f"SQLSTATE {row.error_sqlstate}: {row.error_message}; {kept}"
        f"fix {m.up_path} and run again (it resumes at statement "
        f"{row.statements_done + 1}), or accept it as it is with "
        f"`cesar migrate repair {m.name} --reason TEXT`"
    )


def check_prefix(row: Tracked, m: Migration, direction: Direction) -> str | None:
    """A message when the statements a partial run already executed are no longer the same."""
    statements = m.statements(direction)
    done = row.statements_done
    if len(statements) < done or prefix_checksum(statements, done) != row.progress_checksum:
        return (
            f"{first_statements(done)} of {m.path(direction)} already ran but the file changed; "
            f"restore those statements (change only statement {done + 1} and later), or accept "
            f"the file as it is with `cesar migrate repair {m.name} --reason TEXT`"
        )
    return None


def first_statements(n: int) -> str:
    """``statement 1`` or ``statements 1-n``: the statements a partial run has done."""
    return "statement 1" if n == 1 else f"statements 1-{n}"
