"""Ranker: tiny training run on engine-built features, torch-vs-ONNX parity, int8 rank agreement, registry round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the train extra")

from kairos.engine.config import EngineConfig  # noqa: E402
from kairos.models.ranker import OnnxRanker  # noqa: E402
from kairos.models.registry import publish_model  # noqa: E402
from kairos.models.session import SessionOptions, create_session  # noqa: E402
from kairos.onnx_export.parity import check_parity  # noqa: E402
from kairos.onnx_export.ranker_data import RankerRows, replay_rows, time_split  # noqa: E402
from kairos.onnx_export.ranker_export import export_ranker, quantize_int8, spearman  # noqa: E402
from kairos.onnx_export.ranker_model import DeepFMCrossRanker, RankerConfig, example_inputs  # noqa: E402
from kairos.onnx_export.ranker_train import TrainConfig, auc, evaluate, train_ranker  # noqa: E402
from kairos.schemas.events import ClickEvent  # noqa: E402
from kairos.schemas.features import RANKER_FEATURE_VERSION  # noqa: E402

TINY = RankerConfig(embed_dim=4, hidden=(8,))  # full hash-bucket tables: engine features index them


def synthetic_events(n_users=30, n_events=600, seed=0):
    """Shoppers who mostly stay in one 'home' category: a signal the features (category affinity) expose."""
    rng = random.Random(seed)
    items = {c: [f"{c}-item{i}" for i in range(8)] for c in ("shoes", "bags", "hats", "tees")}
    homes = {f"u{u}": rng.choice(list(items)) for u in range(n_users)}
    events = []
    for k in range(n_events):
        user = f"u{rng.randrange(n_users)}"
        cat = homes[user] if rng.random() < 0.85 else rng.choice(list(items))
        events.append(ClickEvent(event_id=f"e{k}", user_id=user, item_id=rng.choice(items[cat]), category_id=cat,
                                 action="view", ts=1.7e9 + 60.0 * k))
    return events


@pytest.fixture(scope="module")
def rows() -> RankerRows:
    return replay_rows(synthetic_events(), "synthetic", EngineConfig(), sample_rate=1.0, seed=0)


def test_replay_builds_rows_with_engine_features(rows):
    assert rows.dense.shape[1] == 16 and rows.dense.dtype == np.float32
    assert set(np.unique(rows.label)) == {0.0, 1.0}
    assert np.all(rows.position == 0) and np.all(rows.score_mask == 1)
    assert np.all(np.diff(rows.ts) >= 0)  # built in time order


def test_tiny_ranker_learns_on_held_out_time_slice(rows):
    train, test = time_split(rows, heldout_share=0.25)
    assert train.ts.max() <= test.ts.min()
    model, losses = train_ranker(train, TINY, TrainConfig(epochs=4, batch_size=128, lr=1e-2))
    assert losses[-1] < losses[0]
    metrics = evaluate(model, train, test)
    assert metrics["ranker_auc"] > 0.6, metrics


def test_torch_onnx_parity_lists_every_mismatch(tmp_path):
    torch.manual_seed(0)
    model = DeepFMCrossRanker(TINY).eval()
    path = export_ranker(model, tmp_path / "r.onnx")
    session = create_session(path, SessionOptions(device="cpu"))
    make = lambda b: example_inputs(b, seed=b)  # noqa: E731
    report = check_parity(model, session, make, (1, 7, 64, 300))
    assert report.ok, report.summary()
    assert set(report.max_abs_diff) == {1, 7, 64, 300}
    # a perturbed model must produce a listed mismatch per differing element
    with torch.no_grad():
        model.score_head.bias += 1.0
    bad = check_parity(model, session, make, (3,))
    assert len([m for m in bad.mismatches if m.output == "score"]) == 3
    assert "batch 3 score[0]" in bad.summary()


def test_int8_keeps_ranking_order_and_serves_through_registry(tmp_path, rows):
    model, _ = train_ranker(rows, TINY, TrainConfig(epochs=1, batch_size=256))
    fp32 = export_ranker(model, tmp_path / "r.onnx")
    int8 = quantize_int8(fp32, tmp_path / "r8.onnx")
    feeds = rows.inputs()
    s32 = create_session(fp32, SessionOptions(device="cpu")).run(["score"], feeds)[0]
    s8 = create_session(int8, SessionOptions(device="cpu")).run(["score"], feeds)[0]
    assert spearman(s32, s8) > 0.95
    publish_model(tmp_path / "models", "ranker", "1", "ranker", fp32, feature_version=RANKER_FEATURE_VERSION)
    ranker = OnnxRanker.from_dir(tmp_path / "models")
    np.testing.assert_allclose(ranker.score(feeds), s32, atol=1e-6)
    assert ranker.click_logit(feeds).shape == s32.shape


def test_auc_matches_definition():
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.1, 0.4, 0.4, 0.3])
    # pairs (pos, neg): 0.9 beats all 3; 0.4 beats 0.1, 0.3 and ties 0.4 -> (3 + 2.5) / 6
    assert auc(labels, scores) == pytest.approx(5.5 / 6)
