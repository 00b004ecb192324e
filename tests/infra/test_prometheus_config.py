"""The generated prometheus.yml: valid for promtool, scraping what each flavour exports."""

from __future__ import annotations

import re

import pytest
import yaml

from infra.monitoring import prometheus_config
from tests.infra.helpers import STACKS, settings_of


@pytest.mark.parametrize("stack", STACKS)
def test_promtool_accepts_the_config(rendered, promtool, stack: str) -> None:
    path = rendered[stack] / "prometheus" / "prometheus.yml"
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 rule files found" in result.stdout


def test_promtool_rejects_a_broken_config(promtool, tmp_path) -> None:
    """The check above can fail: the same tool refuses a config pointing at missing rules."""
    path = tmp_path / "prometheus.yml"
    path.write_text("rule_files: [rules/missing.rules.yml]\nscrape_configs: [{job_name: x}]\n")
    assert promtool("check", "config", str(path)).returncode != 0


def config(rendered, stack: str) -> dict:
    return yaml.safe_load((rendered[stack] / "prometheus" / "prometheus.yml").read_text())


def jobs(rendered, stack: str) -> dict[str, dict]:
    return {job["job_name"]: job for job in config(rendered, stack)["scrape_configs"]}


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_self_hosted_scrapes_every_node_over_tls_and_the_api(rendered, stack: str) -> None:
    spec = settings_of(stack)
    found = jobs(rendered, stack)
    crdb = found["cockroachdb"]
    assert crdb["metrics_path"] == "/_status/vars" and crdb["scheme"] == "https"
    assert crdb["tls_config"] == {"ca_file": "certs/ca.crt"}
    [targets] = crdb["static_configs"]
    assert targets["targets"] == [f"roach-{i}:8080" for i in (1, 2, 3)]
    assert targets["labels"] == {"cluster": spec.cluster_name}
    assert found["cesar-api"]["static_configs"] == [{"targets": list(spec.monitoring.api_targets)}]
    assert config(rendered, stack)["alerting"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["alertmanager:9093"]}]}]


def test_cloud_scrapes_each_region_of_the_export_as_one_job(rendered) -> None:
    spec = settings_of("production")
    found = jobs(rendered, "production")
    assert set(found) == {f"cockroachdb-{r}" for r in spec.regions} | {"cesar-api",
                                                                       "cesar-db-auth"}
    for region in spec.regions:
        job = found[f"cockroachdb-{region}"]
        assert job["metrics_path"].endswith(f"/metricexport/prometheus/{region}/scrape")
        assert job["static_configs"] == [{"targets": ["cockroachlabs.cloud"],
                                          "labels": {"region": region}}]
        assert job["authorization"] == {"type": "Bearer",
                                        "credentials_file": "secrets/cockroach-cloud-api-key"}
        assert job["honor_labels"] is True
        assert job["relabel_configs"] == [{"target_label": "job", "replacement": "cockroachdb"}]


@pytest.mark.parametrize(("exported", "stored"), [
    ("crdb_cloud_liveness_livenodes", "liveness_livenodes"),
    ("crdb_dedicated_ranges_unavailable", "ranges_unavailable"),
    ("crdb_cloud_capacity_available", "capacity_available"),
])
def test_the_cloud_prefix_is_removed_so_one_rule_set_serves_both(exported: str,
                                                                 stored: str) -> None:
    # Prometheus anchors relabel regexes; fullmatch is the same here.
    match = re.fullmatch(prometheus_config.CLOUD_PREFIX_REGEX, exported)
    assert match and match.group(1) == stored
    assert re.fullmatch(prometheus_config.CLOUD_PREFIX_REGEX, "liveness_livenodes") is None


def test_inputs_must_name_one_flavour() -> None:
    with pytest.raises(ValueError, match="either node_hosts"):
        prometheus_config.config(prometheus_config.PrometheusInputs(
            cluster="c", environment="development", stack="dev", api_targets=[]))
    with pytest.raises(ValueError, match="not an https URL"):
        prometheus_config.config(prometheus_config.PrometheusInputs(
            cluster="c", environment="production", stack="p", api_targets=[],
            cloud_targets={"r": "http://cockroachlabs.cloud/x"}))


@pytest.mark.parametrize("stack", STACKS)
def test_mtail_on_each_api_host_is_scraped_for_failed_logins(rendered, stack: str) -> None:
    spec = settings_of(stack)
    job = jobs(rendered, stack)["cesar-db-auth"]
    hosts = dict.fromkeys(t.rsplit(":", 1)[0] for t in spec.monitoring.api_targets)
    assert job["static_configs"] == [{"targets": [f"{h}:3903" for h in hosts]}]
    assert job["metrics_path"] == "/metrics"
