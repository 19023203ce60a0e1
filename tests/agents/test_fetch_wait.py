"""The hot path's adaptive fetch wait: the controller on its own, the settings that bound it, and the tuner against a
real Tansu partition whose log is too long for a short wait (the failure it exists for)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from kairos.agents.bench_broker import RECORD, WAITS_MS, bench_broker, create_topic, log_producer
from kairos.agents.fetch_wait import FetchWait, FetchWaitTuner
from kairos.agents.settings import EMBEDDED_FETCH_MIN_WAIT_MS, Settings


def test_a_stall_doubles_the_wait_up_to_the_ceiling() -> None:
    control = FetchWait(floor_ms=10, ceiling_ms=50)
    assert control.wait_ms == 10 and control.adaptive
    assert control.on_stall(0.0) and control.wait_ms == 20
    assert control.on_stall(0.1) and control.wait_ms == 40
    assert control.on_stall(0.2) and control.wait_ms == 50
    assert not control.on_stall(0.3) and control.wait_ms == 50  # at the ceiling: counted, not raised
    assert control.stalls == 4


def test_records_lower_the_wait_only_after_a_quiet_probe_interval() -> None:
    control = FetchWait(floor_ms=10, ceiling_ms=80, probe_s=30.0)
    control.on_stall(100.0)
    control.on_stall(100.0)
    assert control.wait_ms == 40
    assert not control.on_records(129.9) and control.wait_ms == 40  # too soon after the stall
    assert control.on_records(130.0) and control.wait_ms == 20  # probe: half
    assert not control.on_records(150.0) and control.wait_ms == 20  # too soon after the probe
    assert control.on_records(160.0) and control.wait_ms == 10
    assert not control.on_records(500.0) and control.wait_ms == 10  # never below the floor


def test_a_fixed_wait_never_moves() -> None:
    control = FetchWait(floor_ms=50, ceiling_ms=50)
    assert not control.adaptive
    assert not control.on_stall(0.0) and not control.on_records(1000.0) and control.wait_ms == 50
    with pytest.raises(ValueError):
        FetchWait(floor_ms=60, ceiling_ms=50)
    with pytest.raises(ValueError):
        FetchWait(floor_ms=0, ceiling_ms=50)


def test_bounds_adapt_on_the_embedded_broker_only() -> None:
    embedded = Settings(kafka_bootstrap_servers=None, redis_url=None)
    assert embedded.fetch_wait_bounds() == (EMBEDDED_FETCH_MIN_WAIT_MS, 50)
    kafka = Settings(kafka_bootstrap_servers="kafka-1:9092", redis_url=None)
    assert kafka.fetch_wait_bounds() == (50, 50)  # Apache Kafka answers when data arrives: a fixed wait
    tuned = Settings(kafka_bootstrap_servers="kafka-1:9092", redis_url=None, fetch_min_wait_ms=5, fetch_max_wait_ms=200)
    assert tuned.fetch_wait_bounds() == (5, 200)
    clipped = Settings(kafka_bootstrap_servers=None, redis_url=None, fetch_max_wait_ms=4)
    assert clipped.fetch_wait_bounds() == (4, 4)


#: One-record batches in the test partition: Tansu scans them all on every fetch (~1 us each on this machine), so a
#: 1 ms wait is far too short for it and the adaptive wait must climb.
BATCHES = 6_000


async def _fill(bootstrap: str, topic: str) -> None:
    await create_topic(bootstrap, topic)
    producer = log_producer(bootstrap, records_per_batch=1)  # every send its own batch
    await producer.start()
    try:
        sent = [await producer.send(topic, RECORD) for _ in range(BATCHES)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _drain(bootstrap: str, topic: str, floor_ms: int, ceiling_ms: int, seconds: float) -> tuple[int, FetchWait]:
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=floor_ms)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        tuner = FetchWaitTuner(consumer, FetchWait(floor_ms, ceiling_ms, probe_s=3600.0))
        got, deadline = 0, time.monotonic() + seconds
        while got < BATCHES and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=50)
            await tuner.after_poll(bool(batches))
            got += sum(len(records) for records in batches.values())
        return got, tuner.control
    finally:
        await consumer.stop()


def test_the_tuner_keeps_reading_a_log_too_long_for_the_short_wait(kafka_broker: str) -> None:
    topic = f"fetch-wait-{uuid.uuid4().hex[:8]}"
    asyncio.run(_fill(kafka_broker, topic))
    fixed, _ = asyncio.run(_drain(kafka_broker, topic, floor_ms=1, ceiling_ms=1, seconds=3.0))
    assert fixed == 0  # the failure: every fetch comes back empty although 6,000 records wait
    got, control = asyncio.run(_drain(kafka_broker, topic, floor_ms=1, ceiling_ms=500, seconds=60.0))
    assert got == BATCHES
    assert control.stalls >= 1 and control.wait_ms > 1


def test_bench_broker_reports_a_working_wait_per_log_shape() -> None:
    """``kairos bench broker`` on its own embedded broker, two small sizes: every size gets a wait that returned
    the partition's last record (small logs are served by short waits)."""
    result = bench_broker(sizes=(50, 200), batch=10)
    assert set(result) == {"one_record_batches", "10_record_batches", "unit"}
    for shape in ("one_record_batches", "10_record_batches"):
        assert set(result[shape]) == {"50", "200"}
        assert all(wait in WAITS_MS for wait in result[shape].values())
