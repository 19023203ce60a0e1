"""Batch-wise outputs against a real broker: records land in the partition Kafka's default partitioner picks, in
order, and a batch goes on the wire at once, not after the producer's linger."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2

from kairos.agents.outputs import KafkaOutputs
from kairos.agents.topics_admin import ensure_topics

pytestmark = pytest.mark.integration


async def test_outputs_are_partitioned_like_kafka_and_sent_without_lingering(make_settings, broker):
    settings = make_settings(partitions=3)
    counts = await ensure_topics(settings, broker)
    topic = settings.topics.recommendations
    # A linger far longer than the test waits: a batch held for it would miss the deadline below.
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=20_000, acks="all")
    await producer.start()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        outputs = KafkaOutputs(producer)
        records = [(f"user-{n % 7}".encode(), f"rec-{n}".encode()) for n in range(40)]
        for key, value in records:
            outputs.add(topic, key, value)
        started = time.monotonic()
        futures = await outputs.enqueue(outputs.take())
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        acked_after = time.monotonic() - started

        got: list = []
        deadline = time.monotonic() + 20
        while len(got) < len(records) and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(batch)
    finally:
        await consumer.stop()
        await producer.stop()

    assert acked_after < 10  # acknowledged long before the 20 s linger
    n = counts[topic]
    assert sorted((r.key, r.value) for r in got) == sorted(records)
    for record in got:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % n
    for key in {k for k, _ in records}:  # one key's records keep their order
        assert [r.value for r in sorted(got, key=lambda r: r.offset) if r.key == key] == [v for k, v in records if k == key]
