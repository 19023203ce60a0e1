"""The worker's global checkpoints built in forked children (agents/snapshot.py), with a real broker and Redis: every
checkpoint Redis holds reflects exactly the offsets stored with it, while events keep arriving (the parent goes on
changing the state the child serialises), so the replay after a crash starts from the right records."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from factories import T0, click

from kairos.agents import snapshot as snapshot_module
from kairos.agents.runtime import Services, running_app, wait_for
from kairos.agents.topics_admin import ensure_topics
from kairos.schemas.codec import encode

from agents_helpers import state_store

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_checkpoints_built_in_children_match_their_offsets(make_settings, broker, redis_url, tmp_path, monkeypatch):
    (tmp_path / "no-data").mkdir()
    (tmp_path / "no-models").mkdir()
    settings = make_settings(redis_url=redis_url, global_checkpoint_interval_s=0.3, data_dir=tmp_path / "no-data",
                             model_dir=tmp_path / "no-models")  # fmt: skip
    started = []
    original = snapshot_module.ChildSnapshot.start.__func__

    def counting_start(cls, *args, **kwargs):
        snapshot = original(cls, *args, **kwargs)
        started.append(snapshot)
        return snapshot

    monkeypatch.setattr(snapshot_module.ChildSnapshot, "start", classmethod(counting_start))
    events = [click(user=f"u{n % 23}", item=f"c{n % 5}-i{n % 41}", category=f"c{n % 5}", ts=T0 + n) for n in range(1500)]

    async def scenario() -> list[tuple[int, int]]:
        await ensure_topics(settings, broker)
        store = state_store(settings)
        seen: list[tuple[int, int]] = []  # (events in the blob, records below its offsets), per checkpoint read

        async def read_checkpoints() -> None:
            for partition in range(settings.partitions):
                stored = await store.load(partition, with_users=False)
                if stored.global_blob:
                    blob_events = orjson.loads(stored.global_blob)["model"]["events"]
                    seen.append((blob_events, sum(stored.global_offsets.values())))

        async with running_app(settings, Services(broker, redis_url, False, False), roles=frozenset({"ingest"})) as app:
            worker = app.ingest_worker
            producer = AIOKafkaProducer(bootstrap_servers=broker)
            await producer.start()
            # A steady stream (~4 s, many checkpoint intervals): batches keep coming while children serialise.
            for first in range(0, len(events), 15):
                for event in events[first : first + 15]:
                    await producer.send(settings.topics.clicks, encode(event), key=event.user_id.encode())
                await producer.flush()
                if first % 150 == 0:
                    await read_checkpoints()
                await asyncio.sleep(0.04)
            await producer.stop()
            assert await wait_for(lambda: worker.stats["events"] >= len(events), 60)
            await asyncio.sleep(1.0)  # the last children finish and their checkpoints are committed
            await read_checkpoints()
            assert worker.checkpoint_in_child, "a child failed and the worker fell back to in-process checkpoints"
        await store.close()
        return seen

    seen = asyncio.run(scenario())
    assert len(started) >= 4, f"only {len(started)} checkpoints were built in children"
    assert all(snapshot.exit_code == 0 for snapshot in started if snapshot.ready)
    # Every click is a new event of the global model: a checkpoint holds as many as the records below its offsets.
    assert [events for events, _ in seen] == [records for _, records in seen]
    assert max(records for _, records in seen) > len(events) // 4
