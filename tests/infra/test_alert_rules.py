"""The generated alerting rules, checked by the real promtool.

``promtool check rules --lint=all --lint-fatal`` on every stack's rules; ``promtool test rules``
with the hand-written cases in ``promtool/`` (a firing and a non-firing case for every alert,
enforced below); every query names only metrics that exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from infra.monitoring import files as monitoring_files
from infra.monitoring import metrics, rules
from tests.infra.helpers import PROMTOOL_TESTS, STACKS, settings_of


def rule_files(root: Path) -> list[Path]:
    return sorted((root / "prometheus" / "rules").glob("*.rules.yml"))


def loaded(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("stack", STACKS)
def test_rules_pass_promtool_lint(rendered, promtool, stack: str) -> None:
    files = rule_files(rendered[stack])
    assert [f.name for f in files] == ["cesar.rules.yml", "cockroachdb.rules.yml",
                                       "dbauth.rules.yml"]
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def run_unit_tests(promtool, rules_dir: Path) -> tuple[int, str]:
    for test_file in PROMTOOL_TESTS.glob("*.test.yml"):
        shutil.copy(test_file, rules_dir)
    tests = sorted(p.name for p in rules_dir.glob("*.test.yml"))
    result = promtool("test", "rules", *tests, cwd=rules_dir)
    return result.returncode, result.stdout + result.stderr


def test_promtool_unit_tests_pass_on_the_generated_rules(rendered, promtool, tmp_path) -> None:
    work = tmp_path / "prometheus"
    shutil.copytree(rendered["dev"] / "prometheus", work)
    code, output = run_unit_tests(promtool, work)
    assert code == 0, output
    assert output.count("SUCCESS") == 3


def shipped_copy(root: Path, **replace: tuple[str, str]) -> Path:
    """The shipped rule files copied byte for byte under ``root/rules`` (where the promtool cases
    look for them), with ``file=(old, new)`` text replacements to break one on purpose."""
    out = root / "rules"
    out.mkdir(parents=True)
    for path in sorted(rules.RULES_DIR.glob("*.rules.yml")):
        text = path.read_text()
        if path.name in replace:
            old, new = replace[path.name]
            assert text.count(old) == 1, (path.name, old)
            text = text.replace(old, new)
        (out / path.name).write_text(text)
    return out


def test_rule_files_ship_as_plain_yaml_for_every_group() -> None:
    assert sorted(p.name for p in rules.RULES_DIR.glob("*.rules.yml")) == sorted(rules.FILES)
    generated = {rules.file_name(g) for g in rules.groups(expected_nodes=3)}
    assert generated == set(rules.FILES)


def test_the_shipped_rule_files_pass_promtool_lint(promtool) -> None:
    files = sorted(rules.RULES_DIR.glob("*.rules.yml"))
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass_on_the_shipped_rules(promtool, tmp_path) -> None:
    """The files in the repo, not a rendering of them, meet the hand-written cases."""
    shipped_copy(tmp_path)
    code, output = run_unit_tests(promtool, tmp_path)
    assert code == 0, output
    assert output.count("SUCCESS") == 3


def test_the_unit_tests_catch_a_changed_threshold(promtool, tmp_path) -> None:
    """The promtool cases pin the thresholds: loosen two in the shipped files and the tests must
    fail on them."""
    loosened = tmp_path / "rules" / "cesar.rules.yml"
    shipped_copy(tmp_path, **{"cesar.rules.yml": ("> 600\n", "> 900\n")})
    text = loosened.read_text()
    assert text.count("[5m]) > 5\n") == 1
    loosened.write_text(text.replace("[5m]) > 5\n", "[5m]) > 20\n"))
    code, output = run_unit_tests(promtool, tmp_path)
    assert code != 0
    assert "alertname: DatabaseSyncLag" in output
    assert "alertname: CockroachDBConnectionFailure" in output


def test_every_stack_deploys_the_shipped_rules_bar_its_node_count(rendered) -> None:
    """What a stack deploys is the shipped file (comments aside); only the node count of the
    node-liveness alert differs, and only where the stack's node count does."""
    for stack in STACKS:
        nodes = settings_of(stack).node_count
        for path in rule_files(rendered[stack]):
            deployed = yaml.safe_load(path.read_text())
            shipped = yaml.safe_load((rules.RULES_DIR / path.name).read_text())
            if path.name == "cockroachdb.rules.yml":
                by_name = {r.get("alert"): r for r in shipped["groups"][0]["rules"]}
                node = by_name[rules.NODE_ALERT]
                for key in ("expr",):
                    node[key] = node[key].replace(f"< {rules.SHIPPED_NODES}", f"< {nodes}")
                for key in ("summary", "description"):
                    node["annotations"][key] = node["annotations"][key].replace(
                        f" {rules.SHIPPED_NODES} ", f" {nodes} ").replace(
                        f"of {rules.SHIPPED_NODES}", f"of {nodes}")
            assert deployed == shipped, (stack, path.name)


