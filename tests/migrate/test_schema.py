"""The repository's migrations obey the rules the runner and the sync rely on, and the runner
reads a migrations directory strictly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cesar import migrate
from cesar.errors import ConfigError
from cesar.migrate.sql import split
from tests.helpers import query
from tests.migrate.helpers import REPO_MIGRATIONS

# Statement forms that have an IF [NOT] EXISTS / OR REPLACE variant on both engines: a
# migration must use it, so a statement re-run after a crash is harmless.
_MUST_BE_IDEMPOTENT = re.compile(
    r"^(CREATE\s+(UNIQUE\s+)?INDEX|CREATE\s+TABLE|CREATE\s+(MATERIALIZED\s+)?VIEW|"
    r"CREATE\s+SEQUENCE|CREATE\s+SCHEMA|CREATE\s+FUNCTION|DROP\s+\w+|"
    r"ALTER\s+TABLE\s+\S+\s+ADD\s+COLUMN)\b", re.IGNORECASE)
_SYNCED_HEADER = re.compile(r"^--.*\bSynced table\b", re.MULTILINE)
_CREATED_TABLES = re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)


def repo_migrations() -> list[migrate.Migration]:
    return migrate.load(REPO_MIGRATIONS)


def synced_tables() -> dict[str, migrate.Migration]:
    """Tables whose migration's header says "Synced table" (the sync's own bookkeeping tables
    are not synced and do not say so)."""
    out = {}
    for m in repo_migrations():
        text = m.up_path.read_text()
        if _SYNCED_HEADER.search(text):
            for name in _CREATED_TABLES.findall(text):
                out[name] = m
    return out


def test_every_migration_has_a_down_file_and_parses() -> None:
    for m in repo_migrations():
        assert m.down_path is not None, f"{m.name} has no down file"
        assert m.statements("up"), m.name
        assert m.statements("down"), m.name


def test_ddl_with_an_idempotent_form_uses_it() -> None:
    offenders = [
        f"{m.path(d)}:{s.line}: {s.summary()}"
        for m in repo_migrations() for d in ("up", "down")
        for s in m.statements(d)  # type: ignore[arg-type]
        if _MUST_BE_IDEMPOTENT.match(s.sql) and not s.idempotent
    ]
    assert offenders == []


def test_seed_agents_have_fixed_ids() -> None:
    text = (REPO_MIGRATIONS / "001_agents.up.sql").read_text()
    ids = re.findall(r"'(a9e5c0de-00[0-9a-f]{2}-4000-8000-0000000000[0-9a-f]{2})'", text)
    assert len(ids) == len(set(ids)) == 24


def test_synced_tables_in_the_catalog(fresh_db: str, runner_for) -> None:
    """UUID primary key, ``updated_at TIMESTAMPTZ``, and no UNIQUE constraint that the two sides
    could violate independently (unless the file says how such a conflict resolves)."""
    runner_for(fresh_db, migrations_dir=REPO_MIGRATIONS).up()
    tables = synced_tables()
    assert "agents" in tables and len(tables) >= 5
    for table, m in tables.items():
        pk = query(fresh_db, """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod)
            FROM pg_index i JOIN pg_attribute a
              ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indrelid = %s::regclass AND i.indisprimary""", [table])
        assert pk == [("id", "uuid")], table
        updated = query(fresh_db, """
            SELECT data_type, is_nullable FROM information_schema.columns
            WHERE table_name = %s AND column_name = 'updated_at'""", [table])
        assert updated == [("timestamp with time zone", "NO")], table
        uniques = query(fresh_db, """
            SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = %s::regclass AND i.indisunique AND NOT i.indisprimary""",
                        [table])
        if uniques:
            assert "conflict" in m.up_path.read_text().lower(), (table, uniques)


def test_agents_seed_and_workload_view(fresh_db: str, runner_for) -> None:
    runner_for(fresh_db, migrations_dir=REPO_MIGRATIONS).up()
    assert query(fresh_db, "SELECT count(*), count(DISTINCT mob_alias) FROM agents") == [(24, 24)]
    rows = query(fresh_db, "SELECT count(*), sum(open_assignments) FROM agent_workload")
    assert rows == [(24, 0)]


# ------------------------------------------------------------------ reading a directory
def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_load_orders_by_name_and_pairs_down_files(tmp_path: Path) -> None:
    d = _write(tmp_path / "m", {"002_b.up.sql": "SELECT 2;", "001_a.up.sql": "SELECT 1;",
                                "001_a.down.sql": "SELECT 1;", "README.md": "ignored"})
    loaded = migrate.load(d)
    assert [m.name for m in loaded] == ["001_a", "002_b"]
    assert loaded[0].down_path is not None and loaded[1].down_path is None


@pytest.mark.parametrize(("files", "message"), [
    ({"1_short.up.sql": "SELECT 1;"}, "is not named NNN_name.up.sql"),
    ({"001_Upper.up.sql": "SELECT 1;"}, "is not named NNN_name.up.sql"),
    ({"001_a.down.sql": "SELECT 1;"}, "has no 001_a.up.sql beside it"),
    ({"001_a.up.sql": "SELECT 1;", "001_b.up.sql": "SELECT 1;"}, "share the number 001"),
])
def test_load_refuses_an_ambiguous_directory(tmp_path: Path, files: dict[str, str],
                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        migrate.load(_write(tmp_path / "m", files))


def test_missing_directory_is_a_usage_error(tmp_path: Path, cli, fresh_db: str) -> None:
    result = cli("status", "--url", fresh_db, "--migrations-dir", str(tmp_path / "nope"))
    assert result.code == 2
    assert "does not exist" in result.err and "--migrations-dir" in result.err


def test_bad_url_is_a_usage_error_and_unreachable_is_an_operation_failure(
    cli, migrations: Path
) -> None:
    bad = cli("status", "--url", "mysql://x", "--migrations-dir", str(migrations))
    assert bad.code == 2 and "--url is not a postgresql:// URL" in bad.err
    down = cli("status", "--url", "postgresql://u:secret@127.0.0.1:9/db?connect_timeout=1",
               "--migrations-dir", str(migrations))
    assert down.code == 1
    assert "cannot connect to postgresql://u:***@127.0.0.1:9/db" in down.err
    assert "secret" not in down.err


def test_default_directory_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert migrate.resolve_dir() in (migrate.PACKAGED_DIR, REPO_MIGRATIONS)
    _write(tmp_path / "sql" / "migrations", {"001_a.up.sql": "SELECT 1;"})
    monkeypatch.chdir(tmp_path)
    assert migrate.resolve_dir() == Path("sql/migrations")
    assert migrate.migration_names() == ["001_a"]


def test_split_of_every_repository_file_is_stable() -> None:
    for m in repo_migrations():
        for d in ("up", "down"):
            text = m.path(d).read_text()  # type: ignore[arg-type]
            once = split(text)
            again = split(";\n".join(s.sql for s in once) + ";")
            assert [s.sql for s in again] == [s.sql for s in once]
