"""The backup figures as Prometheus metrics: written by the timers, served by the API, named as
the alert rules expect (infra/monitoring/metrics.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cesar import metrics
from cesar.backup import base, status
from infra.monitoring import metrics as catalog
from tests.backup.helpers import BackupStack


def test_status_metrics_are_served_by_the_api_and_known_to_the_rules(
    bk: BackupStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base.take(bk.server)
    path = tmp_path / "cesar_backup.prom"
    status.write_metrics(status.collect(bk.server), path)
    monkeypatch.setenv(metrics.BACKUP_METRICS_ENV, str(path))
    served = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    backup = {n for n in served if n.startswith("cesar_backup_")}
    assert "cesar_backup_last_success_timestamp_seconds" in backup
    assert "cesar_backup_archive_failing" in backup
    known = {m.name for m in catalog.APPLICATION if m.source == "backup"}
    assert backup <= known
    newest = base.backups(bk.server.repo)[-1]
    sample = served["cesar_backup_last_success_timestamp_seconds"].samples[0].value
    assert abs(sample - newest.finished.timestamp()) < 1
    assert served["cesar_backup_archive_failing"].samples[0].value == 0


def test_no_file_no_backup_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(metrics.BACKUP_METRICS_ENV, str(tmp_path / "absent.prom"))
    assert b"cesar_backup_" not in metrics.render()
