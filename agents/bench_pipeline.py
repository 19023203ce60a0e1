"""``kairos bench pipeline``: the plain-loop baseline vs the full pipeline, on the same events and partitions.

(a) plain aiokafka loop: consume -> JSON decode -> produce, no state;
(b) the full pipeline (decode, validate, state, retrieval, ranking, outputs, atomic Redis commits) from the same
    pre-filled topics with a fresh consumer group;
(c) event -> recommendation latency measured by a separate consumer while events arrive, one at a time at a steady
    pace, at half of (b)'s rate (or ``--rate``);
(d) peak RSS of this process (worker, producers and consumers; the broker and Redis are separate processes).
The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kairos.agents.demo import pick_source, produce
from kairos.agents.kafka_config import consumer_options, producer_options
from kairos.schemas.codec import encode
from kairos.agents.runtime import RecommendationMonitor, Services, running_app, services, wait_for
from kairos.agents.settings import Settings
from kairos.agents.topics_admin import ensure_topics


async def plain_loop(settings: Settings, bootstrap: str, expected: int) -> float:
    """Events/s of consume -> orjson -> produce with aiokafka and nothing else."""
    topics = settings.topics
    options = {**consumer_options(settings), "group_id": f"{settings.consumer_group}-plain"}
    consumer = AIOKafkaConsumer(topics.clicks, topics.purchases, bootstrap_servers=bootstrap, **options)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_options(settings))
    await consumer.start()
    await producer.start()
    seen, started = 0, None
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=100, max_records=settings.batch_max_records)
            for records in batches.values():
                started = started or time.perf_counter()
                for record in records:
                    event = orjson.loads(record.value)
                    await producer.send(topics.recommendations + ".plain", orjson.dumps(event), key=record.key)
                seen += len(records)
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()
    return seen / (time.perf_counter() - (started or time.perf_counter()))


async def produce_paced(settings: Settings, bootstrap: str, events: list, rate: float) -> int:
    """Each event sent at its own due time (t0 + k / rate): a smooth stream, as shoppers produce it. A chunked
    producer would deliver bursts, and the last event of a burst waits for the whole burst to be processed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **{**producer_options(settings), "linger_ms": 0})
    await producer.start()
    topics, loop = settings.topics, asyncio.get_running_loop()
    started = loop.time()
    try:
        for k, event in enumerate(events):
            delay = started + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            topic = topics.purchases if event.kind == "purchase" else topics.clicks
            await producer.send(topic, encode(event), key=event.user_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return len(events)


async def pipeline_phase(settings: Settings, svc: Services, expected: int, latency_events: list, rate: float | None):
    # The hot path only: the copy agent runs in its own process in production (it would compete for the CPU here).
    async with running_app(settings, svc, roles=frozenset({"ingest"})) as app:
        worker = app.ingest_worker
        ok = await wait_for(lambda: worker.stats["events"] >= expected, 600.0, 0.005)
        elapsed = time.perf_counter() - worker.first_batch_at if worker.first_batch_at else float("inf")
        if not ok:
            raise RuntimeError(f"pipeline consumed {worker.stats['events']} of {expected} events")
        throughput = expected / elapsed
        monitor = RecommendationMonitor(settings, svc.bootstrap)
        await monitor.start()
        target_rate = rate or throughput / 2
        before = worker.stats["events"]
        produced = await produce_paced(settings, svc.bootstrap, latency_events, target_rate)
        await wait_for(lambda: worker.stats["events"] >= before + produced, 120.0)
        await asyncio.sleep(0.5)
        p50, p99 = monitor.percentiles()
        stats = dict(worker.stats)
        stats["model_version"] = next(iter(worker.partitions.values())).selector.model_version if worker.partitions else ""
        await monitor.stop()
    return throughput, target_rate, p50, p99, stats


async def run(settings: Settings, svc: Services, events: list, latency_events: list, rate: float | None) -> dict:
    await ensure_topics(settings, svc.bootstrap)
    produced = await produce(settings, svc.bootstrap, events, None, [])
    plain = await plain_loop(settings, svc.bootstrap, produced)
    throughput, target_rate, p50, p99, stats = await pipeline_phase(settings, svc, produced, latency_events, rate)
    return {
        "events": produced,
        "plain_loop_events_per_s": round(plain, 1),
        "pipeline_events_per_s": round(throughput, 1),
        "ratio": round(throughput / plain, 3),
        "latency_rate_events_per_s": round(target_rate, 1),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "recommendations": stats["recommendations"],
        "dead_letters": stats["dead_letters"],
        "ranker": stats["model_version"],
        "partitions": settings.partitions,
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def bench_pipeline_main(settings: Settings, data_dir, source: str, n_events: int, rate: float | None) -> dict:
    picked = pick_source(data_dir, source, 2 * n_events)
    events, latency_events = picked.events[:n_events], picked.events[n_events:]
    print(f"bench pipeline: {len(events)} events from {picked.label}, then {len(latency_events)} for latency", file=sys.stderr)
    with services(settings) as svc:
        result = asyncio.run(run(settings, svc, events, latency_events, rate))
    result["source"] = picked.label
    return result
