"""Feeds generated copy from the copies topic into a worker's copy book (read side of the copy agent)."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from kairos.agents.kafka_config import kafka_client_options, stop_reader, topic_partitions
from kairos.agents.settings import Settings
from kairos.engine.copywriting import CopyBook

log = logging.getLogger(__name__)


class CopyFeed:
    """Reads every partition of the copies topic from the start (no consumer group: every worker needs all
    copy, whatever partitions of the inputs it owns)."""

    def __init__(self, settings: Settings, bootstrap: str, copybook: CopyBook) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.copybook = copybook
        self.received = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        topic = self.settings.topics.copies
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
            **kafka_client_options(self.settings),
        )  # fmt: skip
        await self._consumer.start()
        ids = await topic_partitions(self._consumer, topic)
        self._consumer.assign([TopicPartition(topic, p) for p in sorted(ids)])
        await self._consumer.seek_to_beginning()
        self._task = asyncio.create_task(self._run(), name="copy-feed")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batches.values():
                for record in records:
                    self._apply(record.value)

    def _apply(self, value: bytes | None) -> None:
        try:
            data = orjson.loads(value or b"")
            if data.get("kind") == "ad":
                if data.get("source") != "template":  # the original headline back is no new variant
                    self.copybook.add_ad_variant(str(data["item_id"]), str(data["variant_id"]), str(data["text"]))
            elif data.get("source") == "template":  # the hot path writes its own, which can say why it shows it
                self.copybook.settle(str(data["item_id"]), str(data["segment"]))
            else:
                self.copybook.put(str(data["item_id"]), str(data["segment"]), str(data["text"]))
            self.received += 1
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed copy record: %s", exc)

    async def stop(self) -> None:
        await stop_reader(self._task, self._consumer)
