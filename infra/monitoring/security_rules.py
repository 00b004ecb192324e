"""The alert on failed database logins (mtail's ``cesar_db_auth_failures_total``, see
``ansible/roles/cesar_log_metrics`` and docs/security.md), shipped as ``rules/dbauth.rules.yml``.

A burst is more than :data:`FAILED_LOGINS_IN_5M` failures on one server in five minutes: a
client with a wrong password after a rotation retries a few times, a password-guessing run
many more. Its promtool cases are in ``tests/infra/promtool/dbauth.rules.test.yml``.
"""

from __future__ import annotations

from infra.monitoring.rules import Group, shipped, threshold

FAILED_LOGINS_IN_5M = threshold("dbauth.rules.yml", "DatabaseLoginFailureBurst")


def group() -> Group:
    return shipped("dbauth.rules.yml")
