"""Business rules as composable steps over a ranked candidate list.

A step is any object with a ``name`` and ``apply(candidates, context) -> candidates`` that keeps, drops or reorders
candidates (never invents them). :class:`RulePipeline` runs steps in order and records, for every dropped item,
the step that dropped it, so the reasons can travel with the recommendation.

Steps here: :class:`ExcludePurchased`, :class:`FrequencyCap` (user x item or user x creative),
:class:`ExcludeHidden` (hidden / out-of-stock), :class:`CategoryCap` and :class:`MMRDiversify`.
The histories they read (:class:`PurchaseHistory`, :class:`ImpressionHistory`) are written on events and read
at ranking time; both forget entries older than their window, so memory follows recent traffic.

Examples
--------
>>> purchases = PurchaseHistory(window_s=86_400)
>>> purchases.record("u1", "a", ts=0.0)
>>> pipeline = RulePipeline([ExcludePurchased(purchases), CategoryCap(max_per_category=1)])
>>> ranked = [Candidate("a", 3.0, "shoes"), Candidate("b", 2.0, "shoes"), Candidate("c", 1.0, "hats")]
>>> outcome = pipeline.apply(ranked, RuleContext(user_id="u1", now=10.0))
>>> [c.item_id for c in outcome.kept], outcome.dropped
(['b', 'c'], {'a': 'exclude_purchased'})
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A ranked item: its (corrected) score, category and, for ads, the creative that would show it."""

    item_id: str
    score: float
    category: str | None = None
    creative_id: str | None = None


@dataclass(frozen=True)
class RuleContext:
    """Who the list is for and the event time the windows are measured from."""

    user_id: str
    now: float


@dataclass
class RuleOutcome:
    kept: list[Candidate]
    dropped: dict[str, str] = field(default_factory=dict)  # item_id -> name of the step that dropped it


class RuleStep(Protocol):
    name: str

    def apply(self, candidates: list[Candidate], context: RuleContext) -> list[Candidate]: ...


class RulePipeline:
    """Runs steps in order; an item dropped by an earlier step is reported with that step's name."""

    def __init__(self, steps: Sequence[RuleStep]) -> None:
        self.steps = list(steps)

    def apply(self, candidates: Sequence[Candidate], context: RuleContext) -> RuleOutcome:
        outcome = RuleOutcome(kept=list(candidates))
        for step in self.steps:
            before = {c.item_id for c in outcome.kept}
            outcome.kept = step.apply(outcome.kept, context)
            for item_id in before - {c.item_id for c in outcome.kept}:
                outcome.dropped[item_id] = step.name
        return outcome


class PurchaseHistory:
    """Last purchase time per user x item, forgotten after ``window_s``."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last: dict[str, dict[str, float]] = {}

    def record(self, user_id: str, item_id: str, ts: float) -> None:
        items = self._last.setdefault(user_id, {})
        items[item_id] = max(ts, items.get(item_id, ts))

    def recent(self, user_id: str, now: float) -> set[str]:
        """Items the user bought within the window before ``now`` (expired entries are dropped here)."""
        items = self._last.get(user_id, {})
        for item_id in [i for i, ts in items.items() if now - ts > self.window_s]:
            del items[item_id]
        return set(items)

    def prune(self, now: float) -> None:
        """Forget every purchase outside the window (call periodically to bound memory of idle users)."""
        for user_id in list(self._last):
            if not self.recent(user_id, now):
                del self._last[user_id]


_FIRST_PRUNE = 4096


class ImpressionHistory:
    """Impression timestamps per user x key (item id or creative id) within a sliding window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._shown: dict[tuple[str, str], deque[float]] = {}
        self._prune_at = _FIRST_PRUNE

    def record(self, user_id: str, key: str, ts: float) -> None:
        self._shown.setdefault((user_id, key), deque()).append(ts)
        if len(self._shown) >= self._prune_at:
            # Pairs nobody asks about again (a shopper who left) would stay forever: prune whenever the map has
            # doubled since the last prune, so memory follows the traffic of one window at O(1) amortised cost.
            self.prune(ts)
            self._prune_at = max(_FIRST_PRUNE, 2 * len(self._shown))

    def __len__(self) -> int:
        return len(self._shown)

    def count(self, user_id: str, key: str, now: float) -> int:
        """Impressions of ``key`` to ``user_id`` in ``(now - window_s, now]``."""
        shown = self._shown.get((user_id, key))
        if shown is None:
            return 0
        while shown and now - shown[0] >= self.window_s:
            shown.popleft()
        if not shown:
            del self._shown[(user_id, key)]
            return 0
        return sum(1 for ts in shown if ts <= now)

    def prune(self, now: float) -> None:
        """Forget every impression outside the window (call periodically to bound memory of idle users)."""
        for key in list(self._shown):
            self.count(*key, now)

    def to_state(self) -> dict:
        """``{user: {key: [ts, ...]}}``, the impressions held (the window is configuration, not state)."""
        out: dict[str, dict[str, list[float]]] = {}
        for (user_id, key), shown in self._shown.items():
            out.setdefault(user_id, {})[key] = list(shown)
        return out

    def load_state(self, data: dict) -> None:
        self._shown = {(user_id, key): deque(shown) for user_id, keys in data.items() for key, shown in keys.items()}
        self._prune_at = max(_FIRST_PRUNE, 2 * len(self._shown))


