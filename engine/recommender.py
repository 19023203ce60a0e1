"""The per-event path through the engine, one readable step at a time:

    event -> dedupe -> learn (global model, online ranker) -> update user state
          -> retrieve candidates -> build features -> rank -> business rules -> top N with reasons

A batch of one user's events updates state per event and ranks once, after the last one (the earlier lists
would be superseded before anyone could read them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

import numpy as np

from kairos.engine.candidates import CandidatePool, CandidateSource, retrieve_candidates
from kairos.engine.config import EngineConfig
from kairos.engine.discovery import OrderFacts, PurchaseGraph
from kairos.engine.features import TextSimilarity, build_ranker_features
from kairos.engine.global_model import GlobalModel
from kairos.engine.interfaces import Ranker
from kairos.engine.ranking import BlendedRanker, GuardedRanker, HeuristicRanker, RiverRanker
from kairos.engine.state import Interaction, UserInterest, interactions_of
from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent

Event = ClickEvent | PurchaseEvent | ImpressionEvent

#: Learning from every view would cost more than it teaches; carts, favourites and purchases always teach.
_ALWAYS_LEARN = frozenset({"add_to_cart", "favourite", "purchase"})


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float
    reasons: tuple[str, ...]


class StepTimings(NamedTuple):
    """Seconds spent per step for one recommendation (fed to the latency histograms)."""

    retrieve: float
    features: float
    rank: float
    rules: float


class Recommender:
    """Owns the global model and the online ranker of one partition; user states are passed in (they live in
    ``PartitionState``), which keeps this class free of storage concerns."""

    def __init__(
        self,
        config: EngineConfig,
        ranker: Ranker | None = None,
        *,
        extra_sources: Sequence[tuple[str, CandidateSource]] = (),
        text_similarity: TextSimilarity | None = None,
        view_learn_rate: float = 0.1,
        negatives_per_positive: int = 3,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.model = GlobalModel(config)
        #: Short-horizon popularity, the co-purchase graph and user-kNN for discovery (engine/discovery.py);
        #: checkpointed inside the Selector's state (``Selector.to_state``).
        self.discovery = PurchaseGraph(config)
        self.online = RiverRanker(seed=seed)
        self.fallback = BlendedRanker(HeuristicRanker(), self.online)
        # Fallback order (docs/selection.md): the model ranker while it answers within budget, else the
        # champion of heuristic / River / blend.
        self.ranker = GuardedRanker(ranker, self.fallback) if ranker is not None else None
        self.extra_sources = tuple(extra_sources)
        self.text_similarity = text_similarity
        self.view_learn_rate = view_learn_rate
        self.negatives = negatives_per_positive
        self.last_timings: StepTimings | None = None

    # --- write path ---

    def observe(self, user: UserInterest, event: Event, *, learn: bool = True, source: int = -1) -> list[Interaction]:
        """Apply one event: the global model and online ranker learn from it *before* the user state absorbs it
        (the ranker must see the state the shopper acted from). Returns [] for a duplicate event. ``source``: the
        record it came from (``UserInterest.apply``)."""
        if user.has_applied(event.event_id):
            return []
        if not isinstance(event, ImpressionEvent):
            interactions = _interactions_preview(user, event)
            if learn:
                self._learn_ranking(user, interactions, event.ts)
            self.model.observe(user, interactions)
            self.discovery.observe(user, interactions)
        return user.apply(event, source)

    def learn_peer_order(self, facts: OrderFacts, source: str | None = None, offset: int = 0) -> bool:
        """Another partition's order (shared discovery): its discovery facts, then the catalog entries of its
        products, so that the products discovery may now recommend have their name, category and price
        (``GlobalModel.learn_product``). With ``source`` (the record it came in), at most once per source record
        (``PurchaseGraph.learn_peer``). Returns whether it was learned."""
        if source is None:
            self.discovery.learn(facts)
        elif not self.discovery.learn_peer(facts, source, offset):
            return False
        names = dict(facts.lines)
        for item, category, price in facts.details:
            self.model.learn_product(item, category, names.get(item), price)
        return True

    def observe_global_only(self, user: UserInterest, event: Event) -> None:
        """Replay an event into the global model only (recovering it after a restart, see docs/state.md)."""
        if not isinstance(event, ImpressionEvent):
            interactions = _interactions_preview(user, event)
            self.model.observe(user, interactions)
            self.discovery.observe(user, interactions)

    def _learn_ranking(self, user: UserInterest, interactions: list[Interaction], now: float) -> None:
        """Learning to rank the candidates the engine would have ranked at that moment: the pool is retrieved as
        for serving, items of the pool the shopper acts on are positives, a sample of the others negatives.
        (Negatives sampled from popular items taught the model "popular = bad"; positives outside the pool are a
        retrieval miss, not a ranking lesson.)"""
        if user.event_count == 0:
            return  # nothing to learn from a first event: every feature is empty
        excluded = user.excluded_items(now)
        if self.config.learn_discovery:
            excluded.update(user.purchased)
        acted = {it.item_id for it in interactions if it.weight > 0 and it.item_id not in excluded}
        if not acted:
            return
        rng = self.online._rng
        if not any(it.action in _ALWAYS_LEARN for it in interactions) and rng.random() >= self.view_learn_rate:
            return
        pool = self._retrieve(user, now, excluded)
        positives = [item for item in pool.items if item in acted][:5]
        if not positives:
            return
        negatives = self.online.sample([item for item in pool.items if item not in acted], 3 * len(positives))
        items = positives + negatives
        features = build_ranker_features(user, self.model, items, now, pool.co_visit)
        labels = np.array([True] * len(positives) + [False] * len(negatives))
        self.fallback.record_pairs(features, labels)
        for row, label in zip(features["dense"], labels):
            self.online.learn(row, bool(label))

    # --- read path ---

    def recommend(
        self, user: UserInterest, now: float, n: int | None = None, exclude: Collection[str] = ()
    ) -> list[ScoredItem]:
        """Top ``n`` by final score (no exploration, no feedback correction: see ``kairos.engine.selection``)."""
        n = n or self.config.top_n
        pool, scores = self.score_candidates(user, now, exclude)
        t0 = time.perf_counter()
        scores = self.final_scores(user, pool, scores)
        chosen = _top_n(pool, scores, n) if pool.items else []
        if self.last_timings is not None:
            self.last_timings = StepTimings(*self.last_timings[:3], time.perf_counter() - t0)
        return chosen

    def score_candidates(
        self, user: UserInterest, now: float, exclude: Collection[str] = ()
    ) -> tuple[CandidatePool, np.ndarray]:
        """Retrieve candidates (purchased items already excluded) and score them with the ranker."""
        pool, features = self.candidates_and_features(user, now, exclude)
        if not pool.items:
            return pool, np.zeros(0, dtype=np.float32)
        t0 = time.perf_counter()
        scores = self._score(features)
        self.last_timings = self.last_timings._replace(rank=time.perf_counter() - t0)
        return pool, scores

    def candidates_and_features(
        self, user: UserInterest, now: float, exclude: Collection[str] = ()
    ) -> tuple[CandidatePool, dict[str, np.ndarray]]:
        """The read path up to the ranker: lets a caller score many users' candidates in one ranker call.
        ``exclude``: items the caller does not want (e.g. everything the shopper owns, for a discovery slot),
        on top of the purchases within ``purchase_exclusion_s``."""
        t0 = time.perf_counter()
        excluded = user.excluded_items(now)
        if exclude:
            excluded.update(exclude)
        pool = self._retrieve(user, now, excluded)
        t1 = time.perf_counter()
        features = build_ranker_features(user, self.model, pool.items, now, pool.co_visit, None, self.text_similarity)
        self.last_timings = StepTimings(t1 - t0, time.perf_counter() - t1, 0.0, 0.0)
        return pool, features

    def _retrieve(self, user: UserInterest, now: float, excluded: set[str]) -> CandidatePool:
        return retrieve_candidates(
            user, self.model, now, self.config.max_candidates, excluded, self.extra_sources, self.discovery
        )

    def final_scores(self, user: UserInterest, pool: CandidatePool, scores: np.ndarray) -> np.ndarray:
        """The ranker's scores blended with the pool's discovery scores, both standardised over the pool:
        ``z(ranker) + discovery_weight x z(discovery)``. A shopper with no history gets the discovery order alone
        (the ranker has no evidence about them; its per-item features would only reshuffle what sells now)."""
        if not pool.discovery or not len(scores):
            return scores
        discovery = pool.discovery
        prior = np.array(list(map(discovery.get, pool.items, repeat(0.0))), np.float64)
        if user.event_count == 0:
            return prior.astype(np.float32)
        return (_standardised(scores) + self.config.discovery_weight * _standardised(prior)).astype(np.float32)

    def score_many(self, features: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Score several candidate sets with one ranker call (one ONNX inference per consumed batch)."""
        sizes = [len(f["item_id"]) for f in features]
        if not sizes or sum(sizes) == 0:
            return [np.zeros(n, dtype=np.float32) for n in sizes]
        merged = {name: np.concatenate([f[name] for f in features]) for name in features[0]}
        scores = self._score(merged)
        return np.split(scores, np.cumsum(sizes)[:-1])

    @property
    def model_version(self) -> str:
        ranker = self.ranker or self.fallback
        return f"{ranker.name}@{ranker.version}"

    @property
    def ranker_failures(self) -> int:
        """Rankings the fallback served because the model ranker failed or was slow."""
        return self.ranker.fallbacks if self.ranker is not None else 0

    def _score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        if self.ranker is not None:
            return self.ranker.score(features)
        return self.fallback.score(features)


def _interactions_preview(user: UserInterest, event: ClickEvent | PurchaseEvent) -> list[Interaction]:
    return interactions_of(event, user.config)


def _standardised(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean()
    spread = math.sqrt(float(centred @ centred) / len(centred)) if len(centred) else 0.0
    return centred / spread if spread > 0 else np.zeros_like(values)


def _top_n(pool: CandidatePool, scores: np.ndarray, n: int) -> list[ScoredItem]:
    order = np.argsort(-scores, kind="stable")[:n]
    return [ScoredItem(pool.items[i], float(scores[i]), tuple(pool.reasons[pool.items[i]])) for i in order]


def replay_events(recommender: Recommender, users: dict[str, UserInterest], events: Iterable[Event]) -> None:
    """Feed events to a recommender in order, creating users as needed (offline evaluation and training)."""
    for event in events:
        user = users.get(event.user_id)
        if user is None:
            user = users[event.user_id] = UserInterest.new(event.user_id, recommender.config)
        recommender.observe(user, event)
