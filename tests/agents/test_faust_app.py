"""The Faust application end to end on a real broker and Redis: the ingest service answers events, and the
``write_copy`` agent turns the copy requests of the hot path into copy that reaches the workers' copy book and
Redis, without the hot path ever waiting for it."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from factories import T0, click
from prometheus_client import REGISTRY

from kairos.agents.runtime import Services, running_app, wait_for
from kairos.agents.settings import Settings
from kairos.schemas.codec import encode
from kairos.schemas.keys import RedisKeys

pytestmark = pytest.mark.integration


def test_copy_agent_fills_the_copy_book(kafka_broker, redis_server, tmp_path):
    prefix = f"faust{uuid.uuid4().hex[:8]}"
    settings = Settings(
        topic_prefix=prefix, consumer_group=f"{prefix}-g", partitions=2, session_timeout_ms=6000, model_dir=tmp_path
    )
    svc = Services(kafka_broker, redis_server, False, False)

    def checkpoints_built() -> float:
        return REGISTRY.get_sample_value("kairos_step_seconds_count", {"step": "checkpoint"}) or 0.0

    before = checkpoints_built()

    async def scenario():
        async with running_app(settings, svc) as app:
            worker = app.ingest_worker
            producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
            await producer.start()
            events = [click(user=f"u{n % 5}", item=f"i{n % 11}", category=f"c{n % 3}", ts=T0 + n) for n in range(200)]
            for event in events:
                await producer.send(settings.topics.clicks, encode(event), key=event.user_id.encode())
            await producer.stop()
            assert await wait_for(lambda: worker.stats["events"] >= len(events), 60)
            # The first recommendations carried templates (never waiting); the agent's answer arrives after. With
            # no generator it is the template: the copy book marks the key answered (no request again) and the
            # hot path goes on writing its own template, which can say why the product is shown.
            assert await wait_for(lambda: len(app.copybook._settled) > 0, 60), "no copy reached the copy book"
            return list(app.copybook._settled), dict(app.copybook._texts), app.copy_writer.version

    settled, texts, writer = asyncio.run(scenario())
    # stopping released both partitions, each with a global checkpoint, timed as a step (the event loop's stall)
    assert checkpoints_built() >= before + 2
    assert writer == "template"  # no generator model in an empty model dir: documented fallback
    assert texts == {}
    item, segment = settled[0]
    assert segment.startswith("cat:")
    stored = redis.Redis.from_url(redis_server).hget(RedisKeys(prefix, settings.consumer_group).copy(segment), item)
    assert stored is not None and stored.decode().startswith(item.title())  # the template, for the API
