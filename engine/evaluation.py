"""Offline evaluation of the engine: a prequential replay of real purchases and a closed loop with the simulator.

* :class:`PrequentialReplay` walks a purchase stream in time order; before each purchase every method ranks items
  for that shopper, the ranking is scored against the order, and only *then* does anything learn from the order
  (test-then-train, so no method ever sees an event before it has been predicted). The relevant set of an order is
  the distinct items in it that the shopper had **not bought before** in the stream; every method's list has the
  shopper's past purchases removed the same way. :func:`hit_rate_at_k` and :func:`ndcg_at_k` define the metrics
  (binary relevance; see ``docs/evaluation.md``).
* :class:`ReplayArms` holds the three methods compared on Online Retail, sharing one stream of state: the engine
  (exploration off), the decayed-popularity baseline (:class:`PopularityBaseline`) and the engine's online River
  ranker alone on the engine's own candidates.
* :func:`simulate_closed_loop` runs the engine against :class:`~kairos.engine.simulator.ShopperSimulator`: every
  organic event gets a slate of 10, the simulated shopper's impression, clicks and purchases are fed back, and the
  click-through rate per shown item is tracked over time.

Everything here is pure: event time comes from the events, every random draw from an explicit seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kairos.engine.config import EngineConfig
from kairos.engine.recommender import Recommender
from kairos.engine.state import UserInterest
from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent

Event = ClickEvent | PurchaseEvent | ImpressionEvent

#: A method under evaluation: (user id, now, k, items to leave out) -> item ids, best first. It is given no event,
#: so it cannot look at the order it is asked to predict.
RankFn = Callable[[str, float, int, Collection[str]], list[str]]
#: Something that learns from the stream, one event at a time.
LearnFn = Callable[[Event], None]

DEFAULT_K = 10

# --------------------------------------------------------------------------------------------------------------------
# Ranking metrics (binary relevance)


def hit_rate_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = DEFAULT_K) -> float:
    """1.0 when at least one relevant item is in the first ``k`` of ``ranked``, else 0.0.

    >>> hit_rate_at_k(["a", "b", "c"], {"c"}, k=2), hit_rate_at_k(["a", "b", "c"], {"c"}, k=3)
    (0.0, 1.0)
    """
    return 1.0 if any(item in relevant for item in ranked[:k]) else 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = DEFAULT_K) -> float:
    """``DCG@k / IDCG@k`` with ``DCG@k = sum over positions p <= k of [item_p relevant] / log2(p + 1)`` and the ideal
    DCG of ``min(|relevant|, k)`` relevant items in the first positions; 0.0 when nothing is relevant.

    >>> round(ndcg_at_k(["x", "a"], {"a"}), 4)   # (1 / log2 3) / 1
    0.6309
    """
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(p + 2) for p, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(p + 2) for p in range(min(len(relevant), k)))
    return dcg / ideal


@dataclass
class MetricTotals:
    """Running sums of HR@k and NDCG@k over evaluated events."""

    k: int = DEFAULT_K
    events: int = 0
    hits: float = 0.0
    ndcg: float = 0.0

    def add(self, ranked: Sequence[str], relevant: Collection[str]) -> None:
        self.events += 1
        self.hits += hit_rate_at_k(ranked, relevant, self.k)
        self.ndcg += ndcg_at_k(ranked, relevant, self.k)

    def summary(self) -> dict[str, float]:
        n = max(self.events, 1)
        return {f"hr@{self.k}": self.hits / n, f"ndcg@{self.k}": self.ndcg / n}


# --------------------------------------------------------------------------------------------------------------------
# The popularity baseline


class PopularityBaseline:
    """Global popularity with exponential decay: each order adds 1 to every distinct item in it, halving every
    ``half_life_s``; ranking is by the decayed count.

    Decay multiplies every score by the same factor, so scores are stored in growing units (an order at ``t`` adds
    ``2 ** ((t - t_ref) / half_life)``) and ranking needs no decay pass. Returns are ignored (a return is not a
    signal of what others will buy next).

    >>> pop = PopularityBaseline(half_life_s=10.0)
    >>> from kairos.schemas.events import PurchaseEvent
    >>> def order(i, items, t):
    ...     lines = [{"item_id": x, "quantity": 1, "unit_price": "1"} for x in items]
    ...     return PurchaseEvent(event_id=f"e{i}", user_id="u", order_id=f"o{i}", ts=t, lines=lines)
    >>> pop.learn(order(1, ["a", "a", "b"], 1.7e9)); pop.learn(order(2, ["b"], 1.7e9 + 10)); pop.learn(order(3, ["c"], 1.7e9 + 10))
    >>> pop.top(3, exclude={"c"})   # b: 0.5 + 1, a: 0.5 (the repeated line counts once)
    ['b', 'a']
    """

    #: Rescale stored scores once the growth factor passes 2 ** this (float64 overflows near 2 ** 1024).
    _REBASE_AT = 400.0

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self._t_ref: float | None = None
        self._index: dict[str, int] = {}
        self._items: list[str] = []
        self._scores = np.zeros(1024)
        self._order: np.ndarray | None = None

    def learn(self, event: Event) -> None:
        if not isinstance(event, PurchaseEvent) or event.is_return:
            return
        if self._t_ref is None:
            self._t_ref = event.ts
        exponent = (event.ts - self._t_ref) / self.half_life_s
        if exponent > self._REBASE_AT:
            self._scores *= 2.0 ** -exponent
            self._t_ref, exponent = event.ts, 0.0
        gain = 2.0**exponent
        for item in dict.fromkeys(line.item_id for line in event.lines):
            slot = self._slot(item)  # first: it may grow the array
            self._scores[slot] += gain
        self._order = None

    def top(self, k: int, exclude: Collection[str] = ()) -> list[str]:
        """The ``k`` most popular items now, best first, leaving out ``exclude`` (ties: first seen first)."""
        if self._order is None:
            self._order = np.argsort(-self._scores[: len(self._items)], kind="stable")
        out: list[str] = []
        for index in self._order.tolist():
            item = self._items[index]
            if item not in exclude:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def _slot(self, item: str) -> int:
        slot = self._index.get(item)
        if slot is None:
            slot = self._index[item] = len(self._items)
            self._items.append(item)
            if slot >= len(self._scores):
                self._scores = np.concatenate([self._scores, np.zeros(len(self._scores))])
        return slot


# --------------------------------------------------------------------------------------------------------------------
# Prequential replay


def novel_items(event: PurchaseEvent, bought_before: Collection[str]) -> list[str]:
    """The relevant set of an order: its distinct items the shopper had not bought before (in line order)."""
    return [item for item in dict.fromkeys(line.item_id for line in event.lines) if item not in bought_before]


@dataclass
class ReplayResult:
    """Metrics per method plus what was counted: every event seen, purchases scored, purchases skipped because
    every item in them had been bought before by the same shopper, and the scored ones from first-time buyers."""

    metrics: dict[str, MetricTotals]
    events: int = 0
    warmup_events: int = 0
    purchases_evaluated: int = 0
    purchases_all_repeats: int = 0
    first_purchase_evaluated: int = 0
    cold: dict[str, MetricTotals] = field(default_factory=dict)
    warm: dict[str, MetricTotals] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict = {name: totals.summary() for name, totals in self.metrics.items()}
        out.update(
            events=self.events, purchases_evaluated=self.purchases_evaluated, warmup_events=self.warmup_events,
            purchases_all_repeats=self.purchases_all_repeats,
            first_purchase_evaluated=self.first_purchase_evaluated,
            by_shopper={"first_purchase": {n: t.summary() for n, t in self.cold.items()},
                        "returning": {n: t.summary() for n, t in self.warm.items()}},
        )
        return out


class PrequentialReplay:
    """Test-then-train over a purchase stream.

    For each event, in order: if it is an order (not a return) with at least one item new to the shopper, every
    method in ``rankers`` ranks ``k`` items for the shopper at the order's time, with the shopper's past purchases
    excluded (the methods are told, and the lists are filtered again here so every method is held to the same
    rule); the lists are scored against the new items. Then every ``learner`` sees the event. Rankers get the user
    id and the time, never the event.
    """

    def __init__(self, rankers: Mapping[str, RankFn], learners: Sequence[LearnFn], k: int = DEFAULT_K) -> None:
        self.rankers = dict(rankers)
        self.learners = list(learners)
        self.k = k
        self.bought: dict[str, set[str]] = {}
        self.result = ReplayResult({name: MetricTotals(k) for name in self.rankers},
                                   cold={name: MetricTotals(k) for name in self.rankers},
                                   warm={name: MetricTotals(k) for name in self.rankers})

    def warm_up(self, events: Iterable[Event]) -> int:
        """Learn from ``events`` without scoring anything (an earlier slice); returns how many were seen."""
        n = 0
        for event in events:
            self._learn(event)
            n += 1
        self.result.warmup_events += n
        return n

    def run(self, events: Iterable[Event], progress: Callable[[ReplayResult], None] | None = None,
            progress_every: int = 2_000) -> ReplayResult:
        for event in events:
            self.step(event)
            if progress is not None and self.result.events % progress_every == 0:
                progress(self.result)
        return self.result

    def step(self, event: Event) -> None:
        """Predict (if the event is a scorable order), then learn."""
        self.result.events += 1
        if isinstance(event, PurchaseEvent) and not event.is_return:
            self._evaluate(event)
        self._learn(event)

    def _evaluate(self, event: PurchaseEvent) -> None:
        bought = self.bought.get(event.user_id, set())
        relevant = set(novel_items(event, bought))
        if not relevant:
            self.result.purchases_all_repeats += 1
            return
        self.result.purchases_evaluated += 1
        segment = self.result.warm if bought else self.result.cold
        self.result.first_purchase_evaluated += not bought
        for name, rank in self.rankers.items():
            ranked = [item for item in rank(event.user_id, event.ts, self.k, bought) if item not in bought][: self.k]
            self.result.metrics[name].add(ranked, relevant)
            segment[name].add(ranked, relevant)

    def _learn(self, event: Event) -> None:
        for learn in self.learners:
            learn(event)
        if isinstance(event, PurchaseEvent) and not event.is_return:
            self.bought.setdefault(event.user_id, set()).update(line.item_id for line in event.lines)


class EngineBackend(Protocol):
    """What the replay needs from the engine: learn from every event, rank for a shopper."""

    recommender: Recommender

    def observe(self, user: UserInterest, event: Event) -> None: ...

    def ranked(self, user: UserInterest, now: float, n: int, exclude: Collection[str] = ()) -> list[str]: ...


class RecommenderBackend:
    """The plain :class:`Recommender` as the engine under evaluation (it never explores)."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    def observe(self, user: UserInterest, event: Event) -> None:
        self.recommender.observe(user, event)

    def ranked(self, user: UserInterest, now: float, n: int, exclude: Collection[str] = ()) -> list[str]:
        return [scored.item_id for scored in self.recommender.recommend(user, now, n, exclude)]


