"""cesar.cluster_bootstrap: the CockroachDB bootstrap SQL (shape, idempotent forms, quoting).

The script is CockroachDB syntax and is not executed here (no CockroachDB on these machines);
its string literals are, against the real embedded PostgreSQL: both engines read standard SQL
string literals the same way.
"""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cesar import cluster_bootstrap as cb
from cesar.errors import ConfigError
from cesar.rotate import scram

PASSWORDS = {"cesar_app_a": "pa'ss;word--1", "cesar_app_b": "second\\one"}


def spec(**kw: object) -> cb.Bootstrap:
    args: dict[str, object] = {"database": "cesar", "passwords": PASSWORDS}
    args.update(kw)
    return cb.Bootstrap(**args)  # type: ignore[arg-type]


def test_the_roles_and_grants_in_order() -> None:
    stmts = cb.statements(spec())
    assert stmts[:5] == [
        'CREATE DATABASE IF NOT EXISTS "cesar"',
        'CREATE ROLE IF NOT EXISTS "cesar_app"',
        'ALTER ROLE "cesar_app" WITH NOLOGIN',
        'ALTER DATABASE "cesar" OWNER TO "cesar_app"',
        'GRANT ALL ON DATABASE "cesar" TO "cesar_app"',
    ]
    for login in ("cesar_app_a", "cesar_app_b"):
        created = stmts.index(f'CREATE USER IF NOT EXISTS "{login}"')
        assert stmts[created + 1] == f'ALTER ROLE "{login}" WITH LOGIN'
        assert stmts[created + 2].startswith(f'ALTER ROLE "{login}" WITH PASSWORD \'SCRAM-SHA-256$')
        assert stmts[created + 3] == f'GRANT "cesar_app" TO "{login}"'
        # What either login creates, the group role (so the other login) may use.
        assert (f'ALTER DEFAULT PRIVILEGES FOR ROLE "{login}" GRANT ALL ON TABLES TO "cesar_app"'
                in stmts)
    assert stmts.index('USE "cesar"') < stmts.index(
        'ALTER DEFAULT PRIVILEGES FOR ROLE "cesar_app_a" GRANT ALL ON TABLES TO "cesar_app"')
    assert not any("CLUSTER SETTING" in s or "REGION" in s for s in stmts)


def test_every_creation_is_idempotent() -> None:
    for stmt in cb.statements(spec(hba="host all all all reject\n", regions=("a-1", "b-2"))):
        if stmt.startswith("CREATE"):
            assert "IF NOT EXISTS" in stmt, stmt
        if " ADD REGION " in stmt:
            assert "IF NOT EXISTS" in stmt, stmt


def test_hba_and_regions() -> None:
    hba = "# comment\nhost all all 10.0.0.0/24 cert-password # api-hosts\nhost all all all reject\n"
    stmts = cb.statements(spec(hba=hba, regions=("us-east1", "europe-west1")))
    assert stmts[0] == ("SET CLUSTER SETTING server.host_based_authentication.configuration = "
                        + cb.quote_literal(hba))
    assert stmts[-2:] == ['ALTER DATABASE "cesar" SET PRIMARY REGION "us-east1"',
                          'ALTER DATABASE "cesar" ADD REGION IF NOT EXISTS "europe-west1"']


def test_redacted_script_has_no_password_and_the_real_one_has_them() -> None:
    redacted = cb.script(spec(), redact=True)
    real = cb.script(spec())
    for password in PASSWORDS.values():
        assert password not in redacted
        assert password not in real  # a verifier, never the password
    assert real.count(";\n") == len(cb.statements(spec()))


def test_insecure_clusters_get_no_passwords() -> None:
    stmts = cb.statements(cb.Bootstrap(database="cesar", passwords={}, set_passwords=False))
    assert not any("PASSWORD" in s for s in stmts)
    assert 'GRANT "cesar_app" TO "cesar_app_b"' in stmts


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"passwords": {"cesar_app_a": "x"}}, "no password for login(s) cesar_app_b"),
    ({"database": "Cesar-DB"}, "not a plain SQL name"),
    ({"regions": ("us east",)}, "not a valid region name"),
    ({"regions": ("a", "a")}, "list a region twice"),
])
def test_bad_inputs_are_refused(kw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        cb.statements(spec(**kw))


def test_a_nul_character_cannot_be_quoted() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        cb.quote_literal("a\x00b")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40))
def test_literals_read_back_unchanged_on_a_real_server(pg_stack, value: str) -> None:
    with psycopg.connect(pg_stack.local_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT {cb.quote_literal(value)}::text").fetchone()
    assert row is not None and row[0] == value


def test_a_password_is_a_statement_of_its_own_with_a_verifier_of_that_password() -> None:
    salts = {login: bytes([i]) * 16 for i, login in enumerate(PASSWORDS)}
    stmts = cb.statements(spec(salts=salts))
    setting = [s for s in stmts if "PASSWORD" in s]
    assert len(setting) == 2
    for stmt in setting:
        m = re.fullmatch(r'ALTER ROLE "(\w+)" WITH PASSWORD \'(SCRAM-SHA-256\$[^\']+)\'', stmt)
        assert m, stmt
        assert scram.matches(PASSWORDS[m[1]], m[2])
    # The same salts give the same script: a second `pulumi up` changes nothing.
    assert cb.script(spec(salts=salts)) == cb.script(spec(salts=salts))


def test_the_password_statements_log_in_on_a_real_server(pg_stack) -> None:
    """PostgreSQL stores the verifier as given (CockroachDB does the same from 22.2, see
    docs/security.md): the login then works with the password the script never contains."""
    role = f"boot_{uuid.uuid4().hex[:8]}"
    password = "pw-" + uuid.uuid4().hex
    stmts = cb.statements(cb.Bootstrap(database="cesar", passwords={role: password},
                                       logins=(role,)))
    setting = [s for s in stmts if "PASSWORD" in s]
    with pg_stack.superuser() as su:
        su.execute(f'CREATE ROLE "{role}" LOGIN')
        try:
            for stmt in setting:
                su.execute(stmt)
            url = pg_stack.local_url.replace(f"{pg_stack.state.active_login}:", f"{role}:", 1)
            url = url.replace(pg_stack.state.passwords[pg_stack.state.active_login], password)
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT session_user").fetchone() == (role,)
        finally:
            su.execute(f'DROP ROLE "{role}"')
