"""Benchmarks, run by `uv run invoke bench --suite NAME` (never timed assertions in tests).

Each suite is a module ``cesar.bench.<name>`` with ``main(argv: list[str]) -> int`` that
measures, prints a table (and JSON with ``--json``) and returns an exit code.
"""
