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
    """Create missing topics with ``settings.partitions`` partitions; return topic -> partition count.

    The inputs must all have the same partition count: a user's state lives with partition ``p`` of every input
    topic (co-partitioning), so a mismatch is refused with a clear error instead of silently splitting state.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_client_options(settings))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = await _partition_counts(admin)
        missing = [name for name in all_topics(settings) if name not in existing]
        if missing:
            new = [NewTopic(name, settings.partitions, settings.replication_factor) for name in missing]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            log.info("created topics %s", missing)
        counts = await _wait_for_topics(admin, all_topics(settings), timeout_s)
    finally:
        await admin.close()
    inputs = {name: counts[name] for name in settings.topics.inputs()}
    if len(set(inputs.values())) != 1:
        raise RuntimeError(f"input topics must have equal partition counts (co-partitioned by user), got {inputs}")
    return counts


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
