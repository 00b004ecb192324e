"""``invoke bench --suite api_profile``: where a worker's time goes serving ``/agents``.

Starts ``cesar api`` (one worker) with ``CESAR_API_READ_PATH`` (``--read-path``), drives
``/agents`` with 50 authenticated closed-loop clients, and samples the worker with py-spy
(``uv tool install py-spy``; root or ptrace rights) while it does. Prints the functions with
the most samples *inclusive* (on the stack) and *exclusive* (on top of it), as shares of all
samples, plus the idle share (the event loop waiting in ``select``/``epoll``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

from cesar.bench import api
from cesar.dev.embedded import free_port

#: Entry frames every sample of a thread has: left out of the inclusive list.
ENTRY = frozenset({
    "Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "WorkerThread.run",
    "Group.invoke", "_run_code", "_run_module_as_main", "serve", "Runner.run", "Command.main",
    "Command.invoke", "<module>", "Context.invoke", "run", "asyncio_run", "api", "main",
    "Server.run", "Server.serve", "Server._serve", "BaseEventLoop.run_until_complete",
    "BaseEventLoop.run_forever", "BaseEventLoop._run_once", "Handle._run", "__call__",
})


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return [f.split(" (")[0] for f in stack.split(";") if f], int(count)


def summarise(raw: str, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    total = 0
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    for line in raw.splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        total += count
        for name in set(frames) - ENTRY:
            inclusive[name] += count
        if frames:
            exclusive[frames[-1]] += count
    return total, inclusive.most_common(top), exclusive.most_common(top)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="invoke bench --suite api_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--read-path", default="async", help="CESAR_API_READ_PATH (async)")
    parser.add_argument("--seconds", type=float, default=8.0, help="sampled seconds (8)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--top", type=int, default=15, help="functions listed (15)")
    parser.add_argument("--load-generator", choices=api.GENERATORS, default="wrk",
                        help="wrk (default; Debian package wrk) or python")
    args = parser.parse_args(argv)
    api.use_generator(args.load_generator)
    spy = shutil.which("py-spy") or str(Path.home() / ".local" / "bin" / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("cesar: error: py-spy is not installed: `uv tool install py-spy`")

    os.environ["CESAR_API_READ_PATH"] = args.read_path
    key = api._make_key()
    api.AUTH_HEADER[:] = [f"Authorization: Bearer {key}"]
    out = Path(tempfile.mkdtemp(prefix="cesar-profile-")) / "stacks.txt"
    try:
        port = free_port()
        with api.Server(port, 1) as server:
            assert server.proc is not None
            load = threading.Thread(target=lambda: api.measure(
                "127.0.0.1", port, "agents", args.clients, args.seconds + 2, 1.0))
            load.start()
            subprocess.run([spy, "record", "--pid", str(server.proc.pid), "--duration",
                            str(int(args.seconds)), "--rate", "200", "--format", "raw",
                            "--output", str(out), "--nonblocking"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load.join()
    finally:
        api._revoke(key)
    total, inclusive, exclusive = summarise(out.read_text(), args.top)
    shutil.rmtree(out.parent, ignore_errors=True)
    print(f"read path {args.read_path}: {total} samples over {args.seconds:g} s, "
          f"{args.clients} clients, load average {os.getloadavg()[0]:.2f}, load generator "
          f"{api.GENERATOR[0]}")
    print("inclusive (on the stack):")
    for name, n in inclusive:
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("exclusive (running):")
    for name, n in exclusive:
        print(f"  {100 * n / total:5.1f}%  {name}")
    return 0