def test_the_deployed_rules_follow_the_shipped_files(tmp_path, monkeypatch) -> None:
    """Edit a shipped file and the bundle follows: no second copy of a rule lives in code."""
    edited = shipped_copy(tmp_path, **{
        "dbauth.rules.yml": ("[5m]))\n          > 10\n", "[5m]))\n          > 12\n"),
        "cesar.rules.yml": ("for: 10m\n        labels:\n          severity: warning\n",
                            "for: 15m\n        labels:\n          severity: warning\n"),
    })
    monkeypatch.setattr(rules, "RULES_DIR", edited)
    rules.shipped.cache_clear()
    try:
        bundle = monitoring_files.build(settings_of("dev"))
    finally:
        rules.shipped.cache_clear()
    deployed = {name: yaml.safe_load(text) for name, text in bundle.prometheus.items()
                if name.startswith("rules/")}
    by_name = {r.get("alert"): r for doc in deployed.values() for r in doc["groups"][0]["rules"]}
    assert by_name["DatabaseLoginFailureBurst"]["expr"].endswith("> 12")
    assert by_name["DatabaseSyncLag"]["for"] == "15m"


def test_a_serverless_stack_leaves_the_node_alert_out_and_keeps_the_rest() -> None:
    full = rules.cockroachdb_group(expected_nodes=3)
    serverless = rules.cockroachdb_group(expected_nodes=0)
    assert [r for r in full.rules if getattr(r, "name", "") != rules.NODE_ALERT] \
        == list(serverless.rules)
    assert rules.cockroachdb_group(expected_nodes=rules.SHIPPED_NODES) \
        == rules.shipped("cockroachdb.rules.yml")


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    cases: dict[str, list[bool]] = {}
    for test_file in PROMTOOL_TESTS.glob("*.test.yml"):
        for test in yaml.safe_load(test_file.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    generated = {a.name for g in rules.groups(expected_nodes=3) for a in g.alerts()}
    assert set(cases) == generated
    missing = {name: seen for name, seen in cases.items() if set(seen) != {True, False}}
    assert missing == {}


@pytest.mark.parametrize("stack", STACKS)
def test_alerts_carry_severity_summary_and_description(rendered, stack: str) -> None:
    alerts = [r for f in rule_files(rendered[stack]) for r in loaded(f) if "alert" in r]
    assert len(alerts) >= 14
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert alert["annotations"]["summary"].strip(), alert["alert"]
        assert alert["annotations"]["description"].strip(), alert["alert"]


def test_sync_lag_connection_failure_and_migration_alerts_keep_their_thresholds(rendered) -> None:
    alerts = {r["alert"]: r for f in rule_files(rendered["dev"]) for r in loaded(f)
              if "alert" in r}
    lag = alerts["DatabaseSyncLag"]
    assert "cesar_sync_lag_seconds" in lag["expr"] and lag["expr"].endswith("> 600")
    assert (lag["for"], lag["labels"]["severity"]) == ("10m", "warning")
    errors = alerts["CockroachDBConnectionFailure"]
    assert "increase(cesar_db_connection_errors_total" in errors["expr"]
    assert errors["expr"].endswith("[5m]) > 5") and errors["labels"]["severity"] == "critical"
    failed = alerts["MigrationFailed"]
    assert "cesar_migrations_failed" in failed["expr"] and failed["expr"].endswith("> 0")
    assert failed["labels"]["severity"] == "critical"
    for essential in ("CockroachDBNodeNotLive", "CockroachDBClockOffsetNearMax",
                      "CockroachDBUnavailableRanges", "CockroachDBUnderReplicatedRanges",
                      "CockroachDBNodeCertificateExpiresSoon", "CockroachDBStoreDiskLow"):
        assert essential in alerts


@pytest.mark.parametrize("stack", STACKS)
def test_rule_queries_name_only_metrics_that_exist(rendered, stack: str) -> None:
    all_rules = [r for f in rule_files(rendered[stack]) for r in loaded(f)]
    recorded = {r["record"] for r in all_rules if "record" in r}
    known = metrics.known_series() | recorded
    unknown = {(r.get("alert") or r.get("record")): metrics.metric_names(r["expr"]) - known
               for r in all_rules}
    assert {k: v for k, v in unknown.items() if v} == {}


def test_the_node_alert_follows_each_stack_s_node_count(rendered) -> None:
    for stack in STACKS:
        spec = settings_of(stack)
        rules_ = {r.get("alert"): r for r in loaded(
            rendered[stack] / "prometheus" / "rules" / "cockroachdb.rules.yml")}
        assert rules_["CockroachDBNodeNotLive"]["expr"].endswith(f"< {spec.node_count}")
    assert settings_of("production").node_count == 9  # 3 regions x 3 nodes
    serverless = rules.cockroachdb_group(expected_nodes=0)
    assert "CockroachDBNodeNotLive" not in {a.name for a in serverless.alerts()}


def test_the_promql_scanner_finds_metric_names() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{job="a",le=~"0.1"}[5m])))'
            ' / on(instance) group_left() up offset 5m and cluster:cap:ratio > 1e6 unless y')
    assert metrics.metric_names(expr) == {"x_bucket", "up", "cluster:cap:ratio", "y"}
