"""aiokafka client options from the settings: security, and the timeouts the embedded broker needs."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer

from kairos.agents.assignor import assignment_strategies
from kairos.agents.settings import Settings


def kafka_client_options(settings: Settings) -> dict:
    """Options shared by producers, consumers and the admin client (TLS and SASL when configured)."""
    options: dict = {"security_protocol": settings.kafka_security_protocol, "client_id": "kairos"}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return options


def faust_credentials(settings: Settings):
    """The same security for the Faust app (the copy agent's consumer and producer, the web views' app): Faust takes
    it as one credentials object, not as aiokafka options. None for PLAINTEXT."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = kafka_client_options(settings).get("ssl_context")
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
        ssl_context=context, mechanism=settings.kafka_sasl_mechanism,
    )  # fmt: skip


def consumer_options(settings: Settings, input_counts: Iterable[int] = ()) -> dict:
    """Manual offsets (the source of truth is the state store), short session timeouts: Tansu holds JoinGroup
    for half the session timeout (docs/operations.md), and fast failover matters on real Kafka too.
    ``input_counts``: the input topics' partition counts, which decide the assignors offered (none given: taken
    as one per state, as for the benchmark's single-member baseline group)."""
    return {
        **kafka_client_options(settings),
        # Every input partition of a state partition, of *every* input topic, to one consumer: the co-partitioning
        # that per-partition user state relies on (agents/assignor.py). aiokafka's default (round robin) does not.
        "partition_assignment_strategy": assignment_strategies(settings.partitions, input_counts),
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.session_timeout_ms,
        "max_poll_interval_ms": 300_000,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }


def producer_options(settings: Settings) -> dict:
    return {**kafka_client_options(settings), "linger_ms": 2, "acks": "all", "max_batch_size": 512 * 1024}


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> set[int]:
    """The partition ids of ``topic`` (empty when it is still unknown after ``timeout_s``): a reader that assigns
    itself every partition of a topic (no consumer group) needs them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids or loop.time() > deadline:
            return ids or set()
        await consumer.topics()  # refreshes the metadata
        await asyncio.sleep(0.1)


async def stop_reader(task: asyncio.Task | None, consumer: AIOKafkaConsumer | None) -> None:
    """Stop a background reading task, then its consumer (the task may be mid-fetch: cancel, then wait)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if consumer is not None:
        await consumer.stop()
