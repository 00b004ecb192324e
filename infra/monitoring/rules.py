"""Prometheus alerting and recording rules: plain YAML files in ``rules/``, deployed as written.

The files beside this module are what Prometheus loads and what ``tests/infra/promtool`` tests
(``promtool test rules`` on the files as shipped). This module only reads them and fills the one
real per-stack parameter: the node count in ``CockroachDBNodeNotLive`` (left out where liveness
is not exported, ``expected_nodes == 0``: serverless). Thresholds are the same on every stack and
live in the YAML only; the few other code needs (the Grafana threshold lines) are read from it.

In the style of CockroachDB's own ``monitoring/rules``: one group per concern, ``job`` in every
selector, recording rules for the ratios the alerts use, every alert with a ``severity`` label
(``critical`` pages, ``warning`` goes to chat) and ``summary``/``description`` annotations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).parent / "rules"
SEVERITIES = ("critical", "warning")
FILES = ("cesar.rules.yml", "cockroachdb.rules.yml", "dbauth.rules.yml")

NODE_ALERT = "CockroachDBNodeNotLive"
SHIPPED_NODES = 3  # the node count written in the shipped cockroachdb.rules.yml


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert {self.name}: severity must be one of {SEVERITIES}")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_:
            out["for"] = self.for_
        out["labels"] = {"severity": self.severity}
        out["annotations"] = {"summary": self.summary, "description": self.description}
        return out


@dataclass(frozen=True)
class Record:
    record: str
    expr: str

    def as_dict(self) -> dict[str, Any]:
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Alert | Record, ...]

    def alerts(self) -> list[Alert]:
        return [r for r in self.rules if isinstance(r, Alert)]

    def records(self) -> list[Record]:
        return [r for r in self.rules if isinstance(r, Record)]


def _rule(raw: dict[str, Any]) -> Alert | Record:
    if "record" in raw:
        return Record(raw["record"], raw["expr"])
    return Alert(raw["alert"], raw["expr"], raw["labels"]["severity"],
                 raw["annotations"]["summary"], raw["annotations"]["description"],
                 raw.get("for"))


@cache
def shipped(file: str) -> Group:
    """The one group of a shipped rule file, as written."""
    (group,) = yaml.safe_load((RULES_DIR / file).read_text())["groups"]
    return Group(group["name"], tuple(_rule(r) for r in group["rules"]))


def _alert(file: str, name: str) -> Alert:
    (alert,) = [a for a in shipped(file).alerts() if a.name == name]
    return alert


def threshold(file: str, name: str) -> int:
    """The number an alert's expression compares against (``... > 600``)."""
    found = re.search(r"[<>]=?\s*(\d+)\s*$", _alert(file, name).expr)
    if not found:
        raise ValueError(f"{file}: alert {name} does not end in a comparison with a number")
    return int(found.group(1))


# Read by the Grafana dashboard for its threshold lines.
SYNC_LAG_SECONDS = threshold("cesar.rules.yml", "DatabaseSyncLag")
CONNECTION_ERRORS_IN_5M = threshold("cesar.rules.yml", "CockroachDBConnectionFailure")


def application_group() -> Group:
    return shipped("cesar.rules.yml")


def _with_nodes(alert: Alert, expected_nodes: int) -> Alert:
    shipped_count = re.compile(rf"\b{SHIPPED_NODES}\b")
    expr = re.sub(rf"<\s*{SHIPPED_NODES}$", f"< {expected_nodes}", alert.expr)
    summary = shipped_count.sub(str(expected_nodes), alert.summary)
    description = shipped_count.sub(str(expected_nodes), alert.description)
    if expr == alert.expr and expected_nodes != SHIPPED_NODES:
        raise ValueError(f"{NODE_ALERT} no longer ends in '< {SHIPPED_NODES}': update "
                         "SHIPPED_NODES in infra/monitoring/rules.py to the shipped file")
    return Alert(alert.name, expr, alert.severity, summary, description, alert.for_)


def cockroachdb_group(expected_nodes: int) -> Group:
    """CockroachDB's essentials. ``expected_nodes`` is the cluster's node count (0: serverless,
    where liveness is not exported and the node alert is left out)."""
    group = shipped("cockroachdb.rules.yml")
    rules: list[Alert | Record] = []
    for rule in group.rules:
        if isinstance(rule, Alert) and rule.name == NODE_ALERT:
            if expected_nodes <= 0:
                continue
            rule = _with_nodes(rule, expected_nodes)
        rules.append(rule)
    return Group(group.name, tuple(rules))


def groups(expected_nodes: int) -> list[Group]:
    return [application_group(), cockroachdb_group(expected_nodes), shipped("dbauth.rules.yml")]


def render(group: Group) -> str:
    """One rule file (``promtool check rules`` format)."""
    doc = {"groups": [{"name": group.name, "rules": [r.as_dict() for r in group.rules]}]}
    return yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def file_name(group: Group) -> str:
    return f"{group.name.split('.')[0]}.rules.yml"