class SelectorBackend:
    """``engine.selection.Selector`` (built with exploration off) as the engine under evaluation."""

    def __init__(self, selector) -> None:
        self.selector = selector
        self.recommender = selector.recommender

    def observe(self, user: UserInterest, event: Event) -> None:
        self.selector.observe(user, event)

    def ranked(self, user: UserInterest, now: float, n: int, exclude: Collection[str] = ()) -> list[str]:
        return [item.item_id for item in self.selector.select(user, now, n, exclude=exclude).items]


class ShardedBackend:
    """The engine split as it is deployed: one backend per input partition, each learning only from the shoppers
    its partition owns (users are routed by ``partition_of(user_id)``, the Kafka key's partition), so each one's
    item-level models (co-occurrence, discovery, user-kNN) see a share of the stream. ``kairos eval replay
    --partitions P`` measures what that split costs against one engine that sees everything.

    ``shared_discovery`` (the deployed default, ``KAIROS_SHARED_DISCOVERY``): every order's discovery facts
    (``PurchaseGraph.facts``, computed by the shopper's partition) are learned by every other partition's discovery
    model too, as the worker does with the orders other partitions publish on the discovery topic."""

    def __init__(
        self, shards: Sequence[EngineBackend], partition_of: Callable[[str], int], shared_discovery: bool = False
    ) -> None:
        if not shards:
            raise ValueError("at least one shard")
        self.shards = list(shards)
        self.partition_of = partition_of
        self.shared_discovery = shared_discovery
        self.recommender = self.shards[0].recommender

    def shard(self, user_id: str) -> EngineBackend:
        return self.shards[self.partition_of(user_id) % len(self.shards)]

    def recommender_for(self, user_id: str) -> Recommender:
        return self.shard(user_id).recommender

    def observe(self, user: UserInterest, event: Event) -> None:
        owner = self.shard(user.user_id)
        facts = None
        if self.shared_discovery and not user.has_applied(event.event_id):
            facts = owner.recommender.discovery.event_facts(user, event)
        owner.observe(user, event)
        if facts is not None:
            for shard in self.shards:
                if shard is not owner:
                    shard.recommender.learn_peer_order(facts)

    def ranked(self, user: UserInterest, now: float, n: int, exclude: Collection[str] = ()) -> list[str]:
        return self.shard(user.user_id).ranked(user, now, n, exclude)


