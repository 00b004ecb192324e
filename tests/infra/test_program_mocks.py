"""The Pulumi program under ``pulumi.runtime.set_mocks``, for every stack file.

The config is each ``Pulumi.<stack>.yaml`` passed through ``PULUMI_CONFIG`` as the CLI passes it
(``infra.offline``). What is checked: the resources and their key properties (node count, pinned
images, ports on the configured address, certificates and passwords only ever inside secrets,
allowlist entries, the monitoring containers and the configuration they receive), the outputs,
and the refusals.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pulumi
import pytest
import yaml

from cesar import cockroach
from cesar.errors import ConfigError
from cesar.rotate import scram
from infra import images, offline, outputs, program
from infra import settings as stack_settings
from infra.cluster import selfhosted
from infra.monitoring import files as monitoring_files
from tests.infra.helpers import CONTAINER, IMAGE, STACKS, image_of, override, settings_of, upload


def containers(run: offline.OfflineRun) -> dict[str, offline.Registered]:
    return {r.name: r for r in run.of_type(CONTAINER)}


def test_the_stack_files_are_dev_staging_and_production() -> None:
    assert STACKS == ("dev", "production", "staging")


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_exports_the_documented_outputs(runs, stack: str) -> None:
    run = runs[stack]
    assert tuple(run.outputs) == outputs.NAMES
    assert run.secret_outputs >= outputs.SECRET_NAMES
    out = run.outputs
    assert out["logins"] == ["cesar_app_a", "cesar_app_b"] and out["app_role"] == "cesar_app"
    url = urlsplit(out["connection_url"])
    assert url.username == out["active_login"] == "cesar_app_a"
    assert "sslmode=verify-full" in url.query
    assert out["connection_urls"]["cesar_app_a"] == out["connection_url"]
    assert urlsplit(out["connection_urls"]["cesar_app_b"]).username == "cesar_app_b"
    assert f"{url.hostname}:{url.port}" == out["sql_endpoints"][0]
    for key in ("prometheus_url", "alertmanager_url", "grafana_url"):
        assert out[key].startswith("http://")


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_value_appears_outside_a_secret(runs, stack: str) -> None:
    """Passwords, private keys and secret config reach resources and outputs only wrapped as
    secrets, so Pulumi encrypts them in state and masks them in its output."""
    run = runs[stack]
    assert run.secret_values

    def leaks(value: Any, where: str) -> list[str]:
        if offline.is_secret(value):
            return []
        if isinstance(value, dict):
            return [x for k, v in value.items() for x in leaks(v, f"{where}.{k}")]
        if isinstance(value, list):
            return [x for i, v in enumerate(value) for x in leaks(v, f"{where}[{i}]")]
        text = str(value)
        bad = [s for s in run.secret_values if s in text] + (
            ["a private key"] if "PRIVATE KEY" in text else [])
        return [f"{where}: {b[:12]}..." for b in bad]

    found = [x for r in run.resources for x in leaks(r.inputs, r.name)]
    found += [x for k, v in run.outputs.items() if k not in run.secret_outputs
              for x in leaks(v, f"output {k}")]
    assert found == []


@pytest.mark.parametrize("stack", STACKS)
def test_every_image_is_pinned(runs, stack: str) -> None:
    run = runs[stack]
    refs = [r.plain_inputs["name"] for r in run.of_type(IMAGE)]
    assert refs
    for ref in refs:
        images.require_pinned(ref, "any")
    for container in run.of_type(CONTAINER):
        assert image_of(run, container) in refs


# ------------------------------------------------------------------ self-hosted (dev, staging)
@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_a_secure_three_node_cluster(runs, stack: str) -> None:
    run, spec = runs[stack], settings_of(stack)
    assert spec.self_hosted is not None
    nodes = sorted((c for c in run.of_type(CONTAINER)
                    if re.fullmatch(rf"cesar-{stack}-roach-\d", c.name)), key=lambda c: c.name)
    assert len(nodes) == spec.self_hosted.nodes == 3
    hosts = [f"roach-{i}" for i in (1, 2, 3)]
    for index, node in enumerate(nodes, start=1):
        inputs = node.plain_inputs
        command = inputs["command"]
        assert command[0] == "start" and "--certs-dir=/cockroach/certs" in command
        assert "--insecure" not in command
        assert "--join=" + ",".join(f"{h}:26357" for h in hosts) in command
        assert image_of(run, node) == spec.images.cockroach
        assert inputs["healthcheck"]["tests"][-1] == "https://localhost:8080/health?ready=1"
        assert {(p["internal"], p["external"], p["ip"]) for p in inputs["ports"]} == {
            (26257, 26256 + index, spec.self_hosted.bind_address),
            (8080, 8079 + index, spec.self_hosted.bind_address)}
        assert inputs["networksAdvanced"][0]["aliases"] == [f"roach-{index}"]
        # Certificates: the key is secret; the files are where --certs-dir expects them.
        assert offline.is_secret(node.inputs["uploads"])
        assert upload(node, "/cockroach/certs/node.key")["permissions"] == "0600"
        upload(node, "/cockroach/certs/node.crt")
        upload(node, "/cockroach/certs/ca.crt")
    volumes = run.of_type("docker:index/volume:Volume")
    data = [v for v in volumes if re.fullmatch(rf"cesar-{stack}-roach-\d-data", v.name)]
    assert len(data) == 3 and all(v.protect for v in data)


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_node_certificates_name_every_address_clients_use(runs, stack: str) -> None:
    run, spec = runs[stack], settings_of(stack)
    assert spec.self_hosted is not None
    for i in (1, 2, 3):
        csr = run.named(f"cesar-{stack}-certs-roach-{i}-csr").plain_inputs
        assert csr["subject"]["commonName"] == "node"
        assert csr["dnsNames"] == [f"roach-{i}", "localhost"]
        assert spec.self_hosted.bind_address in csr["ipAddresses"]
        cert = run.named(f"cesar-{stack}-certs-roach-{i}-cert").plain_inputs
        assert {"server_auth", "client_auth"} <= set(cert["allowedUses"])
    root = run.named(f"cesar-{stack}-certs-client-root-csr").plain_inputs
    assert root["subject"]["commonName"] == "root"


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_the_init_container_bootstraps_once_the_nodes_exist(runs, stack: str) -> None:
    run = runs[stack]
    init = run.named(f"cesar-{stack}-roach-init")
    nodes = {r.urn for r in run.of_type(CONTAINER) if re.fullmatch(rf"cesar-{stack}-roach-\d",
                                                                   r.name)}
    assert nodes <= set(init.dependencies)
    inputs = init.plain_inputs
    assert inputs["mustRun"] is False and inputs["attach"] is True
    assert "cockroach init --certs-dir=/certs --host=roach-1:26357" in inputs["command"][0]
    assert offline.is_secret(init.inputs["uploads"])
    sql = upload(init, "/bootstrap/bootstrap.sql")["content"]
    # The passwords set on the cluster are the ones in the exported connection URLs, as SCRAM
    # verifiers in statements of their own: the script never holds a password.
    for login, url in run.outputs["connection_urls"].items():
        password = urlsplit(url).password
        assert password and password not in sql
        m = re.search(rf"^ALTER ROLE \"{login}\" WITH PASSWORD '(SCRAM-SHA-256\$[^']+)';$", sql,
                      re.MULTILINE)
        assert m and scram.matches(password, m[1])
    # Salted once (state), so a second run renders the same script: no diff on every update.
    again = offline.run(stack).named(f"cesar-{stack}-roach-init")
    assert upload(again, "/bootstrap/bootstrap.sql")["content"] == sql
    upload(init, "/certs/client.root.key")


def hba_lines(run: offline.OfflineRun, stack: str) -> list[str]:
    sql = upload(run.named(f"cesar-{stack}-roach-init"), "/bootstrap/bootstrap.sql")["content"]
    match = re.search(r"server\.host_based_authentication\.configuration = '([^']*)'", sql)
    assert match, "the bootstrap sets the HBA configuration"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines()
            if line.strip() and not line.startswith("#")]


def test_dev_allows_the_docker_gateway_its_loopback_ports_arrive_from(runs) -> None:
    assert hba_lines(runs["dev"], "dev") == [
        "host all all 172.28.0.1/32 cert-password", "host all all all reject"]


def test_staging_allows_exactly_its_allowlist(runs) -> None:
    spec = settings_of("staging")
    assert hba_lines(runs["staging"], "staging") == [
        *[f"host all all {e.cidr} cert-password" for e in spec.allowlist],
        "host all all all reject"]


def test_staging_runs_on_its_remote_docker_host(runs) -> None:
    run = runs["staging"]
    [provider] = run.of_type("pulumi:providers:docker")
    assert provider.plain_inputs["host"] == "ssh://deploy@10.20.0.10"
    for container in run.of_type(CONTAINER):
        assert container.provider and container.provider.startswith(provider.urn)


# ------------------------------------------------------------------ monitoring (every stack)
@pytest.mark.parametrize("stack", STACKS)
def test_monitoring_containers_receive_the_generated_configuration(runs, stack: str) -> None:
    run, spec = runs[stack], settings_of(stack)
    found = containers(run)
    bundle = monitoring_files.build(
        spec, cloud_targets=_export_targets(run) if spec.flavour == "cloud" else None,
        webhook_secrets={"cesar-critical": spec.monitoring.critical.kind == "webhook"
                         and any("criticalReceiverSecret" in k for k in _secret_keys(stack))})
    for service, directory, files in (
        ("prometheus", "/etc/prometheus", bundle.prometheus),
        ("alertmanager", "/etc/alertmanager", bundle.alertmanager),
        ("grafana", "/etc/grafana/provisioning", bundle.grafana_provisioning),
        ("grafana", "/etc/grafana/dashboards", bundle.grafana_dashboards),
    ):
        container = found[f"cesar-{stack}-{service}"]
        for relative, text in files.items():
            assert upload(container, f"{directory}/{relative}")["content"] == text, relative
    for service, port, published in (
        ("prometheus", 9090, spec.monitoring.prometheus_port),
        ("alertmanager", 9093, spec.monitoring.alertmanager_port),
        ("grafana", 3000, spec.monitoring.grafana_port),
    ):
        container = found[f"cesar-{stack}-{service}"].plain_inputs
        assert container["ports"] == [{"internal": port, "external": published,
                                       "ip": spec.monitoring.bind_address}]
        assert container["restart"] == "unless-stopped"
    grafana = found[f"cesar-{stack}-grafana"]
    assert offline.is_secret(grafana.inputs["uploads"])
    assert upload(grafana, "/etc/grafana/secrets/admin-password")["permissions"] == "0400"
    assert ("GF_SECURITY_ADMIN_PASSWORD__FILE=/etc/grafana/secrets/admin-password"
            in grafana.plain_inputs["envs"])


def _secret_keys(stack: str) -> list[str]:
    return list(offline.required_secret_stand_ins(stack))


def _export_targets(run: offline.OfflineRun) -> dict[str, str]:
    [export] = run.of_type(
        "cockroach:index/metricExportPrometheusConfig:MetricExportPrometheusConfig")
    cluster_id = export.plain_inputs["clusterId"]
    return {r: f"https://cockroachlabs.cloud/api/v1/clusters/{cluster_id}/metricexport/"
               f"prometheus/{r}/scrape" for r in settings_of(run.stack).regions}


def test_dev_binds_every_published_port_to_loopback(runs) -> None:
    for container in runs["dev"].of_type(CONTAINER):
        for port in container.plain_inputs.get("ports", []):
            assert port["ip"] == "127.0.0.1", container.name


def test_self_hosted_prometheus_scrapes_the_nodes_with_the_cluster_ca(runs) -> None:
    prometheus = containers(runs["dev"])["cesar-dev-prometheus"]
    ca = upload(prometheus, "/etc/prometheus/certs/ca.crt")["content"]
    assert ca == runs["dev"].outputs["ca_cert_pem"]
    assert prometheus.plain_inputs["networksAdvanced"][0]["name"] == "cesar-dev-net"


# ------------------------------------------------------------------ cloud (production)
def test_production_is_a_cloud_cluster_with_its_regions_and_allow_list(runs) -> None:
    run, spec = runs["production"], settings_of("production")
    [cluster] = run.of_type("cockroach:index/cluster:Cluster")
    inputs = cluster.plain_inputs
    assert inputs["plan"] == "ADVANCED" and inputs["cloudProvider"] == "GCP"
    assert [r["name"] for r in inputs["regions"]] == list(spec.regions)
    # ADVANCED: the provider refuses `primary` on any region, even false (the database's
    # primary region is the bootstrap's ALTER DATABASE ... SET PRIMARY REGION).
    assert all(r.get("primary") is None for r in inputs["regions"])
    assert inputs["cockroachVersion"] == cockroach.PINNED_SERIES
    assert {r["nodeCount"] for r in inputs["regions"]} == {3}
    assert cluster.protect and inputs["deleteProtection"] is True
    entries = sorted((e.plain_inputs["name"], e.plain_inputs["cidrIp"],
                      e.plain_inputs["cidrMask"], e.plain_inputs["ui"])
                     for e in run.of_type("cockroach:index/allowList:AllowList"))
    assert entries == sorted((e.name, str(e.network.network_address), e.network.prefixlen, e.ui)
                             for e in spec.allowlist)


def test_production_makes_only_the_admin_through_the_cloud_api(runs) -> None:
    """Cloud makes users created through its API SQL admins: the application's logins are made
    by the bootstrap SQL instead, run as that admin from the monitoring host."""
    run = runs["production"]
    [admin] = run.of_type("cockroach:index/sqlUser:SqlUser")
    assert admin.plain_inputs["name"] == "cesar_admin"
    assert offline.is_secret(admin.inputs["password"])
    [database] = run.of_type("cockroach:index/database:Database")
    assert database.plain_inputs["name"] == "cesar"
    bootstrap = run.named("cesar-production-sql-bootstrap")
    [provider] = run.of_type("pulumi:providers:docker")
    assert bootstrap.provider and bootstrap.provider.startswith(provider.urn)
    assert {admin.urn, database.urn} <= set(bootstrap.dependencies)
    sql = upload(bootstrap, "/bootstrap/bootstrap.sql")["content"]
    assert 'GRANT "cesar_app" TO "cesar_app_a"' in sql and "host_based_authentication" not in sql
    assert 'ADD REGION IF NOT EXISTS "europe-west1"' in sql
    url = upload(bootstrap, "/secrets/admin-url")["content"]
    assert url.startswith("postgresql://cesar_admin:") and "sslmode=verify-full" in url


def test_production_prometheus_scrapes_the_cloud_export_with_a_key_file(runs) -> None:
    run = runs["production"]
    prometheus = containers(run)["cesar-production-prometheus"]
    config = upload(prometheus, "/etc/prometheus/prometheus.yml")["content"]
    for region, url in _export_targets(run).items():
        assert f"job_name: cockroachdb-{region}" in config
        assert f"metrics_path: {urlsplit(url).path}" in config
    key = upload(prometheus, "/etc/prometheus/secrets/cockroach-cloud-api-key")
    assert key["content"] == "offline-stand-in-cloudMetricsApiKey"
    assert (key["owner"], key["permissions"]) == ("65534", "0400")
    alertmanager = containers(run)["cesar-production-alertmanager"]
    secret = upload(alertmanager, "/etc/alertmanager/secrets/cesar-warning")
    assert secret["content"] == "offline-stand-in-warningReceiverSecret"


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(("stack", "config", "fragment"), [
    ("staging", override("staging", "cesar:cluster", {"insecure": True}),
     "cesar:cluster.insecure is true outside development"),
    ("production", {"cesar:allowlist": json.dumps([{"name": "anyone", "cidr": "0.0.0.0/0"}])},
     "allowlist entry 'anyone' (0.0.0.0/0) opens the cluster to the whole Internet"),
    ("production", {"cesar:allowlist": json.dumps([{"name": "office", "cidr": "198.51.0.0/16"}])},
     "allowlist entry 'office' (198.51.0.0/16) is wider than the limit /24"),
    ("dev", {"cesar:images": json.dumps({"grafana": "grafana/grafana:latest"})},
     "the grafana image 'grafana/grafana:latest' is not pinned"),
    ("staging", override("staging", "cesar:monitoring", {"bindAddress": "0.0.0.0"}),
     "publishes on every interface outside development"),
])
def test_the_program_refuses_unsafe_stacks_before_creating_anything(
        stack: str, config: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        offline.run(stack, config=config)


def test_a_missing_required_secret_is_refused_with_the_command() -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "run `pulumi config set --secret cesar:cloudMetricsApiKey VALUE --stack production`")):
        offline.run("production", secrets={})


def test_a_configured_password_replaces_the_generated_one() -> None:
    run = offline.run("dev", secrets={"cesar:cesarAppBPassword": "rotated-by-invoke"})
    assert urlsplit(run.outputs["connection_urls"]["cesar_app_b"]).password == "rotated-by-invoke"
    assert "cesar-dev-cesar_app_b-password" not in [r.name for r in run.resources]
    assert "cesar-dev-cesar_app_a-password" in [r.name for r in run.resources]


def test_the_active_login_chooses_the_connection_url() -> None:
    run = offline.run("dev", config={"cesar:activeLogin": "cesar_app_b"})
    assert run.outputs["active_login"] == "cesar_app_b"
    assert run.outputs["connection_url"] == run.outputs["connection_urls"]["cesar_app_b"]


def test_an_insecure_dev_cluster_has_no_certificates_and_no_passwords() -> None:
    run = offline.run("dev", config=override("dev", "cesar:cluster", {"insecure": True}))
    assert not run.of_type("tls:index/privateKey:PrivateKey")
    node = run.named("cesar-dev-roach-1").plain_inputs
    assert "--insecure" in node["command"] and node.get("uploads", []) == []
    sql = upload(run.named("cesar-dev-roach-init"), "/bootstrap/bootstrap.sql")["content"]
    assert "PASSWORD" not in sql and "CLUSTER SETTING" not in sql
    assert "sslmode=disable" in run.outputs["connection_url"]


def test_main_turns_a_refusal_into_one_line_without_a_traceback(monkeypatch) -> None:
    def refuse() -> None:
        raise ConfigError("cesar:cluster.insecure is true outside development")

    monkeypatch.setattr(program, "define_stack", refuse)
    with pytest.raises(pulumi.RunError) as caught:
        program.main()
    assert str(caught.value) == ("cesar: error: cesar:cluster.insecure is true outside "
                                 "development")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_settings_keys_cover_every_stack_file_key() -> None:
    known = {f"cesar:{k}" for k in stack_settings.KEYS}
    for stack in STACKS:
        assert set(offline.stack_config(stack)) <= known, stack


@pytest.mark.parametrize(("stack", "container"), [
    ("dev", "cesar-dev-roach-init"), ("production", "cesar-production-sql-bootstrap")])
def test_a_failed_bootstrap_fails_the_update_in_one_line(stack: str, container: str) -> None:
    """The Docker provider records a one-shot container's exit code without failing; the
    program does, as a RunError (no traceback) naming the container and the next step."""
    assert offline.run(stack, exit_codes={container: 0}).outputs
    with pytest.raises(selfhosted.OneShotFailed) as caught:
        offline.run(stack, exit_codes={container: 1})
    assert isinstance(caught.value, pulumi.RunError)
    assert str(caught.value).startswith(f"the one-shot container {container} exited with code 1")
    assert f"docker logs {container}" in str(caught.value)


@pytest.mark.parametrize("stack", ["dev", "production"])
def test_prometheus_scrapes_the_api_with_a_secret_credential(runs, stack: str) -> None:
    """The API's /metrics needs a credential: Prometheus reads it from a secret file, and the
    same value is a secret output for the hosts' CESAR_API_METRICS_TOKEN."""
    run = runs[stack]
    prometheus = containers(run)[f"cesar-{stack}-prometheus"]
    config = yaml.safe_load(upload(prometheus, "/etc/prometheus/prometheus.yml")["content"])
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "cesar-api")
    assert job["authorization"] == {"type": "Bearer",
                                    "credentials_file": "secrets/cesar-api-metrics-token"}
    token = upload(prometheus, "/etc/prometheus/secrets/cesar-api-metrics-token")
    assert (token["owner"], token["permissions"]) == ("65534", "0400")
    assert len(token["content"]) >= 32
    assert token["content"] not in upload(prometheus, "/etc/prometheus/prometheus.yml")["content"]
