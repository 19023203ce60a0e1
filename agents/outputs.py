"""Batch-wise Kafka output: records are appended to per-partition batches and sent with one request each.

``AIOKafkaProducer.send`` costs ~30 us of Python per record; building batches ourselves and sending them with
``send_batch`` is several times cheaper, which is most of what makes the pipeline fast (docs/performance.md).
Records are partitioned like Kafka's default partitioner, so keyed outputs land where any client expects them.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from kairos.engine import metrics


class KafkaOutputs:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitions: dict[str, int] = {}
        self._pending: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}

    def add(self, topic: str, key: bytes, value: bytes) -> None:
        self._pending.setdefault((topic, -1), []).append((key, value))

    def take(self) -> dict[tuple[str, int], list[tuple[bytes, bytes]]]:
        """Everything added so far, to be handed to :meth:`enqueue` (a batch's outputs, taken while the next batch
        is already adding its own)."""
        pending, self._pending = self._pending, {}
        return pending

    async def enqueue(self, pending: dict[tuple[str, int], list[tuple[bytes, bytes]]]) -> list[asyncio.Future]:
        """Hand what :meth:`take` returned to the producer (stamped and ordered now); the futures resolve when the
        broker acknowledged each batch."""
        futures: list[asyncio.Future] = []
        if not pending:
            return futures
        for (topic, _), records in pending.items():
            n = await self._partition_count(topic)
            by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
            for key, value in records:
                by_partition.setdefault((murmur2(key) & 0x7FFFFFFF) % n, []).append((key, value))
            for partition, items in by_partition.items():
                futures.extend(await self._send(topic, partition, items))
            metrics.EVENTS_OUT.labels(topic).inc(len(records))
        return futures

    async def _send(self, topic: str, partition: int, items: list[tuple[bytes, bytes]]) -> list[asyncio.Future]:
        futures = []
        batch = self.producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await self._send_closed(batch, topic, partition))
                batch = self.producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes does not fit in an empty batch")
        if batch.record_count():
            futures.append(await self._send_closed(batch, topic, partition))
        return futures

    async def _send_closed(self, batch, topic: str, partition: int) -> asyncio.Future:
        """A batch is sent closed: aiokafka holds an open one for the producer's ``linger_ms`` in case ``send()``
        adds to it (2 ms with the worker's options: every batch of recommendations sat that long before the wire,
        after the records were stamped), and sends a closed one at once."""
        batch.close()
        return await self.producer.send_batch(batch, topic, partition=partition)

    async def _partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            partitions = await self.producer.partitions_for(topic)
            n = self._partitions[topic] = len(partitions)
        return n