class ReplayArms:
    """The methods compared by the replay, sharing one stream of learning.

    ``engine``      the backend's ranking (the :class:`Recommender`, or the ``Selector`` with exploration off);
    ``river_only``  the engine's online River ranker alone (no heuristic prior) on the engine's own candidates;
    ``popularity``  :class:`PopularityBaseline` with the engine's long popularity half-life.

    The engine is asked for its whole candidate list (``config.max_candidates``) so that removing the shopper's past
    purchases still leaves it ``k`` items when it has them.
    """

    def __init__(self, config: EngineConfig, backend: EngineBackend | None = None, seed: int = 0) -> None:
        self.config = config
        self.backend = backend or RecommenderBackend(Recommender(config, seed=seed))
        self.users: dict[str, UserInterest] = {}
        self.popularity = PopularityBaseline(config.popularity_half_life_s)

    @property
    def recommender(self) -> Recommender:
        return self.backend.recommender

    def rankers(self) -> dict[str, RankFn]:
        return {"engine": self.engine, "popularity": self.popular, "river_only": self.river_only}

    def learners(self) -> list[LearnFn]:
        return [self.learn]

    def learn(self, event: Event) -> None:
        user = self.users.get(event.user_id)
        if user is None:
            user = self.users[event.user_id] = UserInterest.new(event.user_id, self.config)
        self.backend.observe(user, event)
        self.popularity.learn(event)

    def engine(self, user_id: str, now: float, k: int, exclude: Collection[str]) -> list[str]:
        # The shopper's past purchases are passed on, as to the popularity baseline: a discovery slot's request.
        return self.backend.ranked(self._user(user_id), now, max(self.config.max_candidates, k), exclude)

    def popular(self, user_id: str, now: float, k: int, exclude: Collection[str]) -> list[str]:
        return self.popularity.top(k, exclude)

    def river_only(self, user_id: str, now: float, k: int, exclude: Collection[str]) -> list[str]:
        # Split into partitions, the shopper's own partition's models answer (its River ranker and candidates).
        recommender_for = getattr(self.backend, "recommender_for", None)
        recommender = recommender_for(user_id) if recommender_for is not None else self.recommender
        pool, features = recommender.candidates_and_features(self._user(user_id), now, exclude)
        if not pool.items:
            return []
        scores = recommender.online.score(features)
        return [pool.items[i] for i in np.argsort(-scores, kind="stable")]

    def _user(self, user_id: str) -> UserInterest:
        # A shopper never seen gets an empty state that is not stored: ranking must not change what is learned.
        return self.users.get(user_id) or UserInterest.new(user_id, self.config)


# --------------------------------------------------------------------------------------------------------------------
# Closed loop with the shopper simulator


@dataclass
class SlateChoice:
    """One slate served in the closed loop."""

    rec_id: str
    item_ids: list[str]


class LoopArm(Protocol):
    """An engine in the closed loop: learns from every event (impressions and clicks included), serves slates."""

    def observe(self, user: UserInterest, event: Event) -> None: ...

    def serve(self, user: UserInterest, now: float, n: int) -> SlateChoice: ...


class RecommenderLoopArm:
    """The plain :class:`Recommender` as a loop arm: no feedback correction, no exploration."""

    def __init__(self, recommender: Recommender, prefix: str = "rec") -> None:
        self.recommender = recommender
        self.prefix = prefix
        self._served = 0

    def observe(self, user: UserInterest, event: Event) -> None:
        self.recommender.observe(user, event)

    def serve(self, user: UserInterest, now: float, n: int) -> SlateChoice:
        self._served += 1
        items = [scored.item_id for scored in self.recommender.recommend(user, now, n)]
        return SlateChoice(f"{self.prefix}-{self._served}", items)


class SelectorLoopArm:
    """``engine.selection.Selector`` as a loop arm (feedback and exploration as it was built with)."""

    def __init__(self, selector) -> None:
        self.selector = selector

    def observe(self, user: UserInterest, event: Event) -> None:
        self.selector.observe(user, event)

    def serve(self, user: UserInterest, now: float, n: int) -> SlateChoice:
        selection = self.selector.select(user, now, n)
        return SlateChoice(selection.rec_id, [item.item_id for item in selection.items])


