"""Operator tasks: `uv run invoke --list`. Thin wrappers over the `cesar` command (cesar/)."""

from __future__ import annotations

import sys

from invoke import Collection, Exit, task


def cesar(*args: str) -> None:
    """Run a `cesar` subcommand in-process; a non-zero exit becomes invoke's exit code."""
    from cesar.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code:
            raise Exit(code=code) from None


@task(help={"json": "Print one JSON object instead of the summary."})
def up(c, json=False):
    """Start the development stack (embedded PostgreSQL unless URLs are set) and seed it."""
    cesar("up", *(["--json"] if json else []))


@task
def down(c):
    """Stop what `invoke up` started; the data is kept."""
    cesar("down")


@task(help={"json": "Print one JSON object (environment, masked URLs, reachability)."})
def status(c, json=False):
    """Show the environment, the database URLs (passwords masked) and what is reachable."""
    cesar("status", *(["--json"] if json else []))


@task(
    help={
        "dry_run": "Print the plan (pending migrations, statements, checksums, lease); change "
                   "nothing.",
        "url": "Database URL (default: the configured environment's target).",
        "status": "List every migration with its state instead of applying.",
        "json": "Print one JSON object (with --status or --dry-run).",
        "mode": "auto, transactional or per-statement (default auto: from the engine).",
        "regional_by_row": "Then make the synced tables REGIONAL BY ROW (CockroachDB with "
                           "regions; default: CESAR_REGIONAL_BY_ROW).",
        "lock_timeout": "Seconds a statement waits for a lock before its attempt rolls back "
                        "(default: CESAR_MIGRATE_LOCK_TIMEOUT, 3; 0 waits forever).",
        "lock_retries": "Attempts after the first one that gave up waiting for a lock "
                        "(default: CESAR_MIGRATE_LOCK_RETRIES, 5).",
    }
)
def migrate(c, dry_run=False, url="", status=False, json=False, mode="", regional_by_row=False,
            lock_timeout="", lock_retries=""):
    """Apply pending schema migrations (`cesar migrate up`); idempotent."""
    common = [*(["--url", url] if url else []), *(["--json"] if json else [])]
    if status:
        cesar("migrate", "status", *common)
        return
    cesar("migrate", "up", *common, *(["--dry-run"] if dry_run else []),
          *(["--mode", mode] if mode else []),
          *(["--regional-by-row"] if regional_by_row else []),
          *(["--lock-timeout", str(lock_timeout)] if lock_timeout != "" else []),
          *(["--lock-retries", str(lock_retries)] if lock_retries != "" else []))


@task(
    help={
        "steps": "Roll back the last N applied migrations (default 1).",
        "to": "Roll back every migration after NAME (NAME stays applied).",
        "dry_run": "Print the plan; change nothing.",
        "url": "Database URL (default: the configured environment's target).",
        "json": "Print one JSON object.",
    }
)
def rollback(c, steps=0, to="", dry_run=False, url="", json=False):
    """Roll back migrations with their down files, newest first (`cesar migrate down`)."""
    cesar("migrate", "down", *(["--steps", str(steps)] if steps else []),
          *(["--to", to] if to else []), *(["--dry-run"] if dry_run else []),
          *(["--url", url] if url else []), *(["--json"] if json else []))


@task(
    help={
        "k": "Only tests matching this pytest -k expression.",
        "marker": "Only tests with this pytest marker expression, e.g. 'not hosts'.",
        "args": "Extra arguments passed to pytest verbatim.",
    }
)
def test(c, k="", marker="", args=""):
    """Run the whole test suite (every tier; CI runs exactly this)."""
    cmd = [sys.executable, "-m", "pytest"]
    if k:
        cmd += ["-k", k]
    if marker:
        cmd += ["-m", repr(marker)]
    if args:
        cmd += args.split()
    result = c.run(" ".join(cmd), warn=True, pty=False, env={"PYTHONUNBUFFERED": "1"})
    if result.exited:
        raise Exit(code=result.exited)


