import time

import numpy as np

from kairos.engine.ranking import GuardedRanker, HeuristicRanker


class _Model:
    name, version = "model", "7"

    def __init__(self, delay_s=0.0, fail=False):
        self.delay_s, self.fail, self.calls = delay_s, fail, 0

    def score(self, features):
        self.calls += 1
        if self.fail:
            raise RuntimeError("session died")
        time.sleep(self.delay_s)
        return np.full(len(features["dense"]), 9.0, dtype=np.float32)


def _features(n=3):
    return {"dense": np.ones((n, 16), dtype=np.float32)}


def test_model_scores_while_healthy():
    guard = GuardedRanker(_Model(), HeuristicRanker())
    assert np.all(guard.score(_features()) == 9.0) and guard.fallbacks == 0 and guard.name == "model"


def test_error_falls_back_for_the_cooldown_then_retries():
    model = _Model(fail=True)
    guard = GuardedRanker(model, HeuristicRanker(), cooldown_calls=3)
    guard.score(_features())
    assert guard.errors == 1 and guard.name == "heuristic"
    for _ in range(3):
        guard.score(_features())
    assert model.calls == 1, "the failing model was called during the cooldown"
    guard.score(_features())
    assert model.calls == 2 and guard.fallbacks == 5  # the trip + 3 cooldown calls + the retry's trip


def test_slow_model_is_benched():
    model = _Model(delay_s=0.002)
    guard = GuardedRanker(model, HeuristicRanker(), budget_s=0.001, budget_s_per_row=0.0, cooldown_calls=10)
    for _ in range(50):
        guard.score(_features())
    assert guard.fallbacks == 1 and guard.name == "heuristic"
    guard.score(_features())
    assert model.calls == 50


def test_budget_scales_with_rows():
    """A batched call over many users' candidates may take longer than a single user's. The margins are wide on
    purpose (a loaded machine oversleeps a 2 ms sleep by several ms): 400 rows get 201 ms, one row 1.5 ms, which
    a 2 ms call always overruns."""
    batched = GuardedRanker(_Model(delay_s=0.002), HeuristicRanker(), budget_s=0.001, budget_s_per_row=0.0005)
    for _ in range(50):
        batched.score(_features(n=400))
    assert batched.fallbacks == 0 and batched.name == "model"
    single = GuardedRanker(_Model(delay_s=0.002), HeuristicRanker(), budget_s=0.001, budget_s_per_row=0.0005)
    for _ in range(50):
        single.score(_features(n=1))
    assert single.fallbacks >= 1 and single.name == "heuristic"
