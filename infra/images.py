"""Container images: every one pinned to a version, refused otherwise.

``latest`` (or no tag at all, which means ``latest``) changes under a running stack without a
diff in Pulumi; a floating tag such as ``v24`` or ``11.2`` does the same more slowly. Only a full
``MAJOR.MINOR.PATCH`` tag (optionally with a suffix, ``v24.3.5``, ``11.2.0-ubuntu``) or a
``@sha256:`` digest is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from cesar import cockroach
from cesar.errors import ConfigError

# The versions this repository was written and checked against (docs/infra.md says what was
# verified). CockroachDB's release is pinned once, in cesar/cockroach.py (why that one: there);
# the others change here, or per stack with `cesar:images`.
COCKROACH = cockroach.IMAGE
PROMETHEUS = "prom/prometheus:v2.53.2"
ALERTMANAGER = "prom/alertmanager:v0.27.0"
GRAFANA = "grafana/grafana:11.2.0"

_VERSION_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-+._][0-9A-Za-z.+_-]+)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def split(image: str) -> tuple[str, str | None, str | None]:
    """``(repository, tag, digest)`` of an image reference."""
    ref, _, digest = image.partition("@")
    last = ref.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:  # a ':' in the last path segment is a tag; one before it is a registry port
        ref, tag = ref.rsplit(":", 1)
    return ref, tag, digest or None


def require_pinned(image: str, what: str) -> str:
    """Return ``image`` if it is pinned to a version or a digest; raise ConfigError otherwise."""
    image = image.strip()
    repository, tag, digest = split(image)
    if not repository:
        raise ConfigError(f"the {what} image {image!r} names no repository")
    if digest is not None:
        if not _DIGEST.match(digest):
            raise ConfigError(f"the {what} image {image!r} has a malformed digest; "
                              "use @sha256: followed by 64 hex digits")
        return image
    if tag is None or tag == "latest":
        raise ConfigError(f"the {what} image {image!r} is not pinned (it means ':latest'); "
                          f"pin a version, e.g. {repository}:{_example(what)}")
    if not _VERSION_TAG.match(tag):
        raise ConfigError(f"the {what} image {image!r} uses the floating tag {tag!r}; pin a full "
                          f"MAJOR.MINOR.PATCH version, e.g. {repository}:{_example(what)}")
    return image


def _example(what: str) -> str:
    return {"cockroach": split(COCKROACH)[1], "prometheus": split(PROMETHEUS)[1],
            "alertmanager": split(ALERTMANAGER)[1], "grafana": split(GRAFANA)[1]}.get(
                what, "1.2.3") or "1.2.3"


def _require_supported_cockroach(image: str) -> None:
    """A CockroachDB image older than the oldest supported release is refused (a digest is
    taken on trust: it names no version)."""
    tag = split(image)[1]
    if tag is None:
        return
    try:
        version = cockroach.Version.parse(tag.split("-")[0])
    except ValueError:
        return
    if not version.at_least(cockroach.MINIMUM):
        raise ConfigError(f"the cockroach image {image!r} is older than "
                          f"{cockroach.MINIMUM.series}, the oldest release this project "
                          f"supports; use {cockroach.IMAGE} (docs/cockroachdb.md)")


@dataclass(frozen=True)
class Images:
    """The images a stack runs, each checked by :func:`require_pinned`."""

    cockroach: str = COCKROACH
    prometheus: str = PROMETHEUS
    alertmanager: str = ALERTMANAGER
    grafana: str = GRAFANA

    def __post_init__(self) -> None:
        for f in fields(self):
            require_pinned(getattr(self, f.name), f.name)
        _require_supported_cockroach(self.cockroach)

    @classmethod
    def from_config(cls, overrides: Mapping[str, str] | None) -> Images:
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"cesar:images has unknown key(s) {unknown}; known: {sorted(known)}")
        return replace(cls(), **{k: str(v) for k, v in overrides.items()})
