"""The alert on failed database logins (mtail's ``cesar_db_auth_failures_total``, see
``ansible/roles/cesar_log_metrics`` and docs/security.md).

A burst is more than :data:`FAILED_LOGINS_IN_5M` failures on one server in five minutes: a
client with a wrong password after a rotation retries a few times, a password-guessing run
many more. Its promtool cases are in ``tests/infra/promtool/dbauth.rules.test.yml``.
"""

from __future__ import annotations

from infra.rules import Alert, Group

FAILED_LOGINS_IN_5M = 10


def group() -> Group:
    return Group("dbauth.rules", (
        Alert(
            "DatabaseLoginFailureBurst",
            "sum by (instance, engine) ("
            f'increase(cesar_db_auth_failures_total{{job="cesar-db-auth"}}[5m])'
            f") > {FAILED_LOGINS_IN_5M}",
            "warning",
            "{{ $value | printf \"%.0f\" }} failed {{ $labels.engine }} logins on "
            "{{ $labels.instance }} in 5 minutes",
            f"More than {FAILED_LOGINS_IN_5M} failed database logins in 5 minutes on one "
            "server: a client left with an old password (rotation) or someone guessing. The "
            "server's log names the users and client addresses (docs/security.md).",
        ),
    ))
