"""The CockroachDB release, the Cloud cluster's regions, the dev nodes' memory and the license,
through the Pulumi program under mocks (``infra.offline``) and the pure settings."""

from __future__ import annotations

import json
import re

import pulumi
import pytest

from cesar import cockroach
from cesar.errors import ConfigError
from infra import images, offline
from infra import settings as stack_settings
from tests.helpers import REPO
from tests.infra.helpers import CONTAINER, STACKS, image_of, settings_of, upload

CLUSTER = "cockroach:index/cluster:Cluster"
BOOTSTRAP = "/bootstrap/bootstrap.sql"


def _override(stack: str, key: str, changes: dict[str, object]) -> dict[str, str]:
    current = offline.decode_value(offline.stack_config(stack)[key])
    return {key: json.dumps({**current, **changes})}


def _nodes(run: offline.OfflineRun, stack: str) -> list[offline.Registered]:
    return [c for c in run.of_type(CONTAINER) if re.fullmatch(rf"cesar-{stack}-roach-\d", c.name)]


# ------------------------------------------------------------------ the pin, in one place
def test_the_pin_is_a_supported_release_at_least_v25_4() -> None:
    pinned = cockroach.Version.parse(cockroach.PINNED_RELEASE)
    assert pinned.at_least(cockroach.Version(25, 4)) and pinned.series == cockroach.PINNED_SERIES
    assert cockroach.Version.parse(cockroach.PINNED_SERIES) == cockroach.MINIMUM
    assert cockroach.IMAGE.endswith(":" + cockroach.PINNED_RELEASE)


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_runs_the_pinned_release(runs, stack: str) -> None:
    run = runs[stack]
    if settings_of(stack).self_hosted is not None:
        for node in _nodes(run, stack):
            assert image_of(run, node) == cockroach.IMAGE
    else:
        [cluster] = run.of_type(CLUSTER)
        assert cluster.plain_inputs["cockroachVersion"] == cockroach.PINNED_SERIES
        bootstrap = run.named(f"cesar-{stack}-sql-bootstrap")
        assert image_of(run, bootstrap) == cockroach.IMAGE  # its `cockroach sql` client


def test_no_other_file_pins_a_cockroachdb_release() -> None:
    """The stack files, the program and the docs name the release only through the pin."""
    version = re.compile(r"cockroach(?:db/cockroach)?:v\d+\.\d+|version: v\d+\.\d+")
    page = REPO / "docs" / "cockroachdb.md"  # the one page that names it, read below
    for path in [*REPO.glob("Pulumi.*.yaml"), *REPO.glob("infra/*.py"), *REPO.glob("docs/*.md"),
                 REPO / "README.md"]:
        if path == page:
            continue
        text = path.read_text()
        assert not version.search(text), f"{path.name} pins a CockroachDB release itself"
    text = page.read_text()
    assert cockroach.PINNED_RELEASE in text and cockroach.NEXT_MAJOR in text
    assert f"cockroachdb/cockroach:{cockroach.PINNED_RELEASE}" in text


