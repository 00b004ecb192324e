"""cesar.errors.sigterm_unwinds in a real process: SIGTERM unwinds the command, and the further
SIGTERMs that coreutils' ``timeout`` sends (to the child, then to its process group) do not cut
its clean-up or its report short."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from tests.helpers import child_env

#: A command that waits inside sigterm_unwinds, cleans up for a while when terminated, then
#: reports for a while after leaving the block: each step says when it has finished.
COMMAND = textwrap.dedent("""
    import sys, time
    from cesar.errors import Terminated, sigterm_unwinds
    try:
        with sigterm_unwinds():
            print("waiting", flush=True)
            try:
                time.sleep(60)
            except Terminated:
                time.sleep(0.6)
                print("cleaned up", flush=True)
                raise
    except Terminated:
        time.sleep(0.6)
        print("reported", flush=True)
        sys.exit(143)
""")


def test_sigterm_during_clean_up_and_report_is_ignored() -> None:
    proc = subprocess.Popen([sys.executable, "-c", COMMAND], env=child_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # while it cleans up
        time.sleep(0.6)
        proc.send_signal(signal.SIGTERM)  # while it reports
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (out, err)
    assert out == "cleaned up\nreported\n" and err == "", (out, err)


def test_outside_a_termination_sigterm_is_the_callers_again() -> None:
    """A block left normally gives SIGTERM back: the process ends on it as before."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom cesar.errors import sigterm_unwinds\n"
         "with sigterm_unwinds():\n    pass\nprint('left', flush=True)\ntime.sleep(60)\n"],
        env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "left\n"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM
