"""The recommendation monitor that reads only now and then (the benchmark's): every recommendation still counted, with
its own latency, against a real broker."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaProducer

from kairos.agents.runtime import RecommendationMonitor, wait_for
from kairos.agents.topics_admin import ensure_topics


def _recommendation(user: str, ingested_s: float) -> bytes:
    return orjson.dumps({"user_id": user, "items": [{"item_id": "i1"}], "source": {"ingested_at": ingested_s}})


def test_a_monitor_reading_once_in_a_while_counts_every_recommendation_with_its_latency(make_settings, broker) -> None:
    settings = make_settings()

    async def scenario() -> None:
        await ensure_topics(settings, broker)
        monitor = RecommendationMonitor(settings, broker, poll_interval_s=0.5)
        await monitor.start()
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        try:
            # Until the monitor's consumer has its positions (a topic just created), records before them are missed.
            while monitor.received == 0:
                await producer.send_and_wait(settings.topics.recommendations, _recommendation("warm", time.time()))
                await wait_for(lambda: monitor.received > 0, 1.0)
            base, sent = monitor.received, 0
            for burst in range(3):
                for k in range(40):
                    ingested = time.time() - 0.010  # each recommendation made 10 ms after its event
                    stamp = int((ingested + 0.010) * 1000)
                    await producer.send(settings.topics.recommendations, _recommendation(f"u{k}", ingested),
                                        key=f"u{k}".encode(), timestamp_ms=stamp)  # fmt: skip
                    sent += 1
                await producer.flush()
                await asyncio.sleep(0.2)
            assert await wait_for(lambda: monitor.received - base == sent, 10.0), (monitor.received - base, sent)
            latencies = list(monitor.latencies_ms)[base:]
            assert len(latencies) == sent
            assert all(9.0 <= x <= 11.5 for x in latencies)  # the records' own timestamps, not when they were read
        finally:
            await producer.stop()
            await monitor.stop()

    asyncio.run(scenario())
