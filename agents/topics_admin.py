"""Create the topics Kairos needs, and check the co-partitioning the worker relies on."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from kairos.agents.kafka_config import kafka_client_options
from kairos.agents.settings import Settings

log = logging.getLogger(__name__)


def all_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [
        t.clicks, t.purchases, t.impressions, t.rekeyed, t.recommendations,
        t.dead_letters, t.ad_requests, t.ad_scores, t.copy_requests, t.copies, t.discovery,
    ]  # fmt: skip


async def ensure_topics(settings: Settings, bootstrap: str, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics: the inputs with ``settings.input_partitions_of`` them, the others with
    ``settings.partitions``; return topic -> partition count.

    Each input topic's partition count must be a multiple of ``settings.partitions``: a user's state lives with
    state partition ``p % partitions`` of input partition ``p`` of every input topic (co-partitioning,
    agents/assignor.py), so a count that is not is refused with a clear error instead of silently splitting state.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_client_options(settings))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = await _partition_counts(admin)
        missing = [name for name in all_topics(settings) if name not in existing]
        if missing:
            new = [
                NewTopic(name, settings.input_partitions_of(name) or settings.partitions, settings.replication_factor)
                for name in missing
            ]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            log.info("created topics %s", missing)
        counts = await _wait_for_topics(admin, all_topics(settings), timeout_s)
    finally:
        await admin.close()
    input_counts(settings, counts)
    return counts


def input_counts(settings: Settings, counts: dict[str, int]) -> dict[str, int]:
    """The input topics' partition counts out of ``counts`` (topic -> count), each a multiple of
    ``settings.partitions``, or RuntimeError naming those that are not."""
    inputs = {name: counts[name] for name in settings.topics.inputs()}
    odd = {name: count for name, count in inputs.items() if count % settings.partitions}
    if odd:
        raise RuntimeError(
            f"input topics {odd} have partition counts that are not multiples of KAIROS_PARTITIONS="
            f"{settings.partitions} (co-partitioned by user: input partition p feeds state partition "
            "p % KAIROS_PARTITIONS); set KAIROS_PARTITIONS to a divisor of all of them"
        )
    return inputs


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    described = await admin.describe_topics()
    return {t["topic"]: len(t["partitions"]) for t in described if not t.get("error_code") and t["partitions"]}


async def _wait_for_topics(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        counts = await _partition_counts(admin)
        if all(name in counts for name in names):
            return counts
        if loop.time() > deadline:
            raise RuntimeError(f"topics not visible after {timeout_s}s: {[n for n in names if n not in counts]}")
        await asyncio.sleep(0.2)
