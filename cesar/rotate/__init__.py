"""Zero-downtime rotation of the application's database password.

- ``rotator``: the steps and their resumable state (``Rotator``)
- ``record``: the rotation record in the database (which login is active)
- ``stores``: where credentials live (env file, Ansible Vault, the embedded stack)
- ``scram``: pre-hashed SCRAM-SHA-256 verifiers
- ``cli``: ``cesar rotate-password``
"""

from cesar.rotate.rotator import (
    AUDIT_FILE,
    FAULT_ENV,
    LOCK_SECONDS,
    LOCK_SECONDS_ENV,
    LOCK_TABLE,
    STATE_FILE,
    STEPS,
    Audit,
    Report,
    RotationState,
    Rotator,
)

__all__ = [
    "AUDIT_FILE", "FAULT_ENV", "LOCK_SECONDS", "LOCK_SECONDS_ENV", "LOCK_TABLE", "STATE_FILE",
    "STEPS", "Audit", "Report", "RotationState", "Rotator",
]
