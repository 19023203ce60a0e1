"""The engine ranking with a real ONNX session (a tiny hand-built ranker published into a model directory):
loaded by the worker's own loader, one inference per partition batch, the model's version on the output."""

from __future__ import annotations

import numpy as np
from models_factories import publish_tiny_ranker

from kairos.agents.settings import Settings
from kairos.agents.worker import load_ranker
from kairos.engine.config import EngineConfig
from kairos.engine.selection import Selector
from kairos.engine.state import UserInterest
from kairos.schemas.events import ClickEvent


def _click(user, item, category, ts):
    return ClickEvent(event_id=f"{user}-{ts}", user_id=user, item_id=item, category_id=category, action="view", ts=ts)


def test_selector_ranks_with_the_onnx_model(model_dir):
    publish_tiny_ranker(model_dir, "v1")
    ranker = load_ranker(Settings(model_dir=model_dir))
    assert ranker is not None and ranker.provider == "CPUExecutionProvider"
    calls = []
    original = ranker.score
    ranker.score = lambda features: calls.append(len(features["item_id"])) or original(features)
    selector = Selector(EngineConfig(), ranker=ranker, exploration=False)
    users = {}
    for n in range(600):
        uid = f"u{n % 20}"
        user = users.setdefault(uid, UserInterest.new(uid, selector.config))
        selector.observe(user, _click(uid, f"i{n % 37}", f"c{n % 4}", 1.7e9 + n))
    prepared = [selector.prepare(user, 1.7e9 + 700) for user in users.values()]
    calls.clear()
    scores = selector.recommender.score_many([features for _, features in prepared])
    assert len(calls) == 1 and calls[0] == sum(len(pool.items) for pool, _ in prepared)
    # the tiny model scores sum(dense): check the engine used it, not the fallback
    pool, features = prepared[0]
    assert np.allclose(scores[0], features["dense"].sum(axis=1), atol=1e-4)
    selection = selector.finish(users["u0"], pool, scores[0], 1.7e9 + 700)
    assert selection.items and "ranker@v1" in selector.model_version


def test_missing_model_means_the_fallback(tmp_path):
    assert load_ranker(Settings(model_dir=tmp_path / "nothing-here")) is None


def test_a_huge_ranking_call_runs_in_bounded_chunks_with_the_same_scores(model_dir, monkeypatch):
    """A backlog batch is scored in runs of at most MAX_ROWS_PER_RUN rows (bounding onnxruntime's arena peak);
    the scores are those of one run."""
    from models_factories import ranker_rows

    import kairos.models.ranker as ranker_module

    publish_tiny_ranker(model_dir, "v1")
    ranker = load_ranker(Settings(model_dir=model_dir))
    rows = ranker_rows(1000, seed=3)
    whole = ranker.predict(rows)
    session = ranker.handle.current.session
    runs = []
    original_run = session.run
    monkeypatch.setattr(ranker_module, "MAX_ROWS_PER_RUN", 128)
    monkeypatch.setattr(session, "run", lambda names, inputs: runs.append(len(inputs["item_id"])) or original_run(names, inputs), raising=False)
    chunked = ranker.predict(rows)
    assert runs == [128] * 7 + [104]
    for name in whole:
        assert np.allclose(chunked[name], whole[name], atol=1e-6)
