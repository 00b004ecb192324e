"""The migration runner: ``NNN_name.up.sql`` / ``.down.sql`` pairs applied in order, one runner
at a time, tracked in ``schema_migrations``.

- ``runner``: executes (``Runner``, ``apply_all``, ``summary``, ``connect``)
- ``files``: the directory and its files (names, checksums, statements)
- ``sql``: splitting a file into statements
- ``store``: the runner's tables (tracking rows, events, lease row)
- ``plan``: files versus tracking rows: what is pending, what is refused
- ``lease``: the runner's extras on the one lease (``cesar.db.lease``)
- ``regions``: ``--regional-by-row``: which tables, which statements, refusals
- ``cli``: ``cesar migrate ...``
"""

from cesar.migrate.runner import (
    APPLIED_STATUSES,
    AUTOCOMMIT_BEFORE_DDL_DEFAULT_ON,
    DEFAULT_DIR,
    EVENTS_TABLE,
    LEASE_TABLE,
    MODES,
    PACKAGED_DIR,
    TRACKING_TABLE,
    LocalityPlan,
    Migration,
    MigrationFailed,
    Plan,
    Progress,
    Runner,
    RunReport,
    Step,
    Tracked,
    apply_all,
    connect,
    load,
    make_plan,
    migration_names,
    open_runner,
    plural,
    resolve_dir,
    sha256_file,
    step_mode,
    summary,
    transactional_problem,
)

__all__ = [
    "APPLIED_STATUSES", "AUTOCOMMIT_BEFORE_DDL_DEFAULT_ON", "DEFAULT_DIR", "EVENTS_TABLE",
    "LEASE_TABLE", "MODES", "PACKAGED_DIR", "TRACKING_TABLE", "LocalityPlan", "Migration",
    "MigrationFailed", "Plan", "Progress", "RunReport", "Runner", "Step", "Tracked", "apply_all",
    "connect", "load", "make_plan", "migration_names", "open_runner", "plural", "resolve_dir",
    "sha256_file", "step_mode", "summary", "transactional_problem",
]
