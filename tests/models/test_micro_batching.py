from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kairos.models.batching import MicroBatcher
from kairos.models.ranker import OnnxRanker

from models_factories import publish_tiny_ranker, ranker_rows


async def test_concurrent_callers_share_one_call():
    seen = []

    def fn(inputs):
        seen.append(len(inputs["x"]))
        return inputs["x"] + 1

    b = MicroBatcher(fn, max_rows=100, max_wait_ms=20)
    outs = await asyncio.gather(*(b.submit({"x": np.arange(i, i + 3, dtype=np.float32)}) for i in range(5)))
    await b.close()
    assert seen == [15]
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, np.arange(i, i + 3) + 1)


async def test_batches_are_capped_at_max_rows():
    seen = []

    def fn(inputs):
        seen.append(len(inputs["x"]))
        return inputs["x"]

    b = MicroBatcher(fn, max_rows=8, max_wait_ms=20)
    outs = await asyncio.gather(*(b.submit({"x": np.full(3, i, np.float32)}) for i in range(6)))
    await b.close()
    assert max(seen) <= 8 and sum(seen) == 18
    assert [o[0] for o in outs] == list(range(6))


async def test_lone_caller_waits_at_most_max_wait():
    b = MicroBatcher(lambda inputs: inputs["x"], max_rows=1000, max_wait_ms=5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await b.submit({"x": np.ones(1, np.float32)})
    await b.close()
    assert loop.time() - start < 0.5


async def test_errors_reach_every_caller_and_batcher_survives():
    calls = []

    def fn(inputs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return inputs["x"]

    b = MicroBatcher(fn, max_rows=100, max_wait_ms=10)
    results = await asyncio.gather(*(b.submit({"x": np.ones(2, np.float32)}) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    np.testing.assert_array_equal(await b.submit({"x": np.ones(2, np.float32)}), np.ones(2))
    await b.close()


async def test_onnx_ranker_async_matches_sync(model_dir):
    publish_tiny_ranker(model_dir, "1")
    ranker = OnnxRanker.from_dir(model_dir, max_wait_ms=10)
    rows = [ranker_rows(4, seed=i) for i in range(6)]
    outs = await asyncio.gather(*(ranker.score_async(r) for r in rows))
    for r, out in zip(rows, outs):
        np.testing.assert_allclose(out, ranker.score(r), rtol=1e-6)
    assert ranker._batcher.stats.batches < 6
    pctr = 1 / (1 + np.exp(-ranker.click_logit(rows[0])))
    assert pctr.shape == (4,)
    await ranker.close()


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_rows=0)
