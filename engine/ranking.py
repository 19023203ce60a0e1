"""Rankers that need no model file: the hand-weighted fallback and an online River logistic ranker.

Both satisfy ``kairos.engine.interfaces.Ranker``. The ONNX ranker (``kairos.models``) drops in by the same shape.
Fallback order when ranking (docs/engine.md): ONNX ranker -> River ranker once it has learned from
``min_examples`` examples -> heuristic.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

import numpy as np
from river import linear_model, optim

from kairos.schemas.features import RANKER_DENSE_DIM, RANKER_DENSE_FEATURES

#: Hand-set weights over the dense features: affinity to the category and co-visits dominate, popularity breaks
#: ties, items engaged with in the last few steps get a small lift (shoppers return to what they considered).
_HEURISTIC_WEIGHTS = dict(
    category_affinity_share=2.0,
    category_affinity_log=0.4,
    item_affinity_log=1.0,
    item_in_recent=0.2,
    cooccurrence_score=2.5,
    item_popularity_log=0.35,
    category_popularity_log=0.05,
    item_trend_ratio=0.2,
    text_similarity=1.0,
)


def _weight_vector(weights: Mapping[str, float]) -> np.ndarray:
    return np.array([weights.get(name, 0.0) for name in RANKER_DENSE_FEATURES], dtype=np.float32)


class HeuristicRanker:
    """A fixed linear score over the dense features: always available, never slow."""

    name = "heuristic"
    version = "1"

    def __init__(self) -> None:
        self._weights = _weight_vector(_HEURISTIC_WEIGHTS)

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        return features["dense"] @ self._weights


class RiverRanker:
    """Logistic regression learned online with River: label 1 for the item a shopper acts on next, 0 for sampled
    candidates they did not. Scoring is vectorised with numpy over River's weights (one dot product per batch
    instead of one ``predict_proba_one`` per candidate)."""

    name = "river-logistic"

    def __init__(self, learning_rate: float = 0.05, l2: float = 1e-4, min_examples: int = 200, seed: int = 0) -> None:
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2)
        self.min_examples = min_examples
        self.examples = 0
        self._rng = random.Random(seed)
        self._cached: tuple[int, np.ndarray, float] | None = None

    @property
    def version(self) -> str:
        return f"online-{self.examples}"

    @property
    def ready(self) -> bool:
        return self.examples >= self.min_examples

    def learn(self, dense_row: np.ndarray, label: bool) -> None:
        x = {name: float(v) for name, v in zip(RANKER_DENSE_FEATURES, dense_row) if v}
        self.model.learn_one(x, label)
        self.examples += 1

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        weights, intercept = self._vector()
        return features["dense"] @ weights + intercept

    def _vector(self) -> tuple[np.ndarray, float]:
        if self._cached is None or self._cached[0] != self.examples:
            weights = _weight_vector(self.model.weights)
            self._cached = (self.examples, weights, float(self.model.intercept))
        return self._cached[1], self._cached[2]

    def sample(self, population: list[str], k: int) -> list[str]:
        return self._rng.sample(population, min(k, len(population)))

    def to_state(self) -> dict:
        return {"w": dict(self.model.weights), "b": float(self.model.intercept), "n": self.examples}

    def load_state(self, data: dict) -> None:
        for name, value in data["w"].items():
            self.model._weights[name] = value
        self.model.intercept = data["b"]
        self.examples = data["n"]
        self._cached = None


class BlendedRanker:
    """Champion / challenger over the heuristic prior, the River ranker and their sum.

    Before each learning step the three are scored prequentially on the same labelled candidates (the fraction of
    (positive, negative) pairs ordered correctly, an exponentially weighted average); ranking uses whichever is
    best so far. The online model therefore only takes over once it has *shown* it ranks better.
    """

    name = "heuristic+river"
    _DECAY = 0.995

    def __init__(self, prior: HeuristicRanker, online: RiverRanker) -> None:
        self.prior, self.online = prior, online
        self.accuracy = {"heuristic": 0.5, "river": 0.5, "blend": 0.5}
        self.champion = "heuristic"

    @property
    def version(self) -> str:
        return f"{self.prior.version}+{self.online.version}:{self.champion}"

    def _scores(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        base = self.prior.score(features)
        online = self.online.score(features)
        return {"heuristic": base, "river": online, "blend": base + online}

    def record_pairs(self, features: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
        """Score the three candidates' orderings of one labelled set, before the online model learns from it."""
        if labels.all() or not labels.any():
            return
        for name, scores in self._scores(features).items():
            correct = (scores[labels][:, None] > scores[~labels][None, :]).mean()
            self.accuracy[name] = self._DECAY * self.accuracy[name] + (1 - self._DECAY) * float(correct)
        if self.online.ready:
            self.champion = max(self.accuracy, key=self.accuracy.__getitem__)

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.champion == "heuristic" or not self.online.ready:
            return self.prior.score(features)
        return self._scores(features)[self.champion]


class GuardedRanker:
    """A model-backed ranker with a fallback: on an error, or when calls get slow (the p98 of the last 50 calls,
    per row scored, above ``budget_s + budget_s_per_row x rows``: one call may score a whole batch of users),
    ranking uses ``fallback`` for ``cooldown_calls`` calls, then tries the model again. ``fallbacks`` counts the
    rankings served by the fallback (exported as a metric by the worker)."""

    def __init__(
        self, primary, fallback, budget_s: float = 0.010, budget_s_per_row: float = 5e-6, cooldown_calls: int = 1000
    ) -> None:
        self.primary, self.fallback = primary, fallback
        self.budget_s, self.budget_s_per_row, self.cooldown_calls = budget_s, budget_s_per_row, cooldown_calls
        self._recent: list[float] = []
        self._cooldown = 0
        self.fallbacks = 0
        self.errors = 0

    @property
    def name(self) -> str:
        return self.primary.name if self._cooldown == 0 else self.fallback.name

    @property
    def version(self) -> str:
        return self.primary.version if self._cooldown == 0 else self.fallback.version

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        if self._cooldown > 0:
            self._cooldown -= 1
            self.fallbacks += 1
            return self.fallback.score(features)
        started = time.perf_counter()
        try:
            scores = np.asarray(self.primary.score(features), dtype=np.float32)
        except Exception:  # noqa: BLE001 - a failing model must not stop recommendations
            self.errors += 1
            self._trip()
            return self.fallback.score(features)
        elapsed = time.perf_counter() - started
        self._observe(elapsed / (self.budget_s + self.budget_s_per_row * len(scores)))
        return scores

    def _observe(self, budget_share: float) -> None:
        """``budget_share``: the call's time as a fraction of its budget (> 1 = too slow)."""
        self._recent.append(budget_share)
        if len(self._recent) >= 50:
            if sorted(self._recent)[-2] > 1.0:  # 2nd slowest of 50 ~ p98
                self._trip()
            self._recent.clear()

    def _trip(self) -> None:
        self._cooldown = self.cooldown_calls
        self.fallbacks += 1
        self._recent.clear()


assert len(RANKER_DENSE_FEATURES) == RANKER_DENSE_DIM
