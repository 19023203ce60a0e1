"""Off-policy estimators on synthetic logs whose true values are known by construction."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kairos.engine.ope import (
    BanditLog,
    ClickModel,
    engine_policy,
    evaluate_open_bandit,
    evaluate_policy,
    load_open_bandit,
    logging_policy_replay,
    selector_policy,
)

DATA_DIR = Path("/work/shared/data")
TRUE_CTR = np.array([0.30, 0.10, 0.10, 0.05])  # per item, the same at every position


def uniform_log(rows=20_000, n_items=4, n_positions=2, seed=0):
    """Uniform logging: every item equally likely at every position (pscore 1 / n_items)."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, n_items, size=rows)
    return BanditLog(
        actions=actions,
        positions=rng.integers(0, n_positions, size=rows),
        rewards=(rng.random(rows) < TRUE_CTR[actions]).astype(float),
        pscore=np.full(rows, 1.0 / n_items),
        user_features=np.full((rows, 4), "u"),
        affinity=np.zeros((rows, n_items)),
        n_items=n_items,
        n_positions=n_positions,
    )


def always(item, log):
    probs = np.zeros((len(log), log.n_items, log.n_positions))
    probs[:, item, :] = 1.0
    return probs


def test_replaying_the_logging_policy_gives_logged_ctr_exactly():
    log = uniform_log(rows=2000)
    result = evaluate_policy(log, logging_policy_replay(log), n_boot=200)
    point = result["estimates"]
    assert point["ips"] == pytest.approx(point["logged_ctr"])
    assert point["snips"] == pytest.approx(point["logged_ctr"])
    assert result["ci95"]["ips"] == pytest.approx(result["ci95"]["logged_ctr"])


def test_ips_and_snips_recover_a_deterministic_policy_value():
    log = uniform_log()
    result = evaluate_policy(log, always(0, log), n_boot=300, seed=1)
    for name in ("ips", "snips"):
        assert result["estimates"][name] == pytest.approx(0.30, abs=0.03)
        lo, hi = result["ci95"][name]
        assert lo <= 0.30 <= hi and hi - lo < 0.05
    assert result["estimates"]["logged_ctr"] == pytest.approx(TRUE_CTR.mean(), abs=0.01)


def test_dr_with_the_true_click_model_is_unbiased_and_tight():
    log = uniform_log()
    q_true = np.broadcast_to(TRUE_CTR[None, :, None], (len(log), log.n_items, log.n_positions))
    result = evaluate_policy(log, always(1, log), q_hat=q_true, n_boot=300)
    assert result["estimates"]["dm"] == pytest.approx(0.10)
    assert result["estimates"]["dr"] == pytest.approx(0.10, abs=0.015)
    dr_width = np.diff(result["ci95"]["dr"])[0]
    # with the true model the DR residuals are pure noise, so its interval is tighter than IPS's here
    assert dr_width <= np.diff(result["ci95"]["ips"])[0] + 1e-12


def test_engine_policy_probabilities_are_distributions_per_position():
    log = uniform_log(rows=500)
    model = ClickModel().fit(log)
    probs = engine_policy(model, epsilon=0.2)(log)
    assert probs.shape == (500, 4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # the best item (0) is the engine's greedy pick at position 0 once the model has seen its clicks
    assert probs[:, 0, 0].mean() == pytest.approx(0.8 + 0.2 / 4)


def test_selector_policy_is_the_engine_corrector_learning_what_each_segment_clicks():
    """The live engine's corrector learns from the logged rows: item 0 for segment "a", item 2 for "b"."""
    rng = np.random.default_rng(1)
    rows, n_items = 6000, 4
    segments = rng.choice(["a", "b"], size=rows)
    actions = rng.integers(0, n_items, size=rows)
    best = np.where(segments == "a", 0, 2)
    clicks = rng.random(rows) < np.where(actions == best, 0.4, 0.02)
    features = np.stack([segments, segments, segments, segments], axis=1)
    log = BanditLog(actions, rng.integers(0, 2, size=rows), clicks.astype(float), np.full(rows, 0.25), features,
                    np.zeros((rows, n_items)), n_items, 2)  # fmt: skip
    probs = selector_policy(log, epsilon=0.1)(log)
    assert probs.shape == (rows, n_items, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    top = 0.9 + 0.1 / n_items
    assert probs[segments == "a", 0, 0].mean() == pytest.approx(top)
    assert probs[segments == "b", 2, 0].mean() == pytest.approx(top)


def write_open_bandit_dir(root, rows=600, n_items=5, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "timestamp": pd.date_range("2019-11-24", periods=rows, freq="min", tz="UTC").astype(str),
        "item_id": rng.integers(0, n_items, size=rows),
        "position": rng.integers(1, 4, size=rows),
        "click": (rng.random(rows) < 0.2).astype(int),
        "propensity_score": np.full(rows, 1.0 / n_items),
    })
    for j in range(4):
        frame[f"user_feature_{j}"] = rng.choice(["h1", "h2"], size=rows)
    for a in range(n_items):
        frame[f"user-item_affinity_{a}"] = rng.integers(0, 2, size=rows).astype(float)
    folder = root / "open_bandit" / "bts" / "all"
    folder.mkdir(parents=True)
    frame.sample(frac=1.0, random_state=seed).to_parquet(folder / "log.parquet")  # out of time order on disk
    return frame


def test_evaluate_open_bandit_on_tiny_synthetic_dir(tmp_path):
    frame = write_open_bandit_dir(tmp_path)
    result = evaluate_open_bandit(tmp_path, seed=0, train_fraction=0.5, n_boot=200)
    assert result["rounds"] == 300 and result["train_rounds"] == 300
    assert result["logged_ctr"] == pytest.approx(frame["click"].iloc[300:].mean())  # second half in time order
    for key in ("engine_ips", "engine_snips", "engine_dr", "engine_dm"):
        assert np.isfinite(result[key])
    for lo, hi in result["ci95"].values():
        assert lo <= hi
    assert set(result["ci95"]) == {"logged_ctr", "ips", "snips", "dm", "dr"}
    again = evaluate_open_bandit(tmp_path, seed=0, train_fraction=0.5, n_boot=200)
    assert again == result  # seeded end to end


def test_custom_policy_equal_to_logging_gives_logged_ctr(tmp_path):
    write_open_bandit_dir(tmp_path)
    result = evaluate_open_bandit(tmp_path, n_boot=100, make_policy=lambda model: logging_policy_replay)
    assert result["engine_ips"] == pytest.approx(result["logged_ctr"])


@pytest.mark.skipif(not (DATA_DIR / "open_bandit" / "bts" / "all" / "log.parquet").exists(), reason="no OBD data")
def test_real_open_bandit_log_loads_and_evaluates():
    log = load_open_bandit(DATA_DIR)
    assert log.n_positions == 3 and log.n_items == 80 and set(np.unique(log.positions)) == {0, 1, 2}
    result = evaluate_open_bandit(DATA_DIR, n_boot=200)
    assert result["rounds"] + result["train_rounds"] == len(log)
    assert result["ci95"]["logged_ctr"][0] <= result["logged_ctr"] <= result["ci95"]["logged_ctr"][1]
