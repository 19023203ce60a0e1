"""The two roles of the Faust app in separate processes, as ``kairos demo`` and production run them, on a real
broker and Redis:

    this process: Faust app, ingest role only (hot path; no copy agent, no generator)
      clicks -> recommendations with template copy + copy requests (copy-requests topic)
    child process (``python -m kairos worker --roles copy``, started by ``CopyAgentProcess`` as the demo does):
      copy requests -> write_copy: tiny ONNX generator (tests/agents/test_ad_copy_e2e.py) -> copies topic + Redis
    this process again: copy feed -> CopyBook -> later recommendations carry the generated text

Both apps share the Faust app id (``{consumer_group}-agents``); only the child subscribes to copy-requests, so it
is assigned every partition of it, and text written by its generator can only have come from it (this process
has no generator and no ``write_copy`` agent).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaProducer
from factories import T0, click

from kairos.agents.ops import worker_environment
from kairos.agents.runtime import (
    CopyAgentProcess,
    CopySourceMonitor,
    RecommendationMonitor,
    Services,
    copy_agent_environment,
    running_app,
    wait_for,
)
from kairos.schemas.codec import encode
from kairos.schemas.keys import RedisKeys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VERSION = "20990101-000009"
USERS = [f"shopper{n}" for n in range(4)]


@pytest.fixture(scope="module")
def tiny_generator_dir(tmp_path_factory) -> Path:
    """A random tiny Llama published as ``generator``: everything it says passes the safety filter and is never
    empty, so every copy it writes is published as ``generated`` (see test_ad_copy_e2e.py)."""
    pytest.importorskip("torch", reason="the tiny generator is exported with torch (train extra)")
    from test_ad_copy_e2e import publish_tiny_generator, safe_vocab

    tmp = tmp_path_factory.mktemp("copy-process")
    publish_tiny_generator(tmp / "models", tmp / "export", safe_vocab(), VERSION, banned_only=False)
    return tmp / "models"


def clicks(round_: int) -> list:
    return [click(user=USERS[n % 4], item=f"i{n % 11}", category=f"c{n % 3}", ts=T0 + round_ * 100 + n)
            for n in range(60)]  # fmt: skip


def test_copy_role_in_its_own_process_feeds_the_ingest_process(make_settings, broker, redis_url, tiny_generator_dir, tmp_path):
    (tmp_path / "no-data").mkdir()  # built-in creative inventory: a quick start
    settings = make_settings(redis_url=redis_url, model_dir=tiny_generator_dir, data_dir=tmp_path / "no-data")
    svc = Services(broker, redis_url, False, False)
    copy_agent = None

    async def scenario():
        nonlocal copy_agent
        copy_agent = await CopyAgentProcess.start(settings, svc, tmp_path / "copy-agent.log")  # as the demo does
        async with running_app(settings, svc, roles=frozenset({"ingest"})) as app:
            ready = await copy_agent.wait_ready(60.0)
            worker = app.ingest_worker
            copies = CopySourceMonitor(settings, broker)
            await copies.start()
            monitor = RecommendationMonitor(settings, broker, copy_source=copies)
            await monitor.start()
            producer = AIOKafkaProducer(bootstrap_servers=broker)
            await producer.start()
            sent = 0

            async def send_round(r: int) -> None:
                nonlocal sent
                for event in clicks(r):
                    await producer.send(settings.topics.clicks, encode(event), key=event.user_id.encode())
                    sent += 1
                await producer.flush()
                assert await wait_for(lambda: worker.stats["events"] >= sent, 30), f"round {r} not consumed"

            def generated_copy_recommended() -> bool:
                return any(copies.is_generated(item, text) for item, text in monitor.copies)

            await send_round(0)  # template copy for every item, and a copy request for each
            assert await wait_for(lambda: copies.sources["product:generated"] > 0, 30), (
                f"no generated copy on the copies topic; the copy agent's log:\n{copy_agent.log_tail()}"
            )
            for r in range(1, 10):  # the same shoppers again: their segments' copy is in the copy book by now
                await send_round(r)
                if await wait_for(generated_copy_recommended, 3):
                    break
            await producer.stop()
            await monitor.stop()
            await copies.stop()
            assert monitor.with_generated_copy, "the monitor kept no recommendation with generated copy"
            return ready, dict(copies.sources), copies.generated, dict(app.copybook._texts), app, monitor.copies

    try:
        ready, sources, generated, copybook, app, recommended = asyncio.run(scenario())
    finally:
        status = copy_agent.stop() if copy_agent is not None else None

    # the child, and only the child, runs the copy role: all copy-requests partitions, the published generator
    assert ready["pid"] == copy_agent.pid and ready["roles"] == ["copy"]
    assert ready["copy_partitions"] == [0, 1] and ready["copy_writer"] == f"generator@{VERSION}"
    assert "write_copy" not in {agent.name.rsplit(".", 1)[-1] for agent in app.agents.values()}
    assert app.copy_partitions is None and app.copy_writer.version == "template"  # no generator in this process
    assert set(sources) == {"product:generated"}  # every copy record was written by the child's generator
    # what it wrote reached this process's copy book (copy feed) and Redis (for the API)
    assert generated and all(any(k[0] == item and t == text for k, t in copybook.items()) for item, text in generated)
    store = redis.Redis.from_url(redis_url)
    keys = RedisKeys(settings.topic_prefix, settings.consumer_group)
    in_redis = {(item.decode(), text.decode()) for (_, segment) in copybook for item, text in store.hgetall(keys.copy(segment)).items()}
    assert set(generated) <= in_redis
    # and later recommendations of the hot path carry it
    assert any((item, text) in generated for item, text in recommended), "no recommendation carried generated copy"
    # stopped with SIGTERM: Faust left the group and the process exited by itself, its ready file removed
    assert status == 0, copy_agent.log_tail()
    assert not copy_agent.ready_path.exists()


def test_a_copy_agent_that_cannot_start_says_why(make_settings, broker, redis_url, tmp_path):
    settings = make_settings(redis_url=redis_url, model_dir=tmp_path)
    svc = Services(broker, redis_url, False, False)
    env = {**copy_agent_environment(settings, svc), "KAIROS_PARTITIONS": "0"}  # invalid: the worker refuses to start
    copy_agent = CopyAgentProcess(settings, svc, tmp_path / "copy-agent.log", env=env)
    try:
        with pytest.raises(RuntimeError, match="exited with status 2"):
            asyncio.run(copy_agent.wait_ready(60.0))
    finally:
        copy_agent.stop()
    assert "KAIROS_PARTITIONS" in copy_agent.log_tail()


def test_copy_agent_environment_points_at_the_services_it_is_given(make_settings, tmp_path):
    settings = make_settings(model_dir=Path("var/models"), data_dir=tmp_path, onnx_threads=2)
    env = copy_agent_environment(settings, Services("127.0.0.1:1234", "redis://127.0.0.1:5678/0", True, True))
    assert env["KAIROS_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1234"  # the demo's embedded broker, not a new one
    assert env["KAIROS_REDIS_URL"] == "redis://127.0.0.1:5678/0"
    assert (env["KAIROS_TOPIC_PREFIX"], env["KAIROS_CONSUMER_GROUP"]) == (settings.topic_prefix, settings.consumer_group)
    assert env["KAIROS_PARTITIONS"] == "2" and env["KAIROS_ONNX_THREADS"] == "2"
    assert env["KAIROS_MODEL_DIR"] == str(Path("var/models").resolve()) and env["KAIROS_DATA_DIR"] == str(tmp_path)
    assert not any(name.startswith("KAIROS_") and name not in worker_environment(settings) for name in env)


def test_demo_runs_the_copy_agent_in_its_own_process_and_stops_it(make_settings, broker, redis_url, tiny_generator_dir, tmp_path, monkeypatch):
    from kairos.agents import demo
    from kairos.engine.simulator import ShopperSimulator

    monkeypatch.setattr(demo, "COPY_AGENT_LOG", tmp_path / "demo-copy-agent.log")
    (tmp_path / "no-data").mkdir()
    settings = make_settings(redis_url=redis_url, model_dir=tiny_generator_dir, data_dir=tmp_path / "no-data")
    source = demo.EventSource("SIMULATED", True, list(ShopperSimulator(seed=0).events(300)))
    svc = Services(broker, redis_url, False, False)
    summary = asyncio.run(demo.run_demo(settings, svc, source, rate=None, examples=1))

    note = summary["copy_agent"]
    assert note["ready"] and note["where"] == f"own process (pid {note['pid']})"
    assert note["writer"] == f"generator@{VERSION}"  # the child loaded the generator; the demo's process has none
    assert summary["events"] == 305  # 300 events + 5 malformed payloads, all consumed by the in-process hot path
    assert 0 <= summary["copy_requests"]["outstanding"] <= settings.copy_in_flight
    assert summary["copy_requests"]["waiting"] >= 0
    with pytest.raises(ProcessLookupError):  # stopped and reaped when the demo ended
        os.kill(note["pid"], 0)
    assert "write_copy owns copy-requests partitions [0, 1]" in (tmp_path / "demo-copy-agent.log").read_text()