@pytest.mark.parametrize(("config", "fragment"), [
    ({"cesar:images": json.dumps({"cockroach": "cockroachdb/cockroach:v24.3.5"})},
     "the cockroach image 'cockroachdb/cockroach:v24.3.5' is older than v25.4"),
    ({"cesar:images": json.dumps({"cockroach": "cockroachdb/cockroach:v25.3.7"})},
     "older than v25.4, the oldest release this project supports"),
])
def test_an_older_self_hosted_image_is_refused(config: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        offline.run("dev", config=config)


@pytest.mark.parametrize(("version", "fragment"), [
    ("v24.3", "cesar:cloud.version=v24.3 is older than v25.4"),
    ("v25.3", "cesar:cloud.version=v25.3 is older than v25.4"),
    ("latest", "cesar:cloud.version='latest' is not a CockroachDB major version"),
])
def test_an_older_cloud_version_is_refused(version: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        offline.run("production", config=_override("production", "cesar:cloud",
                                                   {"version": version}))


def test_a_newer_cloud_version_is_accepted() -> None:
    run = offline.run("production", config=_override("production", "cesar:cloud",
                                                     {"version": "v26.2"}))
    [cluster] = run.of_type(CLUSTER)
    assert cluster.plain_inputs["cockroachVersion"] == "v26.2"


# ------------------------------------------------------------------ Cloud regions
def test_an_advanced_cluster_sets_no_primary_region_attribute(runs) -> None:
    [cluster] = runs["production"].of_type(CLUSTER)
    regions = cluster.plain_inputs["regions"]
    assert len(regions) == 3
    assert all("primary" not in r or r["primary"] is None for r in regions)
    sql = upload(runs["production"].named("cesar-production-sql-bootstrap"), BOOTSTRAP)["content"]
    assert 'ALTER DATABASE "cesar" SET PRIMARY REGION "us-east1"' in sql


def test_a_multi_region_standard_cluster_marks_its_first_region_primary() -> None:
    run = offline.run("production", config=_override("production", "cesar:cloud",
                                                     {"plan": "STANDARD"}))
    [cluster] = run.of_type(CLUSTER)
    assert [r.get("primary") for r in cluster.plain_inputs["regions"]] == [True, None, None]


def test_a_standard_cluster_is_given_no_version_and_keeps_automatic_upgrades() -> None:
    # The provider takes cockroach_version on STANDARD only with serverless.upgradeType MANUAL.
    run = offline.run("production", config=_override("production", "cesar:cloud",
                                                     {"plan": "STANDARD"}))
    [cluster] = run.of_type(CLUSTER)
    assert cluster.plain_inputs.get("cockroachVersion") is None
    assert cluster.plain_inputs["serverless"]["upgradeType"] == "AUTOMATIC"
    with pytest.raises(ConfigError, match="cesar:cloud.version applies to ADVANCED clusters"):
        offline.run("production", config=_override("production", "cesar:cloud",
                                                    {"plan": "STANDARD", "version": "v25.4"}))


# ------------------------------------------------------------------ dev memory
def _share(value: str) -> float:
    return float(value[:-1]) / 100 if value.endswith("%") else float(value)


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_nodes_sharing_a_host_claim_at_most_75_percent_of_its_memory(runs, stack: str) -> None:
    total = 0.0
    nodes = _nodes(runs[stack], stack)
    assert len(nodes) == 3
    for node in nodes:
        flags = dict(a.split("=", 1) for a in node.plain_inputs["command"] if "=" in a)
        total += _share(flags["--cache"]) + _share(flags["--max-sql-memory"])
    assert total <= 0.75


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"cache": ".25", "maxSqlMemory": ".25"}, "claims 150% of its memory"),
    ({"cache": "25%"}, "claims 112% of its memory"),
    ({"maxSqlMemory": "lots"}, "maxSqlMemory='lots' is neither a fraction"),
])
def test_memory_flags_over_the_budget_are_refused(changes: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        offline.run("dev", config=_override("dev", "cesar:cluster", changes))


def test_memory_defaults_follow_the_node_count_and_absolute_sizes_pass() -> None:
    assert stack_settings.memory_share(3) == "0.125"
    run = offline.run("dev", config=_override("dev", "cesar:cluster", {"nodes": 5}))
    shares = [_share(dict(a.split("=", 1) for a in n.plain_inputs["command"] if "=" in a)[f])
              for n in _nodes(run, "dev") for f in ("--cache", "--max-sql-memory")]
    assert len(shares) == 10 and sum(shares) <= 0.75
    offline.run("dev", config=_override("dev", "cesar:cluster",
                                        {"cache": "2GiB", "maxSqlMemory": "1GiB"}))


# ------------------------------------------------------------------ license
LICENSE = "crl-0-test-license-not-a-real-key"


def test_staging_without_a_license_is_refused_naming_the_command() -> None:
    secrets = offline.required_secret_stand_ins("staging")
    assert "cesar:cockroachLicense" in secrets
    del secrets["cesar:cockroachLicense"]
    with pytest.raises(ConfigError) as caught:
        offline.run("staging", secrets=secrets)
    message = str(caught.value)
    assert "throttled 7 days after it starts" in message
    assert "pulumi config set --secret cesar:cockroachLicense LICENSE --stack staging" in message


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_a_configured_license_is_set_by_the_bootstrap_inside_a_secret(stack: str) -> None:
    secrets = {**offline.required_secret_stand_ins(stack), "cesar:cockroachLicense": LICENSE}
    run = offline.run(stack, secrets=secrets)
    init = run.named(f"cesar-{stack}-roach-init")
    sql = upload(init, BOOTSTRAP)["content"]
    assert f"SET CLUSTER SETTING enterprise.license = '{LICENSE}';" in sql
    assert offline.is_secret(init.inputs["uploads"])
    assert LICENSE not in json.dumps(run.outputs, default=str)


def test_dev_without_a_license_warns_and_sets_none(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: warnings.append(msg))
    run = offline.run("dev")
    assert len(warnings) == 1 and "cesar:cockroachLicense is not set" in warnings[0]
    assert "throttled 7 days after it starts" in warnings[0]
    sql = upload(run.named("cesar-dev-roach-init"), BOOTSTRAP)["content"]
    assert "enterprise.license" not in sql


def test_cloud_and_single_node_clusters_need_no_license(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: warnings.append(msg))
    assert "cesar:cockroachLicense" not in offline.required_secret_stand_ins("production")
    offline.run("dev", config=_override("dev", "cesar:cluster", {"nodes": 1}))
    assert warnings == []


def test_the_pinned_image_passes_the_image_rules() -> None:
    assert images.Images().cockroach == cockroach.IMAGE


# ------------------------------------------------------------------ one-shot containers' logs
@pytest.mark.parametrize(("stack", "name"), [("dev", "cesar-dev-roach-init"),
                                             ("staging", "cesar-staging-roach-init"),
                                             ("production", "cesar-production-sql-bootstrap")])
def test_a_one_shot_containers_logs_are_a_secret_in_the_state(runs, stack: str,
                                                              name: str) -> None:
    # logs=True keeps the container's output in Pulumi's state; the bootstrap may print the
    # license or a password, so the engine must encrypt that output.
    container = runs[stack].named(name)
    assert container.plain_inputs["logs"] is True
    assert "containerLogs" in container.additional_secret_outputs