class ExcludePurchased:
    """Drops items the user bought within the purchase history's window."""

    name = "exclude_purchased"

    def __init__(self, history: PurchaseHistory) -> None:
        self.history = history

    def apply(self, candidates: list[Candidate], context: RuleContext) -> list[Candidate]:
        bought = self.history.recent(context.user_id, context.now)
        return [c for c in candidates if c.item_id not in bought]


class FrequencyCap:
    """Drops candidates already shown ``max_impressions`` times to the user within the history's window.

    ``key="item"`` caps user x item, ``key="creative"`` caps user x creative (candidates without a creative pass).
    """

    def __init__(self, history: ImpressionHistory, max_impressions: int, key: str = "item") -> None:
        if key not in ("item", "creative"):
            raise ValueError("key must be 'item' or 'creative'")
        self.history, self.max_impressions, self.key = history, max_impressions, key
        self.name = f"frequency_cap_{key}"

    def apply(self, candidates: list[Candidate], context: RuleContext) -> list[Candidate]:
        return [c for c in candidates if not self._capped(c, context)]

    def _capped(self, candidate: Candidate, context: RuleContext) -> bool:
        key = candidate.item_id if self.key == "item" else candidate.creative_id
        if key is None:
            return False
        return self.history.count(context.user_id, key, context.now) >= self.max_impressions


class ExcludeHidden:
    """Drops hidden or out-of-stock items; ``hidden`` is a set or a callable returning the current set."""

    name = "exclude_hidden"

    def __init__(self, hidden: Collection[str] | Callable[[], Collection[str]]) -> None:
        self._hidden = hidden

    def apply(self, candidates: list[Candidate], context: RuleContext) -> list[Candidate]:
        hidden = self._hidden() if callable(self._hidden) else self._hidden
        return [c for c in candidates if c.item_id not in hidden]


class CategoryCap:
    """Keeps at most ``max_per_category`` items per category, best score first; uncategorised items pass."""

    name = "category_cap"

    def __init__(self, max_per_category: int) -> None:
        self.max_per_category = max_per_category

    def apply(self, candidates: list[Candidate], context: RuleContext) -> list[Candidate]:
        counts: dict[str, int] = {}
        kept = []
        for candidate in sorted(candidates, key=lambda c: -c.score):
            if candidate.category is not None:
                counts[candidate.category] = counts.get(candidate.category, 0) + 1
                if counts[candidate.category] > self.max_per_category:
                    continue
            kept.append(candidate)
        return kept


class MMRDiversify:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998) re-ranking over item embeddings.

    Greedily picks ``argmax lambda x relevance(i) - (1 - lambda) x max_{j picked} cos(i, j)`` until ``k`` items are
    picked; relevance is the candidate score min-max scaled to [0, 1] so that ``lambda`` trades like for like.
    Items without an embedding count as dissimilar to everything.
    """

    name = "mmr"

    def __init__(self, embeddings: Mapping[str, np.ndarray], k: int, lambda_: float = 0.7) -> None:
        self.embeddings, self.k, self.lambda_ = embeddings, k, lambda_

    def apply(self, candidates: list[Candidate], context: RuleContext) -> list[Candidate]:
        if not candidates:
            return []
        relevance = _minmax([c.score for c in candidates])
        similarity = self._similarity_matrix(candidates)
        picked: list[int] = []
        left = list(range(len(candidates)))
        while left and len(picked) < self.k:
            redundancy = similarity[np.ix_(left, picked)].max(axis=1) if picked else np.zeros(len(left))
            gains = self.lambda_ * relevance[left] - (1 - self.lambda_) * redundancy
            best = left[int(np.argmax(gains))]
            picked.append(best)
            left.remove(best)
        return [candidates[i] for i in picked]

    def _similarity_matrix(self, candidates: list[Candidate]) -> np.ndarray:
        vectors = []
        for c in candidates:
            v = self.embeddings.get(c.item_id)
            vectors.append(np.zeros(0) if v is None else np.asarray(v, dtype=float))
        dim = max((len(v) for v in vectors), default=0)
        matrix = np.array([v / (np.linalg.norm(v) or 1.0) if len(v) else np.zeros(dim) for v in vectors])
        return matrix @ matrix.T if dim else np.zeros((len(candidates), len(candidates)))


def _minmax(values: Sequence[float]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.ones_like(values)
