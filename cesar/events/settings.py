"""``CESAR_EVENTS_*``: how the API feeds ``/events``, read like the rest of the configuration
(process environment, then ``.env.cockroach``, then ``.env``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cesar.config import ENV_FILES, load


class EventSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CESAR_EVENTS_", env_file=ENV_FILES,
                                      env_file_encoding="utf-8", extra="ignore", frozen=True)

    source: Literal["notify", "poll"] = Field(
        "notify", description="CESAR_EVENTS_SOURCE: `notify` (PostgreSQL LISTEN/NOTIFY wakes "
        "the reader; CockroachDB always polls) or `poll` (read the log every poll_seconds)")
    poll_seconds: float = Field(
        0.25, ge=0.01, le=60, description="CESAR_EVENTS_POLL_SECONDS: the poll interval (and, "
        "with notify, how soon a gap waiting on an open transaction is looked at again)")
    idle_seconds: float = Field(
        2.0, ge=0.05, le=60, description="CESAR_EVENTS_IDLE_SECONDS: with notify, the longest "
        "wait without a notification before reading the log anyway")
    heartbeat_seconds: float = Field(
        15.0, ge=0.05, le=300, description="CESAR_EVENTS_HEARTBEAT_SECONDS: a ping on an idle "
        "stream this often, so proxies keep it open")
    queue_size: int = Field(
        1000, ge=1, le=1_000_000, description="CESAR_EVENTS_QUEUE_SIZE: events waiting for one "
        "client; a client further behind is dropped (it resumes with its last id)")
    retention_hours: float = Field(
        24.0, gt=0, le=24 * 366, description="CESAR_EVENTS_RETENTION_HOURS: events older are "
        "pruned; resuming from before them means a reset")
    prune_seconds: float = Field(
        300.0, ge=0, le=86_400, description="CESAR_EVENTS_PRUNE_SECONDS: how often the API "
        "prunes (0: never; `cesar events prune` does it on demand)")
    gap_seconds: float = Field(
        30.0, gt=0, le=3600, description="CESAR_EVENTS_GAP_SECONDS: CockroachDB only: how long "
        "a missing id may still commit; must exceed the longest writing transaction")


def load_event_settings(**overrides: object) -> EventSettings:
    return load(EventSettings, **overrides)
