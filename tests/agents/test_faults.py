"""Faults with a real broker (Tansu) and real redis-servers: a worker SIGKILLed mid-stream, failover between two
workers, Redis going away and coming back.

The truth is what the producer got acknowledged: per user, the number of distinct events and distinct purchases.
Every purchase is produced twice with the same event id (a producer retry), so "no purchase counted twice" is
checked on every run, not only across the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from kairos.agents.embedded import free_port, redis_binary
from kairos.agents.pipeline import partition_for, stream_key
from kairos.agents.redis_store import RedisStateStore
from kairos.agents.topics_admin import ensure_topics
from kairos.agents.worker import IngestWorker
from kairos.engine import metrics
from kairos.schemas.keys import RedisKeys

from agents_helpers import apoll_until, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NOW = time.time() - 3600


@dataclass
class Stream:
    """Acknowledged events, per user; and the end offset of every (topic, partition) written."""

    settings: object
    users: int = 60
    seed: int = 0
    expected: dict[str, list[int]] = field(default_factory=dict)  # user -> [events, purchases]
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0
    produced: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _event(self, n: int) -> tuple[str, str, dict]:
        user = f"u{self.rng.randrange(self.users)}"
        topics = self.settings.topics
        if self.rng.random() < 0.25:
            line = {"item_id": f"i{self.rng.randrange(200)}", "quantity": 1, "unit_price": "9.99"}
            return topics.purchases, user, {"kind": "purchase", "event_id": f"p{self.seed}-{n}", "user_id": user,
                                            "order_id": f"o{n}", "lines": [line], "ts": NOW + n * 0.01}  # fmt: skip
        return topics.clicks, user, {"kind": "click", "event_id": f"c{self.seed}-{n}", "user_id": user,
                                     "item_id": f"i{self.rng.randrange(200)}", "category_id": f"k{self.rng.randrange(8)}",
                                     "action": "view", "ts": NOW + n * 0.01}  # fmt: skip

    async def produce(self, producer: AIOKafkaProducer, count: int, per_second: float | None = None) -> None:
        """Produce ``count`` events (purchases twice), waiting for acks batch by batch; only acked ones count."""
        started = time.monotonic()
        for first in range(self.produced, self.produced + count, 100):
            sends, events = [], []
            for n in range(first, min(first + 100, self.produced + count)):
                topic, user, event = self._event(n)
                copies = 2 if event["kind"] == "purchase" else 1
                for _ in range(copies):
                    sends.append(await producer.send(topic, orjson.dumps(event), key=user.encode()))
                events.append((user, event["kind"]))
            for meta in await asyncio.gather(*sends):
                key = (meta.topic, meta.partition)
                self.ends[key] = max(self.ends.get(key, 0), meta.offset + 1)
            self.records += len(sends)
            for user, kind in events:
                counts = self.expected.setdefault(user, [0, 0])
                counts[0] += 1
                counts[1] += kind == "purchase"
            if per_second:
                await asyncio.sleep(max(0.0, started + (first + 100 - self.produced) / per_second - time.monotonic()))
        self.produced += count


def store_for(settings, url: str | None = None) -> RedisStateStore:
    keys = RedisKeys(settings.topic_prefix, settings.consumer_group)
    return RedisStateStore.from_url(url or settings.redis_url, keys, settings.serving_ttl_s)


async def caught_up(store: RedisStateStore, stream: Stream) -> bool:
    """Every produced record is covered by the offsets committed (with their state) to Redis: input partition p's
    with state partition p % partitions."""
    n = stream.settings.partitions
    for (topic, partition), end in stream.ends.items():
        snapshot = await store.load(partition % n)
        if snapshot.offsets.get(stream_key(topic, partition % n, partition), 0) < end:
            return False
    return True


async def check_states(store: RedisStateStore, stream: Stream, n_partitions: int) -> None:
    snapshots = {p: await store.load(p) for p in range(n_partitions)}
    wrong = []
    for user, (events, purchases) in sorted(stream.expected.items()):
        blob = snapshots[partition_for(user, n_partitions)].users.get(user)
        assert blob is not None, f"state of {user} lost"
        event_count, purchase_count, version = orjson.loads(blob)["n"]
        if (event_count, purchase_count, version) != (events, purchases, events):
            wrong.append((user, {"expected": (events, purchases), "stored": (event_count, purchase_count, version)}))
    assert not wrong, f"{len(wrong)} users differ, e.g. {wrong[:3]}"


@contextlib.asynccontextmanager
async def worker_in_process(settings, broker: str, store: RedisStateStore):
    """An ingest worker on this event loop (its own task), ready, and a producer; both stopped afterwards."""
    counts = await ensure_topics(settings, broker)
    worker = IngestWorker(settings, broker, store)
    await worker.start(counts)
    task = asyncio.create_task(worker.run())
    producer = await new_producer(broker)
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        yield worker, task, producer
    finally:
        worker.stop()
        await task
        await worker.close()
        await producer.stop()


async def new_producer(broker: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=2)
    await producer.start()
    return producer


@pytest.mark.parametrize(
    ("resident", "input_partitions"), [(10_000, None), (10, None), (10, 8)],
    ids=["all-users-in-memory", "10-users-in-memory", "8-input-partitions"],
)  # fmt: skip
async def test_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(
    make_settings, redis_url, spawn_worker, broker, resident, input_partitions
):
    """With 10 resident users per partition (60 users over 2 partitions) most events find their user evicted
    from memory and read back from Redis: the counts must still be exact. With 8 input partitions, four feed each
    of the 2 states, each with its own offsets."""
    settings = make_settings(redis_url=redis_url, partitions=2, max_resident_users_per_partition=resident,
                             input_partitions=input_partitions)  # fmt: skip
    counts = await ensure_topics(settings, broker)
    assert counts[settings.topics.clicks] == (input_partitions or 2)
    store, producer = store_for(settings), await new_producer(broker)
    stream = Stream(settings)
    first = spawn_worker(settings, "first")
    first.wait_ready()

    producing = asyncio.create_task(stream.produce(producer, 3000, per_second=1000))

    async def some_progress() -> bool:
        offsets = [await store.load(p) for p in range(2)]
        return sum(sum(s.offsets.values()) for s in offsets) > 400

    await apoll_until(some_progress, 20, "the first worker to commit some progress")
    assert not producing.done(), "the kill must happen while events are still arriving"
    first.kill()
    killed_at = time.monotonic()
    second = spawn_worker(settings, "second")
    second.wait_ready()
    await producing
    await apoll_until(lambda: caught_up(store, stream), 60, "the restarted worker to catch up")
    await check_states(store, stream, 2)
    print(f"kill/restart: {stream.produced} events ({stream.records} records with duplicates), "
          f"{len(stream.expected)} users, {sum(p for _, p in stream.expected.values())} purchases; "
          f"caught up {time.monotonic() - killed_at:.1f}s after SIGKILL")
    await producer.stop()
    await store.close()
    assert stream.records > stream.produced, "duplicates were produced"


@pytest.mark.parametrize("input_partitions", [None, 16], ids=["as-many-input-partitions", "16-input-partitions"])
async def test_two_workers_share_partitions_and_one_takes_over(make_settings, redis_url, spawn_worker, broker, input_partitions):
    """Two workers split the 4 state partitions (with 16 input partitions, each state's four go to one worker:
    agents/assignor.py), then one is killed and the other takes all of them over, losing and doubling nothing."""
    settings = make_settings(redis_url=redis_url, partitions=4, input_partitions=input_partitions)
    await ensure_topics(settings, broker)
    store, producer = store_for(settings), await new_producer(broker)
    stream = Stream(settings, users=80, seed=1)
    a, b = spawn_worker(settings, "a"), spawn_worker(settings, "b")
    a.wait_ready()
    b.wait_ready()

    def split() -> bool:
        owned_a, owned_b = a.owned() or [], b.owned() or []
        return bool(owned_a and owned_b) and sorted(owned_a + owned_b) == [0, 1, 2, 3]

    await asyncio.to_thread(poll_until, split, 30, "the two workers to split the four partitions")
    await stream.produce(producer, 1000)
    await apoll_until(lambda: caught_up(store, stream), 30, "both workers to process the first events")
    a_had = a.owned()
    a.kill()
    killed_at = time.monotonic()
    await stream.produce(producer, 1000)
    await asyncio.to_thread(poll_until, lambda: b.owned() == [0, 1, 2, 3], 40, "b to take over a's partitions")
    took_over = time.monotonic() - killed_at
    await apoll_until(lambda: caught_up(store, stream), 40, "b to catch up on a's partitions")
    await check_states(store, stream, 4)
    print(f"failover: a owned {a_had}, b owned {b.owned()} {took_over:.1f}s after SIGKILL of a, caught up "
          f"{time.monotonic() - killed_at:.1f}s after; {stream.produced} events, {len(stream.expected)} users")
    await producer.stop()
    await store.close()
    assert 0 < len(a_had) < 4


class PersistentRedis:
    """redis-server with an append-only file, so stopping it and starting it again on the same port is an
    outage, not a data loss (what a production Redis with AOF does)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
               "--appendfsync", "always", "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        poll_until(lambda: _pings(redis.Redis(port=self.port)), 10, "redis-server to accept connections", 0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False
    finally:
        client.close()