@task(
    help={
        "full": "Also compare every table by key and row hash and repair what differs.",
        "dry_run": "Report what would move and conflict; change nothing.",
        "json": "Print one JSON object.",
    }
)
def sync(c, full=False, dry_run=False, json=False):
    """One two-way sync pass between the local database and the cluster (`cesar sync run`)."""
    cesar("sync", "run", *(["--full"] if full else []), *(["--dry-run"] if dry_run else []),
          *(["--json"] if json else []))


@task(
    help={
        "suite": "Which benchmark: a module name under cesar/bench/ (e.g. migrate, api, sync).",
        "args": "Extra arguments for the suite (see `--args=--help`).",
    }
)
def bench(c, suite, args=""):
    """Run a benchmark suite and print its figures (never part of the tests)."""
    import importlib

    try:
        module = importlib.import_module(f"cesar.bench.{suite}")
    except ModuleNotFoundError:
        raise Exit(f"invoke bench: no suite {suite!r} (cesar/bench/{suite}.py)", code=2) from None
    from cesar.errors import CesarError

    try:
        code = module.main(args.split())
    except CesarError as exc:  # one line naming the problem, never a traceback
        raise Exit(f"invoke bench: {exc}", code=exc.exit_code) from None
    if code:
        raise Exit(code=code)


@task(
    help={
        "json": "Print one JSON object instead of the table.",
        "api_url": "The API to check (default: CESAR_API_URL, else the one `invoke up` started).",
        "expect_database": "cockroachdb or postgresql: the engine the cluster and /health must "
                           "report (default: cockroachdb outside development).",
        "budget_ms": "Latency budget in ms for the database round trip and the API's p95 "
                     "(default 200).",
    }
)
def smoke(c, json=False, api_url="", expect_database="", budget_ms=""):
    """Check the cluster (DNS, TCP, TLS, auth, engine, latency, schema, agents) and the API."""
    cesar("smoke", *(["--json"] if json else []), *(["--api-url", api_url] if api_url else []),
          *(["--expect-database", expect_database] if expect_database else []),
          *(["--budget-ms", str(budget_ms)] if budget_ms else []))

@task(help={"json": "Print one JSON object.", "url": "The server to check (default: the cluster).",
            "local": "Check the local database instead of the cluster."})
def doctor(c, json=False, url="", local=False):
    """Check the server's capabilities against what the project needs (`cesar doctor`)."""
    cesar("doctor", *(["--json"] if json else []), *(["--url", url] if url else []),
          *(["--local"] if local else []))


# ---------------------------------------------------------------- infra (Pulumi)
# `invoke infra.up` / `infra.preview` run the real `pulumi` CLI on the stack chosen from
# ENVIRONMENT (development -> dev, staging, production); `infra.plan` and `infra.render` run
# the program under Pulumi's mocks and need neither the CLI nor Docker. See docs/infra.md.
_STACK_HELP = "Pulumi stack (default: from ENVIRONMENT: dev, staging or production)."


def _stack(stack):
    return ["--stack", stack] if stack else []


@task(name="up", help={"stack": _STACK_HELP, "yes": "Skip pulumi's confirmation prompt.",
                       "diff": "Show a detailed diff of every change."})
def infra_up(c, stack="", yes=False, diff=False):
    """`pulumi up` for the environment's stack (clusters, allowlists, monitoring)."""
    cesar("infra", "up", *_stack(stack), *(["--yes"] if yes else []), *(["--diff"] if diff else []))


@task(name="preview", help={"stack": _STACK_HELP, "diff": "Show a detailed diff."})
def infra_preview(c, stack="", diff=False):
    """`pulumi preview` for the environment's stack: what `infra.up` would change."""
    cesar("infra", "preview", *_stack(stack), *(["--diff"] if diff else []))


@task(name="outputs", help={"stack": _STACK_HELP, "show_secrets": "Print secrets in clear."})
def infra_outputs(c, stack="", show_secrets=False):
    """The stack's outputs as JSON, for Ansible and the other tasks."""
    cesar("infra", "outputs", *_stack(stack), *(["--show-secrets"] if show_secrets else []))


