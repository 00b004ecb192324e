"""The Grafana provisioning and dashboard: valid JSON/YAML, sound structure, and queries that
promtool parses and that name only metrics the API, the sync or CockroachDB export."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import pytest
import yaml

import cesar
from infra.monitoring import grafana, metrics, rules
from tests.infra.helpers import STACKS


def dashboard(rendered, stack: str) -> dict:
    return json.loads((rendered[stack] / "grafana" / "dashboards" / "cesar-overview.json")
                      .read_text())


def exprs(board: dict) -> list[tuple[str, str]]:
    return [(f"{p['id']}{t['refId']}", t["expr"]) for p in board["panels"] for t in p["targets"]]


@pytest.mark.parametrize("stack", STACKS)
def test_the_dashboard_is_valid_and_consistent(rendered, stack: str) -> None:
    board = dashboard(rendered, stack)
    assert board["uid"] == grafana.DASHBOARD_UID and len(board["uid"]) <= 40
    assert board["title"].startswith("CESAR overview") and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and ids
    datasources = yaml.safe_load((rendered[stack] / "grafana" / "provisioning" / "datasources"
                                  / "prometheus.yaml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in ("timeseries", "stat") and panel["title"]
        assert panel["datasource"]["uid"] in uids
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] in uids


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder(rendered) -> None:
    root = rendered["dev"] / "grafana" / "provisioning"
    [source] = yaml.safe_load((root / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus", "http://prometheus:9090", True)
    [provider] = yaml.safe_load((root / "dashboards" / "cesar.yaml").read_text())["providers"]
    assert provider["options"]["path"] == grafana.DASHBOARDS_DIR
    assert provider["allowUiUpdates"] is False


def test_panel_queries_name_only_exported_metrics(rendered) -> None:
    recorded = {r.record for g in rules.groups(3) for r in g.records()}
    known = metrics.known_series() | recorded
    unknown = {ref: metrics.metric_names(e) - known for ref, e in exprs(dashboard(rendered, "dev"))}
    assert {ref: names for ref, names in unknown.items() if names} == {}


def test_panel_queries_parse_with_promtool(rendered, promtool, tmp_path: Path) -> None:
    """promtool has no expression checker; a rule file of one recording rule per query makes it
    parse every query with Prometheus's own parser."""
    records = [{"record": f"dashboard:query_{ref}", "expr": expr}
               for ref, expr in exprs(dashboard(rendered, "dev"))]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:broken", "expr": "sum(rate(x[5m])"}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_the_dashboard_shows_sync_lag_latency_errors_and_cluster_health(rendered) -> None:
    board = dashboard(rendered, "dev")
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in board["panels"]}
    assert "cesar_sync_lag_seconds" in by_title["Sync lag per table"]
    assert "by (table, direction)" in by_title["Sync lag per table"]
    assert by_title["API p95 latency by route"].startswith("histogram_quantile(0.95,")
    assert "cesar_db_connection_errors_total" in by_title["Database connection errors (5 min)"]
    health = " ".join(by_title[t] for t in ("Live nodes", "Ranges unavailable / under-replicated",
                                            "Clock offset from cluster mean", "Disk available"))
    for name in ("liveness_livenodes", "ranges_unavailable", "ranges_underreplicated",
                 "clock_offset_meannanos", "capacity_available:ratio"):
        assert name in health


def test_every_contract_metric_is_watched() -> None:
    """Each metric of the API/sync contract appears in a panel or a rule."""
    queries = [q.expr for p in grafana.PANELS for q in p.queries]
    queries += [a.expr for g in rules.groups(3) for a in g.rules]
    used = set().union(*(metrics.metric_names(q) for q in queries))
    unwatched = [m.name for m in metrics.APPLICATION if not set(m.series()) & used]
    assert unwatched == []


def _exported_by_cesar() -> tuple[set[str], set[str]]:
    """Metric names registered by every module of the ``cesar`` package that defines metrics,
    and the modules' names."""
    from prometheus_client import REGISTRY

    root = Path(cesar.__file__).parent
    modules = set()
    for info in pkgutil.walk_packages([str(root)], prefix="cesar."):
        path = root.joinpath(*info.name.split(".")[1:])
        source = path.with_suffix(".py") if not info.ispkg else path / "__init__.py"
        if source.exists() and "prometheus_client" in source.read_text():
            importlib.import_module(info.name)
            modules.add(info.name)
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    return names, modules


def test_the_api_exports_the_contract_metrics_the_monitoring_uses() -> None:
    exported, modules = _exported_by_cesar()
    assert "cesar.metrics" in modules
    missing_api = [s for m in metrics.APPLICATION if m.source == "api"
                   for s in m.series() if s not in exported]
    assert missing_api == []
    # The sync's metrics too: the rules and the dashboard query them, so a sync that stopped
    # exporting one must fail here, not be skipped.
    assert any(name.startswith("cesar.sync") for name in modules)
    missing_sync = [m.name for m in metrics.APPLICATION if m.source == "sync"
                    and not set(m.series()) <= exported]
    assert missing_sync == []
