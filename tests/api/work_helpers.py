"""Helpers of the work routes' tests (/tasks, /runs, /dispatch): HTTP calls with a key, and
direct reads of the database the API serves."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row


def call(url: str, key: str, method: str, path: str, json: Any = None,
         headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=json, timeout=30,
                         headers={"Authorization": f"Bearer {key}", **(headers or {})},
                         **kwargs)


def rows(db_url: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn, \
            conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def active_agents(db_url: str) -> list[str]:
    return [str(r["id"]) for r in rows(db_url, "SELECT id FROM agents WHERE status = 'active' "
                                               "ORDER BY name")]
