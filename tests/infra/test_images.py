"""infra.images: every image pinned to a full version or a digest."""

from __future__ import annotations

import pytest

from cesar import cockroach
from cesar.errors import ConfigError
from infra import images


@pytest.mark.parametrize("image", [
    "cockroachdb/cockroach:v24.3.5",
    "prom/prometheus:v2.53.2",
    "grafana/grafana:11.2.0",
    "grafana/grafana:11.2.0-ubuntu",
    "registry.example:5000/team/cockroach:v24.3.5",
    "prom/alertmanager@sha256:" + "a" * 64,
    "prom/alertmanager:v0.27.0@sha256:" + "b" * 64,
])
def test_pinned_images_are_accepted(image: str) -> None:
    assert images.require_pinned(image, "cockroach") == image


@pytest.mark.parametrize(("image", "fragment"), [
    ("cockroachdb/cockroach", "not pinned"),
    ("cockroachdb/cockroach:latest", "not pinned"),
    ("registry.example:5000/cockroach", "not pinned"),
    ("cockroachdb/cockroach:v24", "floating tag 'v24'"),
    ("cockroachdb/cockroach:v24.3", "floating tag 'v24.3'"),
    ("grafana/grafana:main", "floating tag 'main'"),
    ("prom/prometheus@sha256:abc", "malformed digest"),
])
def test_unpinned_images_are_refused_with_an_example(image: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as caught:
        images.require_pinned(image, "cockroach")
    assert cockroach.PINNED_RELEASE in str(caught.value) or "digest" in str(caught.value)


def test_the_defaults_are_pinned_and_overrides_are_checked() -> None:
    defaults = images.Images()
    assert all(":latest" not in ref for ref in vars(defaults).values())
    assert images.Images.from_config({"grafana": "grafana/grafana:11.3.1"}).grafana == \
        "grafana/grafana:11.3.1"
    with pytest.raises(ConfigError, match="grafana image 'grafana/grafana:latest'"):
        images.Images.from_config({"grafana": "grafana/grafana:latest"})
    with pytest.raises(ConfigError, match="unknown key"):
        images.Images.from_config({"postgres": "postgres:16.4"})
