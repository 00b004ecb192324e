"""``cesar soak``: the whole local stack run together for a while, under scheduled faults.

The pieces, each testable alone: :mod:`~cesar.soak.proxy` (the TCP fault proxy that makes the
cluster database unreachable), :mod:`~cesar.soak.logscan` (every error line of every log matched
to the fault that explains it), :mod:`~cesar.soak.report` (per-minute p95, the verdict, the
plot) and :mod:`~cesar.soak.run` (the stack, the load, the faults). See docs/soak.md.
"""
