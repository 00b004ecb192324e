"""A ``cesar`` process started ahead of its turn: ``python -m cesar.soak.warm``.

It imports what a command needs (what a process start costs: 1-2 s idle, far more on a loaded
machine), then waits for one line on stdin, the command's arguments, and runs it exactly as
``cesar ARGS`` would (settings and credentials are read only then). The soak keeps one ready so
that ``--compress`` does not multiply a start-up cost that, on the hosts' 5-minute cycle, is
negligible: the compressed schedule then measures the sync, not the interpreter's start.
An empty line or a closed stdin ends it without running anything.
"""

from __future__ import annotations

import shlex
import sys


def main() -> None:
    import cesar.cli
    import cesar.sync.cli
    import cesar.sync.run  # noqa: F401 - imported ahead of the go, which is the point

    args = shlex.split(sys.stdin.readline())
    if not args:
        sys.exit(0)
    cesar.cli.main(args)


if __name__ == "__main__":
    main()
