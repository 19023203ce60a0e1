"""The worker's global checkpoints built in forked children (agents/snapshot.py), with a real broker and Redis: every
checkpoint Redis holds reflects exactly the offsets stored with it, while events keep arriving (the parent goes on
changing the state the child serialises), so the replay after a crash starts from the right records; and a child
that fails switches the worker to checkpoints built in-process, which go on matching their offsets."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from factories import T0, click

from kairos.agents import snapshot as snapshot_module
from kairos.agents.runtime import Services, running_app, wait_for
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.partition import PartitionState
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


@pytest.mark.timeout(120)
def test_a_failing_child_switches_the_worker_to_checkpoints_built_in_process(make_settings, broker, redis_url, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    (tmp_path / "no-data").mkdir()
    (tmp_path / "no-models").mkdir()
    settings = make_settings(redis_url=redis_url, global_checkpoint_interval_s=0.3, data_dir=tmp_path / "no-data",
                             model_dir=tmp_path / "no-models")  # fmt: skip
    parent, build = os.getpid(), PartitionState.global_blob

    def fails_in_a_child(state: PartitionState) -> bytes:
        if os.getpid() != parent:
            raise MemoryError("the child could not build the checkpoint")
        return build(state)

    monkeypatch.setattr(PartitionState, "global_blob", fails_in_a_child)
    events = [click(user=f"u{n % 11}", item=f"c{n % 3}-i{n % 17}", category=f"c{n % 3}", ts=T0 + n) for n in range(400)]

    async def scenario() -> tuple[bool, list[tuple[int, int]]]:
        await ensure_topics(settings, broker)
        store = state_store(settings)
        async with running_app(settings, Services(broker, redis_url, False, False), roles=frozenset({"ingest"})) as app:
            worker = app.ingest_worker
            producer = AIOKafkaProducer(bootstrap_servers=broker)
            await producer.start()
            for first in range(0, len(events), 20):
                for event in events[first : first + 20]:
                    await producer.send(settings.topics.clicks, encode(event), key=event.user_id.encode())
                await producer.flush()
                await asyncio.sleep(0.05)
            await producer.stop()
            assert await wait_for(lambda: not worker.checkpoint_in_child, 30), "the failed child went unnoticed"
            assert await wait_for(lambda: worker.stats["events"] >= len(events), 60)
            await asyncio.sleep(1.0)  # in-process checkpoints go on
            in_child = worker.checkpoint_in_child
        stored = [await store.load(p, with_users=False) for p in range(settings.partitions)]
        await store.close()
        return in_child, [(orjson.loads(s.global_blob)["model"]["events"], sum(s.global_offsets.values())) for s in stored]

    in_child, checkpoints = asyncio.run(scenario())
    assert not in_child
    # the checkpoints written in-process (the last ones at the release) match their offsets and cover every event
    assert all(events_in == records for events_in, records in checkpoints)
    assert sum(records for _, records in checkpoints) == len(events)
