"""Facts about the schema in ``sql/migrations`` that more than one subsystem needs.

The sync and the migration runner both read them from here, so neither reaches into the other.
"""

from __future__ import annotations

#: The synced tables, parents first (a row's foreign keys point to tables earlier in the list):
#: the sync applies inserts and updates in this order, deletes in the reverse order; the same
#: tables become REGIONAL BY ROW (``cesar migrate up --regional-by-row``).
#: agent_workload (009) is a view: each side computes it.
SYNCED_TABLES: tuple[str, ...] = (
    "agents",
    "agent_capabilities",
    "tasks",
    "task_assignments",
    "agent_runs",
    "agent_run_events",
    "api_keys",
    "audit_log",
)
