"""A stopping worker does not wait for a copy batch to finish: ``write_copy`` cancels it at its next decoding step.

A batch of 16 requests takes ~10 s on one CPU thread with SmolLM2 (more beside a busy hot path), and a process
cannot exit while its executor thread is generating: ``kairos demo`` gave its copy agent 15 s after SIGTERM and
sometimes had to kill it. Here the app runs on a real broker and Redis with a generator that would take 60 s per
batch and honours the cancel event the way the ONNX generator does (checked before every step).
"""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kairos.agents import app as app_module
from kairos.agents.runtime import Services, running_app, wait_for
from kairos.engine.copywriting import CopyRequest
from kairos.models.generator import GenerationCancelled
from kairos.schemas.keys import RedisKeys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class SlowGenerator:
    """60 s per call in 50-ms steps, unless its ``cancel`` event is set."""

    name, version = "slow", "1"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled_after_s: float | None = None

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        start = time.monotonic()
        self.started.set()
        for _ in range(1200):
            if cancel is not None and cancel.is_set():
                self.cancelled_after_s = time.monotonic() - start
                raise GenerationCancelled("cancelled")
            time.sleep(0.05)
        return ["Soft blue jeans, ready for the weekend."] * len(prompts)


def test_a_stopping_worker_cancels_the_copy_batch_it_is_generating(make_settings, broker, redis_url, tmp_path, monkeypatch):
    (tmp_path / "no-data").mkdir()
    settings = make_settings(redis_url=redis_url, model_dir=tmp_path / "no-models", data_dir=tmp_path / "no-data")
    svc = Services(broker, redis_url, False, False)
    slow = SlowGenerator()
    request = CopyRequest("jeans-1", "cat:denim", "Blue jeans", "denim", 30.0, ("denim",))

    monkeypatch.setattr(app_module, "load_generator", lambda settings, beside_hot_path=False: slow)

    async def scenario() -> float:
        async with running_app(settings, svc) as app:
            assert app.copy_writer.version == "slow@1"
            producer = AIOKafkaProducer(bootstrap_servers=broker)
            await producer.start()
            await producer.send_and_wait(settings.topics.copy_requests, orjson.dumps(request.to_json()), key=b"jeans-1")
            await producer.stop()
            assert await asyncio.to_thread(slow.started.wait, 30), "the copy agent never started generating"
            stopping = time.monotonic()
        return time.monotonic() - stopping

    stop_s = asyncio.run(scenario())
    assert slow.cancelled_after_s is not None and slow.cancelled_after_s < 30, "the batch ran on instead of stopping"
    assert stop_s < 20, f"the app took {stop_s:.1f} s to stop (the batch alone would have taken 60)"

    async def copies_published() -> list:
        consumer = AIOKafkaConsumer(settings.topics.copies, bootstrap_servers=broker, auto_offset_reset="earliest")
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=2000)
            return [r for records in batches.values() for r in records]
        finally:
            await consumer.stop()

    # nothing of the cancelled batch was published or written to Redis
    assert asyncio.run(copies_published()) == []
    keys = RedisKeys(settings.topic_prefix, settings.consumer_group)
    assert redis.Redis.from_url(redis_url).hgetall(keys.copy("cat:denim")) == {}

    # and its request was not committed: the next worker of the group reads it again and writes its copy
    fast = SlowGenerator()
    fast.generate = lambda prompts, **kwargs: ["Soft blue jeans, ready for the weekend."] * len(prompts)
    monkeypatch.setattr(app_module, "load_generator", lambda settings, beside_hot_path=False: fast)

    async def restarted() -> None:
        async with running_app(settings, svc):
            store = redis.Redis.from_url(redis_url)
            assert await wait_for(lambda: store.hgetall(keys.copy("cat:denim")), 30), "the request was not read again"

    asyncio.run(restarted())
    published = asyncio.run(copies_published())
    assert [orjson.loads(r.value)["text"] for r in published] == ["Soft blue jeans, ready for the weekend."]
    assert redis.Redis.from_url(redis_url).hgetall(keys.copy("cat:denim")) == {b"jeans-1": b"Soft blue jeans, ready for the weekend."}
