"""``kairos bench broker``: what a fetch costs the embedded Tansu broker as a partition's log grows.

For each log shape (one record per batch, as paced events from many storefronts arrive; or ``--batch`` records per
batch, as a bulk producer writes) it grows one partition of a fresh topic to each size and finds the shortest
``fetch_max_wait_ms`` with which a consumer positioned just before the last record gets it back. A fetch whose work
outlasts its wait comes back empty on this broker, so that wait is the broker's cost of one fetch of the partition.
The last line printed is one JSON object: ``{"one_record_batches": {records: shortest wait ms}, ...}``.

Only the embedded broker is measured (a configured Kafka is left alone: the command writes topics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kairos.agents.embedded import embedded_services

#: Waits tried, shortest first (ms); a size none of them serves is reported as None.
WAITS_MS = (1, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 200)
SIZES = (500, 2_000, 5_000, 10_000, 20_000)
RECORD = b"x" * 200


async def shortest_wait(bootstrap: str, tp: TopicPartition, end: int, tries: int = 2) -> int | None:
    """The shortest wait of :data:`WAITS_MS` that returns the record at ``end - 1`` (each tried ``tries`` times:
    a wait that works once is enough, scheduling noise can fail one try)."""
    for wait in WAITS_MS:
        for _ in range(tries):
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=wait)
            await consumer.start()
            try:
                consumer.assign([tp])
                consumer.seek(tp, end - 1)
                deadline = time.monotonic() + max(1.0, 10 * wait / 1000.0)
                while time.monotonic() < deadline:
                    if (await consumer.getmany(timeout_ms=100)).get(tp):
                        return wait
            finally:
                await consumer.stop()
    return None


async def create_topic(bootstrap: str, topic: str) -> None:
    """A topic of one partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


def log_producer(bootstrap: str, records_per_batch: int) -> AIOKafkaProducer:
    """A producer whose batches hold ``records_per_batch`` records of :data:`RECORD` size. One record per batch: a
    batch too small for two, sent at once (paced events from many storefronts); otherwise a long linger fills them."""
    one = records_per_batch == 1
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0 if one else 20,
                            max_batch_size=300 if one else (len(RECORD) + 64) * records_per_batch)  # fmt: skip


async def _grow_and_measure(bootstrap: str, records_per_batch: int, sizes: tuple[int, ...]) -> dict[str, int | None]:
    topic = f"bench-broker-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic)
    producer = log_producer(bootstrap, records_per_batch)
    await producer.start()
    tp, written, out = TopicPartition(topic, 0), 0, {}
    try:
        for size in sizes:
            sent = [await producer.send(topic, RECORD, partition=0) for _ in range(size - written)]
            await asyncio.gather(*sent)
            written = size
            out[str(size)] = await shortest_wait(bootstrap, tp, size)
            print(f"{records_per_batch} record(s) per batch, {size} records: shortest working wait "
                  f"{out[str(size)]} ms", file=sys.stderr)  # fmt: skip
    finally:
        await producer.stop()
    return out


def bench_broker(sizes: tuple[int, ...] = SIZES, batch: int = 100) -> dict:
    async def run(bootstrap: str) -> dict:
        return {
            "one_record_batches": await _grow_and_measure(bootstrap, 1, sizes),
            f"{batch}_record_batches": await _grow_and_measure(bootstrap, batch, sizes),
        }

    with embedded_services(kafka=True, redis=False) as (bootstrap, _):
        result = asyncio.run(run(bootstrap))
    result["unit"] = "shortest fetch_max_wait_ms that returns the partition's last record, by records in the partition"
    return result


def _cmd_bench_broker(args: argparse.Namespace) -> int:
    sizes = tuple(sorted(args.sizes)) if args.sizes else SIZES
    print(json.dumps(bench_broker(sizes, args.batch)))
    return 0


def register(groups: dict) -> None:
    """Add ``bench broker`` to the CLI."""
    p = groups["bench"].add_parser("broker", help="the embedded broker's cost of one fetch as a partition's log grows")
    p.add_argument("--sizes", type=int, nargs="*", default=None, help=f"records in the partition (default {SIZES})")
    p.add_argument("--batch", type=int, default=100, help="records per batch of the bulk-written log (default 100)")
    p.set_defaults(func=_cmd_bench_broker)