@task(name="plan", help={"stack": _STACK_HELP, "json": "Print one JSON object."})
def infra_plan(c, stack="", json=False):
    """What `pulumi up` would create, from the program run under Pulumi's mocks."""
    cesar("infra", "plan", *_stack(stack), *(["--json"] if json else []))


@task(name="render", help={"stack": _STACK_HELP, "out": "Directory to write the files into."})
def infra_render(c, out, stack=""):
    """Write the stack's generated Prometheus, Alertmanager and Grafana files to a directory."""
    cesar("infra", "render", *_stack(stack), "--out", out)


@task(
    name="rotate-password",
    help={
        "grace": "Seconds the previous login stays valid after the switch (default 300).",
        "no_wait": "Do not wait out the grace period; a later run (or --retire-now) retires.",
        "retire_now": "End the grace period of a finished rotation now.",
        "status": "Show the active login, the last rotation and any pending one.",
        "dry_run": "Print what a run would do; change nothing.",
        "skip_store": "Leave out a secondary store: ansible-vault or pulumi (staging/production).",
        "json": "Print one JSON object.",
    },
    iterable=["skip_store"],
)
def rotate_password(c, grace=None, no_wait=False, retire_now=False, status=False,
                    dry_run=False, skip_store=None, json=False):
    """Rotate the application's database password with no downtime (see docs/rotation.md)."""
    args = ["rotate-password"]
    if grace is not None:
        args += ["--grace", str(grace)]
    for flag, on in (("--no-wait", no_wait), ("--retire-now", retire_now), ("--status", status),
                     ("--dry-run", dry_run), ("--json", json)):
        if on:
            args.append(flag)
    for store in skip_store or []:
        args += ["--skip-store", store]
    cesar(*args)


infra = Collection("infra", infra_up, infra_preview, infra_outputs, infra_plan, infra_render)


# ---------------------------------------------------------------- deploy (Ansible) and test hosts
# `invoke deploy` runs `ansible-playbook site.yml` (ansible/) for ENVIRONMENT's inventory after
# building the wheelhouse the hosts install; `invoke testhosts.up` boots real Debian hosts under
# systemd-nspawn (cesar/dev/testhosts.py) and prints an inventory for it. See docs/deploy.md.
@task(
    help={
        "check": "Ask the hosts what would change (ansible --check --diff); change nothing.",
        "diff": "Show the changes made to files.",
        "limit": "Only these hosts or groups (ansible --limit).",
        "tags": "Only the tasks with these tags.",
        "inventory": "An inventory instead of ENVIRONMENT's (e.g. the file testhosts.up printed).",
        "vault_password_file": "The vault password file (default: CESAR_VAULT_PASSWORD_FILE, "
                               "else a prompt).",
        "no_build": "Deploy dist/wheelhouse as it is instead of building it from this checkout.",
        "dry_run": "Print the inventory, the release and the ansible-playbook command only.",
    }
)
def deploy(c, check=False, diff=False, limit="", tags="", inventory="", vault_password_file="",
           no_build=False, dry_run=False):
    """Deploy the API and the sync with Ansible (`ansible-playbook site.yml`)."""
    cesar("deploy", *(["--check"] if check else []), *(["--diff"] if diff else []),
          *(["--limit", limit] if limit else []), *(["--tags", tags] if tags else []),
          *(["--inventory", inventory] if inventory else []),
          *(["--vault-password-file", vault_password_file] if vault_password_file else []),
          *(["--no-build"] if no_build else []), *(["--dry-run"] if dry_run else []))


def _testhosts():
    from cesar.dev import testhosts as harness

    return harness


@task(name="up", help={"count": "How many hosts (default 2).",
                       "sync_hosts": "How many of them run the sync (default 1)."})
