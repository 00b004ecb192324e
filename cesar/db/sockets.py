"""Where a PostgreSQL server this program starts listens: a free TCP port, and a unix socket
directory whose socket path fits the kernel's limit.

A unix socket's path lives in ``sun_path``: 108 bytes on Linux, the terminating NUL included.
PostgreSQL names its socket ``<dir>/.s.PGSQL.<port>`` and refuses to start when that path does
not fit ("Unix-domain socket path ... is too long"), so a directory deeper than
:data:`SOCKET_DIR_MAX` characters (a deep checkout, a long test name) is replaced by a short
directory under ``/tmp`` named after it.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

#: ``sun_path`` (108) - the NUL - "/.s.PGSQL." (10) - the longest port (5 digits).
SOCKET_DIR_MAX = 108 - 1 - len("/.s.PGSQL.") - 5


def unix_socket_dir(preferred: Path, prefix: str = "cesar-pg") -> Path:
    """``preferred`` when a server's socket fits under it, else ``/tmp/<prefix>-<hash>`` (the
    same path for the same ``preferred``, so a restarted server listens where it did)."""
    if len(str(preferred)) <= SOCKET_DIR_MAX:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path("/tmp") / f"{prefix}-{digest}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
