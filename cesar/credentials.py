"""The application's database roles and how credentials are made and stored on disk.

Every environment has the same roles: ``cesar_app`` holds the grants, and its two member logins
take turns during a password rotation. The embedded stack, the cluster bootstrap, the migration
runner's grants and the rotation all name them from here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

APP_ROLE = "cesar_app"
LOGINS = ("cesar_app_a", "cesar_app_b")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def new_password() -> str:
    return secrets.token_urlsafe(24)
