"""The worker's global checkpoints built in slices between batches and in forked children (agents/snapshot.py), with
a real broker and Redis: every checkpoint Redis holds reflects exactly the offsets stored with it, while events keep
arriving (the worker goes on changing the state being serialised), so the replay after a crash starts from the
right records; a build in slices or a child that fails switches the worker to whole builds in-process, which go on
matching their offsets; and whole checkpoints small enough for the loop are built there, with no child at all."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from factories import T0, click

from kairos.agents import snapshot as snapshot_module
from kairos.agents.runtime import Services, running_app, wait_for
from kairos.agents.settings import Settings
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.partition import PartitionState
from kairos.schemas.codec import encode

from agents_helpers import state_store

pytestmark = pytest.mark.integration


def _settings(make_settings, redis_url: str, tmp_path, inline_max_ms: float = 0.0, slice_ms: float = 0.0) -> Settings:
    """A checkpoint due every 0.3 s; the built-in creative inventory, no models. Whole builds unless ``slice_ms``
    (the default arrangement builds in slices); these states are small: every whole checkpoint would be built on
    the loop unless ``inline_max_ms`` is 0."""
    (tmp_path / "no-data").mkdir()
    (tmp_path / "no-models").mkdir()
    return make_settings(redis_url=redis_url, global_checkpoint_interval_s=0.3, data_dir=tmp_path / "no-data",
                         model_dir=tmp_path / "no-models", checkpoint_inline_max_ms=inline_max_ms,
                         checkpoint_slice_ms=slice_ms)  # fmt: skip


def _children_started(monkeypatch) -> list:
    """Every checkpoint snapshot started in a child from now on (the list fills as the worker forks)."""
    started: list = []
    original = snapshot_module.ChildSnapshot.start_many.__func__

    def counting_start(cls, *args, **kwargs):
        snapshots = original(cls, *args, **kwargs)
        started.extend(snapshots)
        return snapshots

    monkeypatch.setattr(snapshot_module.ChildSnapshot, "start_many", classmethod(counting_start))
    return started


def _clicks(n: int, users: int) -> list:
    return [click(user=f"u{k % users}", item=f"c{k % 5}-i{k % 41}", category=f"c{k % 5}", ts=T0 + k) for k in range(n)]


async def _produce_steadily(broker: str, settings: Settings, events: list, every_tenth=None) -> None:
    """15 events every ~40 ms (batches keep coming while children serialise); ``every_tenth`` awaited every 10."""
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        for n, first in enumerate(range(0, len(events), 15)):
            for event in events[first : first + 15]:
                await producer.send(settings.topics.clicks, encode(event), key=event.user_id.encode())
            await producer.flush()
            if every_tenth is not None and n % 10 == 0:
                await every_tenth()
            await asyncio.sleep(0.04)
    finally:
        await producer.stop()


async def _checkpoints_while_streaming(settings: Settings, broker: str, redis_url: str, events: list, settle_s: float):
    """Run an ingest worker while ``events`` arrive steadily, reading the stored checkpoints every tenth burst and
    once more ``settle_s`` after the last event was counted (the last checkpoints committed); returns what was
    read and the (stopped) worker."""
    await ensure_topics(settings, broker)
    store = state_store(settings)
    seen: list[tuple[int, int]] = []

    async def read() -> None:
        seen.extend(await _checkpoints(store, settings))

    async with running_app(settings, Services(broker, redis_url, False, False), roles=frozenset({"ingest"})) as app:
        worker = app.ingest_worker
        await _produce_steadily(broker, settings, events, read)  # ~4 s for 1,500 events: many checkpoint intervals
        assert await wait_for(lambda: worker.stats["events"] >= len(events), 60)
        await asyncio.sleep(settle_s)
        await read()
    await store.close()
    return seen, worker


async def _checkpoints(store, settings: Settings) -> list[tuple[int, int]]:
    """Per partition with a checkpoint: (events in the blob's global model, records below the blob's offsets)."""
    out = []
    for partition in range(settings.partitions):
        stored = await store.load(partition, with_users=False)
        if stored.global_blob:
            out.append((orjson.loads(stored.global_blob)["model"]["events"], sum(stored.global_offsets.values())))
    return out


async def _after_a_failure(settings: Settings, broker: str, redis_url: str, events: list, fell_back, inspect=None):
    """An ingest worker through ``events`` while its checkpoint builds fail: waits until ``fell_back(worker)`` (the
    failure noticed) and every event is counted, then a second more (the whole builds go on). Returns the
    checkpoints Redis holds after the worker stopped (the last ones built whole at the release) and what
    ``inspect(worker)`` said before the stop (``fell_back``'s answer by default)."""
    await ensure_topics(settings, broker)
    store = state_store(settings)
    async with running_app(settings, Services(broker, redis_url, False, False), roles=frozenset({"ingest"})) as app:
        worker = app.ingest_worker
        await _produce_steadily(broker, settings, events)
        assert await wait_for(lambda: fell_back(worker), 30), "the failed build went unnoticed"
        assert await wait_for(lambda: worker.stats["events"] >= len(events), 60)
        await asyncio.sleep(1.0)
        seen = (inspect or fell_back)(worker)
    checkpoints = await _checkpoints(store, settings)
    await store.close()
    return checkpoints, seen


@pytest.mark.timeout(120)
def test_checkpoints_built_in_children_match_their_offsets(make_settings, broker, redis_url, tmp_path, monkeypatch):
    settings = _settings(make_settings, redis_url, tmp_path)
    started = _children_started(monkeypatch)
    events = _clicks(1500, users=23)

    seen, worker = asyncio.run(_checkpoints_while_streaming(settings, broker, redis_url, events, settle_s=1.0))
    assert worker.checkpoint_in_child, "a child failed and the worker fell back to in-process checkpoints"
    assert len(started) >= 4, f"only {len(started)} checkpoints were built in children"
    assert all(snapshot.exit_code == 0 for snapshot in started if snapshot.ready)
    # One fork builds the checkpoints of every partition that is due or half due: fewer children than checkpoints.
    assert len({snapshot.pid for snapshot in started}) < len(started)
    # Every click is a new event of the global model: a checkpoint holds as many as the records below its offsets.
    assert [events for events, _ in seen] == [records for _, records in seen]
    assert max(records for _, records in seen) > len(events) // 4


@pytest.mark.timeout(120)
def test_a_failing_child_switches_the_worker_to_checkpoints_built_in_process(make_settings, broker, redis_url, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    settings = _settings(make_settings, redis_url, tmp_path)
    parent, build = os.getpid(), PartitionState.global_blob

    def fails_in_a_child(state: PartitionState) -> bytes:
        if os.getpid() != parent:
            raise MemoryError("the child could not build the checkpoint")
        return build(state)

    monkeypatch.setattr(PartitionState, "global_blob", fails_in_a_child)
    events = _clicks(400, users=11)

    checkpoints, in_process = asyncio.run(_after_a_failure(settings, broker, redis_url, events,
                                                           lambda worker: not worker.checkpoint_in_child))  # fmt: skip
    assert in_process  # still, a second after the failure
    assert len(checkpoints) == settings.partitions
    assert all(events_in == records for events_in, records in checkpoints)
    assert sum(records for _, records in checkpoints) == len(events)


@pytest.mark.timeout(120)
def test_small_checkpoints_are_built_on_the_loop_without_a_child(make_settings, broker, redis_url, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    settings = _settings(make_settings, redis_url, tmp_path, inline_max_ms=50.0)
    started = _children_started(monkeypatch)
    events = _clicks(600, users=17)

    seen, worker = asyncio.run(_checkpoints_while_streaming(settings, broker, redis_url, events, settle_s=0.5))
    assert worker.checkpoint_in_child  # allowed, and not needed
    stalls, sizes = list(worker.checkpoint_stalls_ms), worker.inline_budget.sizes
    assert started == []
    assert len(stalls) >= 4  # built in place, each timed
    assert sizes and all(size > 0 for size in sizes.values())  # the next decision knows each partition's size
    assert seen and [events for events, _ in seen] == [records for _, records in seen]


@pytest.mark.timeout(120)
def test_checkpoints_built_in_slices_match_their_offsets(make_settings, broker, redis_url, tmp_path, monkeypatch):
    settings = _settings(make_settings, redis_url, tmp_path, slice_ms=0.05)  # a few pieces per slice
    monkeypatch.setattr("kairos.engine.checkpoint.ENTRIES_PER_PIECE", 20)  # many slices: events arrive between them
    started = _children_started(monkeypatch)
    events = _clicks(1500, users=23)

    seen, worker = asyncio.run(_checkpoints_while_streaming(settings, broker, redis_url, events, settle_s=1.0))
    assert worker.checkpoint_sliced, "a build failed and the worker fell back to whole builds"
    assert started == []  # no child
    slices = list(worker.checkpoint_slices_ms)
    assert len(slices) > 3 * len(worker.checkpoint_stalls_ms) > 0  # each build took several slices
    assert len(seen) >= 4
    # Every click is a new event of the global model: a checkpoint holds as many as the records below its offsets.
    assert [events for events, _ in seen] == [records for _, records in seen]
    assert max(records for _, records in seen) > len(events) // 4


@pytest.mark.timeout(120)
def test_a_failing_build_in_slices_switches_the_worker_to_whole_builds(make_settings, broker, redis_url, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    settings = _settings(make_settings, redis_url, tmp_path, slice_ms=0.05)

    def fails(self, deadline, clock=None):
        raise MemoryError("the build could not go on")

    monkeypatch.setattr("kairos.engine.checkpoint.CheckpointBuild.step", fails)
    events = _clicks(400, users=11)

    checkpoints, closed = asyncio.run(_after_a_failure(
        settings, broker, redis_url, events, lambda worker: not worker.checkpoint_sliced,
        lambda worker: all(s.selector.model._kept_rows is None for s in worker.partitions.values()),
    ))  # fmt: skip
    assert closed  # the failed build's snapshot was closed
    assert len(checkpoints) == settings.partitions
    assert all(events_in == records for events_in, records in checkpoints)
    assert sum(records for _, records in checkpoints) == len(events)
