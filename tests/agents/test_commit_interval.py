"""State commits at ``commit_interval_ms``: which partitions a batch commits (a clock driven by hand), that a batch
is counted with the commit that writes its state, and, against a real broker and Redis, that with a long interval
everything is still written once the stream pauses, exactly."""

from __future__ import annotations

import pytest

from kairos.agents import worker as worker_module
from kairos.agents.pipeline import BatchResult
from kairos.agents.worker import IngestWorker

from agents_helpers import apoll_until
from test_faults import Stream, caught_up, check_states, store_for, worker_in_process


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_commits_every_changed_partition_once_the_interval_passed(make_settings, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(worker_module.time, "monotonic", clock)
    worker = IngestWorker(make_settings(commit_interval_ms=50), "127.0.0.1:1", store=None, make_selector=lambda config: None)

    assert worker._due_commits({0}, set()) == ({0}, True)  # the first batch: nothing written yet
    clock.now += 0.02
    assert worker._due_commits({1}, set()) == (set(), False)  # 20 ms later: waits
    clock.now += 0.01
    # a partition whose checkpoint child is done is written at once, alone
    assert worker._due_commits({2}, {3}) == ({3}, False)
    clock.now += 0.025  # 55 ms after the last full commit: everything changed since, in one go
    assert worker._due_commits({0}, set()) == ({0, 1, 2}, True)
    assert worker._uncommitted == set()

    every_batch = IngestWorker(make_settings(commit_interval_ms=0), "127.0.0.1:1", store=None, make_selector=lambda c: None)
    for partition in (0, 1, 0):
        assert every_batch._due_commits({partition}, set()) == ({partition}, True)


async def test_a_batch_is_counted_with_the_commit_that_writes_its_state(make_settings):
    worker = IngestWorker(make_settings(), "127.0.0.1:1", store=None, make_selector=lambda config: None)
    waiting = BatchResult()
    waiting.source_times_ms.extend([1.0, 2.0])
    await worker._finalize([], waiting, 3, [], covers_all=False)  # its state waits for a later commit
    assert worker.stats["events"] == 0 and worker.stats["recommendations"] == 0
    await worker._finalize([], BatchResult(), 4, [], covers_all=True)  # that commit: both batches written
    assert worker.stats["events"] == 7 and worker.stats["recommendations"] == 2


@pytest.mark.integration
async def test_a_long_interval_writes_everything_when_the_stream_pauses(make_settings, redis_url, broker):
    settings = make_settings(redis_url=redis_url, partitions=2, commit_interval_ms=1_000)
    store = store_for(settings)
    stream = Stream(settings, seed=7)
    try:
        async with worker_in_process(settings, broker, store) as (worker, _, producer):

            async def counted() -> bool:
                return worker.stats["events"] >= stream.records

            for _ in range(3):  # three bursts with pauses between them
                await stream.produce(producer, 300, per_second=600)
                await apoll_until(counted, 30, "the burst to be counted")
                # counted once written: the moment the count covers the burst, Redis holds it
                assert await caught_up(store, stream)
                await check_states(store, stream, 2)
            assert len(worker.batch_timings) >= 3
    finally:
        await store.close()
