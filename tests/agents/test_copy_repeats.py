"""The copy agent writes a key once when several workers ask for it before its answer reaches them (each worker's
copy book asks for its most missed keys, and the popular keys are the same on every worker). Real broker and Redis;
a generator that counts what it is asked to write."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from kairos.agents import app as app_module
from kairos.agents.runtime import Services, running_app, wait_for
from kairos.engine.copywriting import CopyRequest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class CountingGenerator:
    name, version = "counting", "1"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        self.prompts.extend(prompts)
        return ["Soft blue jeans, ready for the weekend." if "jeans" in p.lower() else "A warm red scarf for winter."
                for p in prompts]  # fmt: skip


def test_a_key_asked_for_again_before_its_answer_arrived_is_written_once(make_settings, broker, redis_url, tmp_path, monkeypatch):
    (tmp_path / "no-data").mkdir()
    settings = make_settings(redis_url=redis_url, model_dir=tmp_path / "no-models", data_dir=tmp_path / "no-data")
    svc = Services(broker, redis_url, False, False)
    generator = CountingGenerator()
    monkeypatch.setattr(app_module, "load_generator", lambda settings, beside_hot_path=False: generator)
    jeans = CopyRequest("jeans-1", "cat:denim", "Blue jeans", "denim", 30.0, ("denim",))
    scarf = CopyRequest("scarf-1", "cat:scarf", "Red scarf", "scarf", 12.0, ("scarf",))
    skipped_before = REGISTRY.get_sample_value("kairos_copy_repeats_skipped_total") or 0.0

    async def scenario() -> dict:
        async with running_app(settings, svc) as app:
            producer = AIOKafkaProducer(bootstrap_servers=broker)
            await producer.start()

            async def ask(*requests: CopyRequest) -> None:
                for request in requests:
                    await producer.send(settings.topics.copy_requests, orjson.dumps(request.to_json()),
                                        key=request.item_id.encode())  # fmt: skip
                await producer.flush()

            await ask(jeans, jeans)  # two workers asked in the same moment
            assert await wait_for(lambda: ("jeans-1", "cat:denim") in app.copybook._texts, 30)
            await ask(jeans, scarf)  # a third asked before the answer reached it; then a new key
            assert await wait_for(lambda: ("scarf-1", "cat:scarf") in app.copybook._texts, 30)
            await producer.stop()
            return dict(app.copybook._texts)

    texts = asyncio.run(scenario())
    assert texts[("jeans-1", "cat:denim")] == "Soft blue jeans, ready for the weekend."
    assert texts[("scarf-1", "cat:scarf")] == "A warm red scarf for winter."
    assert sum("jeans" in p.lower() for p in generator.prompts) == 1 and len(generator.prompts) == 2
    assert (REGISTRY.get_sample_value("kairos_copy_repeats_skipped_total") or 0.0) - skipped_before == 2
