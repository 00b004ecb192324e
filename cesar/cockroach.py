"""The CockroachDB release this project runs on, and what it needs from the server.

One place for the pin: the dev and staging image (``infra/images.py``), the Cloud cluster's
version (``infra/settings.py``, whose default the production stack uses), ``cesar doctor``,
the smoke check's engine line and docs/cockroachdb.md all read it from here.

Why v25.4: it is the newest *Regular* CockroachDB release with Long-Term Support. v25.4.10 is
its first LTS patch (cockroachdb/docs#23275, 2026-05-07), so self-hosted clusters get a year of
maintenance from then, and assistance support after it (what Cloud offers is its own policy:
docs/cockroachdb.md). It is the first supported release with everything the project relies on:
the trigger catalog ``pg_catalog.pg_trigger``, which the sync's start-up check reads, is
populated since v25.3 (cockroachdb/cockroach#147248), and v25.3 is an Innovation release whose
six months of support are over. v24.3, the previous pin, is out of support (Cloud Advanced
since 2026-05-05, self-hosted v24.3.5 since 2026-05-18, per CockroachDB's versions table). The
next major the code is written for is v26.1, whose changed defaults (``allow_unsafe_internals``
off, new tables schema-locked) are handled where they matter (docs/cockroachdb.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cesar.db import engines

#: The release, as the Docker image tag and the name the docs use.
PINNED_RELEASE = "v25.4.10"
#: Its major series: what CockroachDB Cloud takes as ``cockroach_version``.
PINNED_SERIES = "v25.4"
#: The Docker image every self-hosted stack runs.
IMAGE = f"cockroachdb/cockroach:{PINNED_RELEASE}"
#: The next major release the code already handles (its default changes included).
NEXT_MAJOR = "v26.1"
#: The series a cluster may be upgraded to the pin from: a major upgrade goes from one Regular
#: release to the next, optionally through the Innovation release between them (v25.2, a
#: Regular release, or v25.3, an Innovation one, to v25.4). A v24.3 cluster goes to v25.2 and
#: is finalized first (cockroachdb/docs#20877).
UPGRADE_FROM = ("v25.2", "v25.3")
#: Where the support dates come from.
SUPPORT_SOURCE = "https://www.cockroachlabs.com/docs/releases/release-support-policy"
LTS_SOURCE = "https://github.com/cockroachdb/docs/pull/23275"

_CRDB = re.compile(r"^CockroachDB(?: (?:CCL|OSS))? v(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.]+))?")
_PG = re.compile(r"^PostgreSQL (\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int = 0
    # A testing release (v26.1.0-beta.2) sorts with its final release: what it supports is
    # judged by the series it belongs to.
    suffix: str = ""

    def __str__(self) -> str:
        text = f"v{self.major}.{self.minor}.{self.patch}"
        return f"{text}-{self.suffix}" if self.suffix else text

    @property
    def series(self) -> str:
        return f"v{self.major}.{self.minor}"

    def at_least(self, other: Version) -> bool:
        return (self.major, self.minor, self.patch) >= (other.major, other.minor, other.patch)

    @classmethod
    def parse(cls, text: str) -> Version:
        """``v25.4.10``, ``25.4`` or ``v25.4``; ValueError otherwise."""
        m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
        if not m:
            raise ValueError(f"not a CockroachDB version: {text!r} (expected e.g. v25.4.10)")
        return cls(int(m[1]), int(m[2]), int(m[3] or 0))


MINIMUM = Version.parse(PINNED_SERIES)  # the oldest release `cesar doctor` accepts


@dataclass(frozen=True)
class ServerVersion:
    """What ``SELECT version()`` says: the engine and, when it can be read, its release."""

    engine: engines.EngineName
    version: Version | None
    text: str

    @property
    def traits(self) -> engines.Engine:
        """The engine object this server's facts come from."""
        return engines.named(self.engine)

    @property
    def version_text(self) -> str | None:
        """``v25.4.10`` on CockroachDB, ``16.2`` on PostgreSQL."""
        if self.version is None:
            return None
        if self.traits.full_release:
            return str(self.version)
        return f"{self.version.major}.{self.version.minor}"

    @property
    def short(self) -> str:
        label = self.traits.label
        if self.traits.full_release:
            return f"{label} {self.version}" if self.version else f"{label} (unknown)"
        return self.text.split(" on ")[0].split(",")[0] or label


def parse_server_version(text: str) -> ServerVersion:
    """Parse the server's ``version()``.

    CockroachDB answers e.g. ``CockroachDB CCL v25.4.10 (x86_64-pc-linux-gnu, built
    2026/05/06 ..., go1.23.12 X:nocoverageredesign)`` (``OSS`` on builds without enterprise
    code, nothing between the name and the version on some Cloud builds); PostgreSQL
    ``PostgreSQL 16.4 on x86_64-pc-linux-gnu, compiled by ...`` or ``PostgreSQL 15.8 (Debian
    15.8-0+deb12u1) on ...``. Anything that does not start with ``CockroachDB`` is treated as
    PostgreSQL (its wire protocol is the only one spoken here).
    """
    text = text.strip()
    m = _CRDB.match(text)
    if m:
        return ServerVersion(engines.COCKROACHDB.name,
                             Version(int(m[1]), int(m[2]), int(m[3]), m[4] or ""), text)
    if text.startswith("CockroachDB"):
        return ServerVersion(engines.COCKROACHDB.name, None, text)
    m = _PG.match(text)
    version = Version(int(m[1]), int(m[2] or 0)) if m else None
    return ServerVersion(engines.POSTGRESQL.name, version, text)