def testhosts_up(c, count=2, sync_hosts=1):
    """Boot Debian test hosts (systemd-nspawn, root) and print their inventory's path."""
    from cesar.errors import CesarError

    harness = _testhosts()
    try:
        run = harness.up(int(count), owner="invoke", sync_hosts=int(sync_hosts),
                         progress=lambda m: print(f"  {m}"))
    except CesarError as exc:
        raise Exit(f"cesar: error: {exc}", code=exc.exit_code) from None
    except Exception as exc:  # the harness cleaned up; still one line for the operator
        raise Exit(f"cesar: error: internal error: {type(exc).__name__}: {exc}", code=1) from None
    print(f"next: cd ansible && ansible-playbook -i {run.inventory} site.yml")
    print(run.inventory)


@task(name="down", help={"run": "The run id or inventory path (default: every run testhosts.up "
                                "started).",
                         "all": "Every run, also those of test sessions still going."})
def testhosts_down(c, run="", all=False):
    """Stop test hosts, delete their namespaces and remove their inventory."""
    from cesar.errors import CesarError

    harness = _testhosts()
    try:
        if run:
            targets = [harness.find(run)]
        else:
            targets = [r for r in harness.runs() if all or r.owner == "invoke"]
        for target in targets:
            print(f"run {target.id} ({target.inventory or 'no inventory'}):")
            harness.down(target, progress=lambda m: print(f"  {m}"))
    except CesarError as exc:
        raise Exit(f"cesar: error: {exc}", code=exc.exit_code) from None
    if not targets:
        print("no test-host run to stop")


testhosts = Collection("testhosts", testhosts_up, testhosts_down)


# ----------------------------------------------------------------------------- API keys
@task(name="create", help={"name": "What the key is for (e.g. prometheus).",
                           "scopes": "Comma-separated, e.g. agents:read,tasks:write.",
                           "expires_in": "e.g. 90d, 12h (default: never).",
                           "json": "Print one JSON object (with `key`, shown once)."})
def keys_create(c, name, scopes, expires_in="", json=False):
    """Create an API key and print it once (`cesar keys create`)."""
    cesar("keys", "create", "--name", name, "--scopes", scopes,
          *(["--expires-in", expires_in] if expires_in else []), *(["--json"] if json else []))


@task(name="list", help={"json": "Print a JSON array."})
def keys_list(c, json=False):
    """List the API keys without their secrets (`cesar keys list`)."""
    cesar("keys", "list", *(["--json"] if json else []))


@task(name="revoke", help={"prefix": "The key's prefix (cesar_0123456789ab).",
                           "dry_run": "Say which key would be revoked; change nothing."})
def keys_revoke(c, prefix, dry_run=False):
    """Revoke an API key (`cesar keys revoke`)."""
    cesar("keys", "revoke", prefix, *(["--dry-run"] if dry_run else []))


keys = Collection("keys", keys_create, keys_list, keys_revoke)


ns = Collection(up, down, status, test, bench)
ns.add_task(smoke)
ns.add_task(migrate)
ns.add_task(rollback)
ns.add_task(sync)
ns.add_task(rotate_password)
ns.add_collection(infra)
ns.add_task(deploy)
ns.add_collection(testhosts)
ns.add_collection(keys)
ns.configure({"run": {"echo": False}})
ns.add_task(doctor)


# ---------------------------------------------------------------- backups and disaster recovery
# `invoke backup` takes a base backup of the local database's server (the collection's default
# task, so `invoke backup` and `invoke backup.list` both work); `invoke restore` restores to a
# point in time into a new database; `invoke dr.drill` proves the newest backup restores and
# `invoke dr.status` reports ages, gaps and the last drill. See docs/backup.md.
@task(name="take", default=True, help={"json": "Print one JSON object."})
def backup_take(c, json=False):
    """Take a base backup of the local database's server now (`cesar backup take`)."""
    cesar("backup", "take", *(["--json"] if json else []))


@task(name="list", help={"json": "Print one JSON object."})
def backup_list(c, json=False):
    """The backups and the points in time that can be restored (`cesar backup list`)."""
    cesar("backup", "list", *(["--json"] if json else []))