@dataclass
class LoopTrace:
    """Per step of one arm: items shown and clicks on them (distinct clicked items of the slate)."""

    shown: list[int] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    purchases: list[int] = field(default_factory=list)

    @property
    def ctr(self) -> float:
        """Clicks per shown item over the whole run."""
        return sum(self.clicks) / max(sum(self.shown), 1)

    def rolling_ctr(self, window: int) -> np.ndarray:
        """Clicks per shown item over the last ``window`` steps, at every step (shorter windows at the start)."""
        clicks, shown = np.cumsum(self.clicks, dtype=float), np.cumsum(self.shown, dtype=float)
        lag = np.arange(len(clicks)) - window
        past_clicks = np.where(lag >= 0, clicks[np.maximum(lag, 0)], 0.0)
        past_shown = np.where(lag >= 0, shown[np.maximum(lag, 0)], 0.0)
        return (clicks - past_clicks) / np.maximum(shown - past_shown, 1.0)


def run_loop_arm(arm: LoopArm, simulator, organic: Iterable[Event], config: EngineConfig,
                 n: int = DEFAULT_K) -> LoopTrace:
    """Drive one arm through the organic stream: learn the event, serve a slate, show it, learn the responses."""
    users: dict[str, UserInterest] = {}
    trace = LoopTrace()
    for event in organic:
        user = users.get(event.user_id)
        if user is None:
            user = users[event.user_id] = UserInterest.new(event.user_id, config)
        arm.observe(user, event)
        slate = arm.serve(user, event.ts, n)
        responses = simulator.show(event.user_id, slate.item_ids, slate.rec_id, now=event.ts) if slate.item_ids else []
        for response in responses:
            arm.observe(user, response)
        trace.shown.append(len(dict.fromkeys(slate.item_ids)))
        trace.clicks.append(len({e.item_id for e in responses if isinstance(e, ClickEvent) and e.action == "click"}))
        trace.purchases.append(sum(1 for e in responses if isinstance(e, PurchaseEvent)))
    return trace


def simulate_closed_loop(arms: Mapping[str, Callable[[], LoopArm]], make_simulator: Callable[[], object],
                         steps: int, config: EngineConfig, n: int = DEFAULT_K) -> dict[str, LoopTrace]:
    """Run every arm on its own simulator built by ``make_simulator`` (same seed: the same organic stream and the
    same response draws for as long as the slates agree) for ``steps`` organic events."""
    traces = {}
    for name, make_arm in arms.items():
        simulator = make_simulator()
        traces[name] = run_loop_arm(make_arm(), simulator, simulator.events(steps), config, n)
    return traces


def loop_summary(traces: Mapping[str, LoopTrace], window: int) -> dict[str, dict[str, float]]:
    """Overall and final-window CTR, clicks and purchases per arm."""
    out = {}
    for name, trace in traces.items():
        rolling = trace.rolling_ctr(window)
        out[name] = {"ctr": trace.ctr, "ctr_last_window": float(rolling[-1]) if len(rolling) else 0.0,
                     "clicks": int(sum(trace.clicks)), "purchases": int(sum(trace.purchases)),
                     "shown": int(sum(trace.shown))}
    return out

