"""The state store's commit against a real Redis: states, offsets and serving records in one MULTI/EXEC, one round
trip (no SCRIPT EXISTS before it), and a serving record never replaced by an older one."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from kairos.agents.redis_store import RedisStateStore
from kairos.engine.store import Commit, ServingRecord
from kairos.schemas.keys import RedisKeys

pytestmark = pytest.mark.integration


async def _calls(client: aioredis.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in (await client.info("commandstats")).items()}


def test_a_commit_is_one_transaction_and_serving_records_compare_and_set(redis_url):
    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        store = RedisStateStore(client, RedisKeys(f"t{uuid.uuid4().hex[:8]}", "g"), serving_ttl_s=60)
        try:
            before = await _calls(client)
            for n, (ts, seq, payload) in enumerate([(10.0, 1, b'{"r": 1}'), (12.0, 2, b'{"r": 2}'), (11.0, 3, b'{"r": 3}')]):
                await store.commit(Commit(partition=0, users={"u": b"state-%d" % n}, deleted=(), offsets={"clicks": n + 1},
                                          serving=[ServingRecord("u", ts, seq, payload)]))  # fmt: skip
            after = await _calls(client)
            snapshot = await store.load(0, with_users=True)
            served = await store.serving_record("u")
            return before, after, snapshot, served, store.stale_writes
        finally:
            await client.aclose()

    before, after, snapshot, served, stale = asyncio.run(scenario())
    grew = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    assert grew.get("cmdstat_exec") == 3 and grew.get("cmdstat_multi") == 3
    assert "cmdstat_script|exists" not in grew and "cmdstat_script" not in grew  # no extra round trip per commit
    assert snapshot.users == {"u": b"state-2"} and snapshot.offsets == {"clicks": 3}
    assert served == {"ts": 12.0, "seq": 2, "rec": {"r": 2}}  # the late, older record lost
    assert stale == 1
