"""Coalesced ``/agents`` reads (cesar/api/aio.py, Coalescer) never answer from a query that
began before the request: under a steady stream of concurrent readers, every read sent after a
write was acknowledged contains it, and a reader that goes away does not fail the others."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import httpx
import psycopg

from cesar.api import aio
from tests.api.helpers import serve, settings_for


def test_a_read_sent_after_a_write_sees_it_while_others_read(migrated_db: str,
                                                            tmp_path: Path) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        agent_id = conn.execute("SELECT id FROM agents ORDER BY name LIMIT 1").fetchone()[0]  # type: ignore[index]
    stop = threading.Event()
    failures: list[str] = []
    with serve(settings_for(migrated_db, tmp_path, pool_max_size=4)) as server:
        reads = server.server.config.app.state.reads  # type: ignore[attr-defined]
        assert isinstance(reads, aio.AsyncReads) and reads.coalesce

        def reader() -> None:
            with httpx.Client(headers=server.headers, timeout=10) as client:
                while not stop.is_set():
                    if client.get(f"{server.url}/agents").status_code != 200:
                        failures.append("a concurrent read failed")

        threads = [threading.Thread(target=reader, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            with psycopg.connect(migrated_db, autocommit=True) as conn, \
                    httpx.Client(headers=server.headers, timeout=10) as client:
                for i in range(80):
                    alias = f"alias-{uuid.uuid4().hex[:8]}"
                    conn.execute("UPDATE agents SET mob_alias = %s WHERE id = %s",
                                 (alias, agent_id))
                    page = client.get(f"{server.url}/agents").json()
                    one = client.get(f"{server.url}/agents/{agent_id}").json()
                    seen = {a["mob_alias"] for a in page["items"] if a["id"] == str(agent_id)}
                    assert seen == {alias}, f"write {i}: the page answered {seen}"
                    assert one["mob_alias"] == alias, f"write {i}: /agents/id answered {one}"
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
    assert not failures


def test_a_reader_that_goes_away_leaves_the_shared_query_to_the_others() -> None:
    """Cancelled while waiting (a client gone), the reader's batch still answers the rest."""

    async def scenario() -> None:
        coalescer = aio.Coalescer()
        started = asyncio.Event()
        release = asyncio.Event()
        queries = 0

        async def read() -> str:
            nonlocal queries
            queries += 1
            started.set()
            await release.wait()
            return f"answer {queries}"

        first = asyncio.ensure_future(coalescer.run("k", read))
        await started.wait()  # the first query is running: the next three form one batch
        later = [asyncio.ensure_future(coalescer.run("k", read)) for _ in range(3)]
        await asyncio.sleep(0)
        later[0].cancel()
        release.set()
        assert await first == "answer 1"
        assert await asyncio.gather(*later[1:]) == ["answer 2", "answer 2"]
        assert later[0].cancelled() and queries == 2

    # A loop of its own, not asyncio.run(): that leaves the main thread's policy with no
    # current loop, and later tests (Pulumi's mocks) ask for one.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
