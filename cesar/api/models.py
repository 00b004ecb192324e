"""Response bodies of the API. They are the OpenAPI document's schemas, so keep them exact."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from cesar.sync.health import SyncHealth  # components.sync

Engine = Literal["cockroachdb", "postgresql"]


class Error(BaseModel):
    """Every 4xx/5xx answer except 422 (FastAPI's validation body)."""

    detail: str = Field(description="What went wrong, for a human.")


class Agent(BaseModel):
    id: uuid.UUID
    name: str
    mob_alias: str
    role: str
    status: Literal["active", "paused", "retired"]
    created_at: dt.datetime
    updated_at: dt.datetime


class AgentPage(BaseModel):
    """One page of agents, ordered by name (then id)."""

    items: list[Agent]
    total: int = Field(description="Agents in the table, all pages together.")
    limit: int
    offset: int
    next_offset: int | None = Field(
        description="The `offset` of the next page; null on the last page."
    )


class Connection(BaseModel):
    """Whether a pool of the service reached its database, and how fast."""

    endpoint: Literal["local", "cluster", "read-replica"] = Field(
        description="Which configured URL: local (LOCAL_DB_URL), cluster (COCKROACH_DB_URL), "
        "read-replica (COCKROACH_READ_REPLICA_URL)."
    )
    reachable: bool
    latency_ms: float | None = Field(description="Round trip of `SELECT 1`, when reachable.")
    error: str | None = Field(description="Why it is unreachable, when it is.")


class Pool(BaseModel):
    """The serving pool's figures (psycopg_pool)."""

    size: int = Field(description="Connections held or being opened.")
    available: int = Field(description="Idle connections ready to use.")
    waiting: int = Field(description="Requests waiting for a connection.")
    min: int
    max: int


class Migrations(BaseModel):
    applied: int
    total: int
    failed: int
    pending: int


class Components(BaseModel):
    database: Engine | None = Field(
        description="The engine serving queries, as the server reports it (`SELECT version()`); "
        "null until it has answered once."
    )
    connection: Connection
    read_replica: Connection | None = Field(
        description="Present when COCKROACH_READ_REPLICA_URL serves the reads."
    )
    pool: Pool
    migrations: Migrations | None = Field(
        description="From schema_migrations; null when the database could not be read."
    )
    sync: SyncHealth | None = Field(
        None, description="From sync_state (cesar/sync/health.py): lag per table and direction; "
        "null when the database could not be read."
    )


class Health(BaseModel):
    """200 while the database answers, 503 (same body) when it does not."""

    status: Literal["ok", "degraded"] = Field(
        description="`ok` when every component is healthy; `degraded` names why in `problems`."
    )
    environment: Literal["development", "staging", "production"]
    version: str
    components: Components
    problems: list[str] = Field(description="One line per unhealthy component; empty when ok.")


class PublicComponents(BaseModel):
    database: Engine | None = Field(
        description="The engine serving queries (`SELECT version()`); null until it has answered."
    )


class PublicHealth(BaseModel):
    """What /health shows a caller without a key that has `health:detail`: only the status and
    the engine. The details (connection, pool, migrations, sync lag, problems) need the scope."""

    status: Literal["ok", "degraded"]
    components: PublicComponents


class Liveness(BaseModel):
    status: Literal["alive"]