@task(
    help={
        "to": "The point in time, ISO 8601 with a zone (e.g. 2026-11-30T10:15:00Z).",
        "into": "The new database to restore into, beside the live one.",
        "force": "Replace INTO if it exists or is in use (the old one is kept, renamed).",
        "database": "Another database of the same server (default: the local database).",
        "dry_run": "Check the request and name the backup it would use; change nothing.",
        "json": "Print one JSON object (with `url`).",
    }
)
def restore(c, to, into, force=False, database="", dry_run=False, json=False):
    """Restore the local database as it was at TO into a new database INTO."""
    cesar("backup", "restore", "--to", to, "--into", into, *(["--force"] if force else []),
          *(["--database", database] if database else []),
          *(["--dry-run"] if dry_run else []), *(["--json"] if json else []))


@task(name="drill", help={"json": "Print one JSON object (ok, rpo_seconds, rto_seconds, "
                                  "tables)."})
def dr_drill(c, json=False):
    """Restore the newest backup on a scratch server and compare every table (exit 1 if not)."""
    cesar("backup", "drill", *(["--json"] if json else []))


@task(name="status", help={"json": "Print one JSON object."})
def dr_status(c, json=False):
    """Age of the newest backup, archive lag and gaps, the last drill's result."""
    cesar("backup", "status", *(["--json"] if json else []))


backup = Collection("backup", backup_take, backup_list)
dr = Collection("dr", dr_drill, dr_status)
ns.add_collection(backup)
ns.add_task(restore)
ns.add_collection(dr)


# ----------------------------------------------------------------------------- work (tasks, runs)
@task(help={"limit": "Most tasks to assign (default 100).", "dry_run": "Change nothing.",
            "json": "Print one JSON object."})
def dispatch(c, limit=100, dry_run=False, json=False):
    """Assign queued tasks to agents, priority then age (`cesar dispatch`)."""
    cesar("dispatch", "--limit", str(limit), *(["--dry-run"] if dry_run else []),
          *(["--json"] if json else []))


@task(help={"rate": "Tasks created per second (default 2).",
            "duration": "How long: seconds or 90s, 5m, 1h (default 60).",
            "json": "Print one JSON summary."})
def demo(c, rate=2.0, duration="60", json=False):
    """Drive realistic activity through the API so the stack has live data (`cesar demo`)."""
    cesar("demo", "--rate", str(rate), "--duration", str(duration), *(["--json"] if json else []))


ns.add_task(dispatch)
ns.add_task(demo)


# ----------------------------------------------------------------------------- dashboard
@task(name="build", help={"out": "Directory for the export (default: <state dir>/web).",
                          "force": "Build even when web/ did not change.",
                          "json": "Print one JSON object."})
def web_build(c, out="", force=False, json=False):
    """Build the dashboard's static export (npm ci + next build, only when web/ changed)."""
    cesar("web", "build", *(["--out", out] if out else []), *(["--force"] if force else []),
          *(["--json"] if json else []))


@task(name="client")
def web_client(c):
    """Regenerate the dashboard's typed API client from the API's /openapi.json."""
    cesar("web", "client")


ns.add_collection(Collection("web", web_build, web_client))


# ---------------------------------------------------------------- soak (docs/soak.md)
@task(help={"duration": "How long the load and the faults run (5m, 30m, 90s).",
            "compress": "Time compression: the sync runs every 300/COMPRESS s (default 48).",
            "json": "Print one JSON object: ok, unexplained_errors, lost_rows, max_p95_ms, "
                    "faults, ...",
            "seed": "Seed of the writers' choices and of the API worker killed.",
            "faults": "Only these faults, comma-separated, in order ('none': no faults).",
            "inject_unexplained": "Cause one real error outside every fault: the run must "
                                  "fail."})
def soak(c, duration="5m", compress="48", json=False, seed=0, faults="",
         inject_unexplained=False):
    """Run the whole stack under load and scheduled faults; exit 1 unless every check passes."""
    cesar("soak", "--duration", duration, "--compress", compress, "--seed", str(seed),
          *(["--faults", faults] if faults else []),
          *(["--inject-unexplained"] if inject_unexplained else []),
          *(["--json"] if json else []))


ns.add_task(soak)
