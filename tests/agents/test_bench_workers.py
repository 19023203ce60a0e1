"""The pipeline benchmark's worker processes (agents/bench_workers.py): N processes in one consumer group split the
partitions, drain a backlog together, and report counters that add up to what was produced. Real broker and Redis;
no model directory, so the workers rank with the online fallback (the point here is the plumbing, not the ranker)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from kairos.agents.bench_pipeline import drain_backlog, worker_summary
from kairos.agents.bench_workers import WorkerGroup
from kairos.agents.runtime import Services
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.simulator import ShopperSimulator


def test_two_worker_processes_split_the_partitions_and_count_every_event(make_settings, redis_url, tmp_path):
    settings = make_settings(redis_url=redis_url, partitions=4, model_dir=tmp_path / "no-models",
                             recommend_every_event=True, global_checkpoint_interval_s=0.2)  # fmt: skip
    svc = Services(settings.kafka_bootstrap_servers, redis_url, embedded_kafka=False, embedded_redis=False)
    events = list(ShopperSimulator(seed=11, n_users=60, n_items=200, n_categories=6).events(400))

    async def scenario():
        await ensure_topics(settings, svc.bootstrap)
        async with WorkerGroup(settings, svc, 2) as workers:
            owned = [c["partitions"] for c in await workers.counters()]
            assert all(owned) and sorted(p for ps in owned for p in ps) == [0, 1, 2, 3]
            assert len(set(workers.pids)) == 2
            backlog = await drain_backlog(settings, svc, workers, events)
            totals = await workers.totals(timings_since=[0, 0])
            summary = await worker_summary(workers)
        return owned, backlog, totals, summary

    owned, backlog, totals, summary = asyncio.run(scenario())
    assert backlog["events"] == len(events) == totals["events"]
    assert backlog["pipeline_events_per_s"] > 0
    # every event ranked (the setting), by whichever worker owned its shopper's partition
    assert totals["recommendations"] == len(events) and backlog["backlog_recs_per_event"] == 1.0
    assert totals["dead_letters"] == 0
    # both workers had batches, and each batch's (consume delay, worker time) came back
    assert all(n > 0 for n in totals["batches"]) and len(totals["timings"]) == sum(totals["batches"])
    assert all(delay >= 0 and spent >= 0 for delay, spent in totals["timings"])
    assert totals["cpu_s"] > 0 and len(totals["rss_mb"]) == 2
    # the checkpoints both workers took (every 0.2 s per partition), each stall reported in order
    checkpoints = summary["checkpoints"]
    assert checkpoints["count"] >= 2 and len(checkpoints["stalls_ms"]) == min(checkpoints["count"], 20)
    assert all(0 <= ms <= checkpoints["stall_max_ms"] + 0.05 for ms in checkpoints["stalls_ms"])
    # built in slices (the default): each build's slices after its snapshot
    assert checkpoints["sliced"] and checkpoints["forks"] == 0 and checkpoints["slices"] >= checkpoints["count"]
    assert 0 < checkpoints["slice_p50_ms"] <= checkpoints["slice_max_ms"]


def test_more_workers_than_partitions_is_refused(make_settings, redis_url):
    settings = make_settings(redis_url=redis_url, partitions=2)
    svc = Services(settings.kafka_bootstrap_servers, redis_url, embedded_kafka=False, embedded_redis=False)
    with pytest.raises(ValueError, match="--workers"):
        WorkerGroup(settings, svc, 3)


def test_a_worker_that_dies_fails_the_benchmark_instead_of_hanging_it(make_settings, redis_url, tmp_path):
    settings = make_settings(redis_url=redis_url, partitions=2, model_dir=tmp_path / "no-models")
    svc = Services(settings.kafka_bootstrap_servers, redis_url, embedded_kafka=False, embedded_redis=False)

    async def scenario():
        await ensure_topics(settings, svc.bootstrap)
        async with WorkerGroup(settings, svc, 1) as workers:
            assert await workers.events() == 0
            os.kill(workers.pids[0], signal.SIGKILL)
            with pytest.raises((EOFError, BrokenPipeError, ConnectionResetError, RuntimeError)):
                await asyncio.wait_for(workers.events(), 30.0)

    asyncio.run(scenario())