async def test_redis_away_worker_keeps_consuming_marks_stale_and_catches_up(make_settings, broker, tmp_path):
    redis = PersistentRedis(tmp_path)
    redis.start()
    settings = make_settings(redis_url=redis.url, partitions=2)
    store = store_for(settings)
    stream = Stream(settings, seed=2)
    try:
        async with worker_in_process(settings, broker, store) as (worker, task, producer):
            await stream.produce(producer, 500)
            await apoll_until(lambda: caught_up(store, stream), 30, "the first events to be committed")

            redis.stop()
            await stream.produce(producer, 500)

            async def consumed_everything() -> bool:
                return worker.stats["events"] >= stream.records

            await apoll_until(consumed_everything, 30, "the worker to keep consuming while Redis is away")
            assert metrics.SERVING_STALE._value.get() == 1 and not worker.redis_healthy
            assert task.done() is False

            consumed_while_away = worker.stats["events"]
            redis.start()
            back_at = time.monotonic()

            async def fresh_again() -> bool:
                return metrics.SERVING_STALE._value.get() == 0 and await caught_up(store, stream)

            await apoll_until(fresh_again, 30, "writes to resume and catch up after Redis returned")
            await check_states(store, stream, 2)
            print(f"redis away: {consumed_while_away} records consumed in total while Redis was down "
                  f"({stream.records} produced); stale flag cleared and caught up {time.monotonic() - back_at:.1f}s after restart")
            user, (events, _) = max(stream.expected.items(), key=lambda kv: kv[1][0])
            served = await store.serving_record(user)
            assert served is not None and served["rec"]["state_version"] == events
    finally:
        await store.close()
        redis.stop()
