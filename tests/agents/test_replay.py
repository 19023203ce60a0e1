"""``kairos replay`` against a real broker (Tansu, started by the ``kafka_broker`` fixture), plus the rate limiter."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from kairos.agents.replay import TokenBucket, add_replay_parser, produce_events
from kairos.engine.datasets import default_data_dir
from kairos.engine.simulator import ShopperSimulator, with_malformed
from kairos.schemas.codec import InvalidEvent, decode_event
from kairos.schemas.topics import Topics

_prefixes = itertools.count()


def fresh_topics() -> Topics:
    """Topics no other test has used (the broker lives for the whole session)."""
    p = f"replay-test-{next(_prefixes)}-{time.monotonic_ns()}"
    return Topics(clicks=f"{p}.clicks", purchases=f"{p}.purchases", impressions=f"{p}.impressions")


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0) -> list:
    """Every record of ``topic`` (read without a consumer group, so no rebalance wait)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()  # refreshes the metadata
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        records, deadline = [], time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


# ---- the token bucket -----------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("chunk", [1, 7, 50, 333])
def test_token_bucket_holds_the_long_run_rate_exactly(chunk):
    clock = FakeClock()
    bucket = TokenBucket(rate=250.0, burst=25.0, clock=clock)
    for _ in range(20_000 // chunk):
        clock.now += bucket.reserve(chunk) + 0.0001  # the sleep, and a little oversleep
    sent = (20_000 // chunk) * chunk
    assert sent / clock.now == pytest.approx(250.0, rel=0.02)


def test_token_bucket_allows_a_burst_after_idling_but_no_more():
    clock = FakeClock()
    bucket = TokenBucket(rate=100.0, burst=10.0, clock=clock)
    clock.now = 60.0  # idle for a minute: only `burst` tokens saved up
    assert bucket.reserve(10) == 0.0
    assert bucket.reserve(50) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


# ---- producing to a real broker -------------------------------------------------------------------------------------


async def test_events_arrive_keyed_by_user_on_the_default_partition_in_order(kafka_broker):
    topics = fresh_topics()
    await create_topics(kafka_broker, [topics.clicks, topics.purchases], partitions=4)
    events = list(ShopperSimulator(seed=3, n_users=40, n_items=100, n_categories=5).events(3_000))
    mixed = list(with_malformed(events, 0.02, seed=3))
    report = await produce_events(kafka_broker, topics, mixed, progress=False)
    n_clicks = sum(e.kind == "click" for e in events)
    n_bad = len(mixed) - len(events)
    assert report.sent == {topics.clicks: n_clicks + n_bad, topics.purchases: len(events) - n_clicks}
    assert report.malformed == n_bad > 0 and report.events_per_s > 0

    received = await consume_all(kafka_broker, topics.clicks, n_clicks + n_bad)
    received += await consume_all(kafka_broker, topics.purchases, len(events) - n_clicks)
    decoded, bad, per_user = [], 0, defaultdict(list)
    for record in received:
        try:
            event = decode_event(record.value)
        except InvalidEvent:
            bad += 1
            assert record.key is None and record.topic == topics.clicks
            continue
        assert record.key == event.user_id.encode()
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 4  # what the Java client would choose
        decoded.append(event)
        per_user[(record.topic, event.user_id)].append((record.offset, event.ts))
    assert bad == n_bad
    assert sorted(e.event_id for e in decoded) == sorted(e.event_id for e in events)
    for sequence in per_user.values():  # a user's events keep their time order within a topic
        assert [ts for _, ts in sorted(sequence)] == sorted(ts for _, ts in sequence)


async def test_rate_limit_is_respected(kafka_broker):
    topics = fresh_topics()
    events = list(ShopperSimulator(seed=4, n_users=20, n_items=50, n_categories=5).events(600))
    started = time.perf_counter()
    report = await produce_events(kafka_broker, topics, events, rate=1_500, progress=False)
    elapsed = time.perf_counter() - started
    assert report.total == 600
    assert 0.3 <= elapsed < 3.0  # 600 events at 1 500/s: 0.4 s minus the initial burst of 30


async def test_a_started_producer_is_reused_and_left_running(kafka_broker):
    from kairos.agents.replay import make_producer

    topics = fresh_topics()
    events = list(ShopperSimulator(seed=5, n_users=10, n_items=30, n_categories=3).events(100))
    producer = make_producer(kafka_broker)
    await producer.start()
    try:
        first = await produce_events(producer, topics, events[:50], progress=False)
        second = await produce_events(producer, topics, events[50:], progress=True)
        assert first.total == second.total == 50
    finally:
        await producer.stop()


# ---- the command ----------------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kairos")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_replay_command_produces_simulated_events(kafka_broker, capsys, monkeypatch):
    monkeypatch.delenv("KAIROS_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    prefix = f"cli-{time.monotonic_ns()}"
    args = parse(["replay", "--source", "simulated", "--limit", "500", "--max-speed", "--bootstrap", kafka_broker,
                  "--topic-prefix", prefix, "--no-progress", "--malformed-fraction", "0.05"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "SIMULATED data" in out and "replay done: sent 5" in out and "malformed" in out
    records = asyncio.run(consume_all(kafka_broker, f"{prefix}.clicks", 1))
    assert records and decode_event(records[0].value).user_id.startswith("sim-u")


def test_replay_command_uses_real_data_when_it_is_there(kafka_broker, capsys, monkeypatch):
    monkeypatch.setenv("KAIROS_KAFKA_BOOTSTRAP_SERVERS", kafka_broker)
    args = parse(["replay", "--source", "taobao", "--limit", "300", "--rate", "5000", "--no-progress",
                  "--topic-prefix", f"cli-real-{time.monotonic_ns()}"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert ("REAL data" if default_data_dir() else "SIMULATED data") in out
    assert "sent 300 records" in out


def test_replay_without_a_broker_says_what_to_do(capsys, monkeypatch):
    monkeypatch.delenv("KAIROS_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    args = parse(["replay", "--source", "simulated", "--limit", "10"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "KAIROS_KAFKA_BOOTSTRAP_SERVERS" in err and "kairos demo" in err


def test_replay_rejects_conflicting_speed_options():
    with pytest.raises(SystemExit):
        parse(["replay", "--rate", "10", "--max-speed"])
    with pytest.raises(SystemExit):
        parse(["replay", "--rate", "0"])
    with pytest.raises(SystemExit):
        parse(["replay", "--malformed-fraction", "1.5"])


def test_replay_to_an_unreachable_broker_fails_with_status_1(capsys, monkeypatch):
    monkeypatch.delenv("KAIROS_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    args = parse(["replay", "--source", "simulated", "--limit", "10", "--bootstrap", "127.0.0.1:1", "--no-progress"])
    assert args.func(args) == 1
    assert "broker 127.0.0.1:1 failed" in capsys.readouterr().err
