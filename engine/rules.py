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
from itertools import chain, islice
from operator import itemgetter
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
            before = outcome.kept
            outcome.kept = step.apply(before, context)
            still = {c.item_id for c in outcome.kept}
            for c in before:
                if c.item_id not in still:
                    outcome.dropped[c.item_id] = step.name
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
_FIRST = itemgetter(0)  # the oldest impression of a key


class ImpressionHistory:
    """Impression timestamps per user x key (item id or creative id) within a sliding window.

    Held per user (``user -> key -> timestamps``), so that one shopper's history can be stored with their state and
    read back with it (:meth:`user_state`, :meth:`load_user`) and leave memory with them (:meth:`forget`).
    ``max_per_key`` keeps only the newest impressions of a user x key (a cap of that many needs no more).
    """

    def __init__(self, window_s: float, max_per_key: int | None = None) -> None:
        self.window_s = window_s
        self.max_per_key = max_per_key
        self._shown: dict[str, dict[str, deque[float]]] = {}
        self._pairs = 0  # user x key pairs held
        self._prune_at = _FIRST_PRUNE

    def record(self, user_id: str, key: str, ts: float) -> None:
        keys = self._shown.get(user_id)
        if keys is None:
            keys = self._shown[user_id] = {}
        shown = keys.get(key)
        if shown is None:
            shown = keys[key] = deque(maxlen=self.max_per_key)
            self._pairs += 1
        shown.append(ts)
        if self._pairs >= self._prune_at:
            # Pairs nobody asks about again (a shopper who left) would stay forever: prune whenever the map has
            # doubled since the last prune, so memory follows the traffic of one window at O(1) amortised cost.
            self.prune(ts)
            self._prune_at = max(_FIRST_PRUNE, 2 * self._pairs)

    def __len__(self) -> int:
        """User x key pairs held."""
        return self._pairs

    def keys_shown(self, user_id: str) -> Collection[str]:
        """The keys with impressions held for ``user_id`` (some may be outside the window: :meth:`count` says);
        a live view, empty when none."""
        return self._shown.get(user_id) or ()

    def count(self, user_id: str, key: str, now: float) -> int:
        """Impressions of ``key`` to ``user_id`` in ``(now - window_s, now]``."""
        keys = self._shown.get(user_id)
        if keys is None:
            return 0
        shown = keys.get(key)
        if shown is None:
            return 0
        while shown and now - shown[0] >= self.window_s:
            shown.popleft()
        if not shown:
            self._drop(user_id, keys, key)
            return 0
        return sum(1 for ts in shown if ts <= now)

    def _drop(self, user_id: str, keys: dict[str, deque[float]], key: str) -> None:
        del keys[key]
        self._pairs -= 1
        if not keys:
            del self._shown[user_id]

    def prune(self, now: float) -> None:
        """Forget every impression outside the window (call periodically to bound memory of idle users)."""
        for user_id, keys in list(self._shown.items()):
            for key in list(keys):
                self.count(user_id, key, now)

    def forget(self, user_id: str) -> None:
        """Drop one user's impressions from memory (their stored state holds them: :meth:`user_state`)."""
        self._pairs -= len(self._shown.pop(user_id, ()))

    def to_state(self) -> dict:
        """``{user: {key: [ts, ...]}}``, the impressions held (the window is configuration, not state)."""
        return {user_id: {key: list(shown) for key, shown in keys.items()} for user_id, keys in self._shown.items()}

    def load_state(self, data: dict) -> None:
        self._shown = {}
        self._pairs = 0
        for user_id, keys in data.items():
            self._load_keys(user_id, keys.items())
        self._prune_at = max(_FIRST_PRUNE, 2 * self._pairs)

    def _load_keys(self, user_id: str, keys) -> None:
        loaded = {key: deque(times, maxlen=self.max_per_key) for key, times in keys}
        if loaded:
            self._shown[user_id] = loaded
            self._pairs += len(loaded)

    # --- one user's history, compact, for their stored state ---

    def user_state(self, user_id: str, now: float, max_keys: int) -> dict | None:
        """The user's impressions inside the window at ``now`` (those outside are forgotten here, as
        :meth:`count` would), for their stored state: ``{"t": newest, "a": [age, ...], "k": [key, ...], "n": [count
        per key, ...], "i": [index into a, ...]}``, ages in milliseconds before ``newest``, ascending, so the time
        of a slate, shared by its items, is stored once, and ``i`` lists the impressions of ``k[0]``, then of
        ``k[1]`` ... At most the ``max_keys`` keys shown last; ``None`` without any. Times come back to the
        millisecond. Flat lists, built without a Python loop per key: this runs for every shopper shown something.

        >>> history = ImpressionHistory(window_s=86_400)
        >>> for ts in (100.0, 160.5):
        ...     for item in ("a", "b"):
        ...         history.record("u1", item, ts)
        >>> saved = history.user_state("u1", now=200.0, max_keys=500)
        >>> saved
        {'t': 160.5, 'a': [0, 60500], 'k': ['a', 'b'], 'n': [2, 2], 'i': [1, 0, 1, 0]}
        >>> twin = ImpressionHistory(window_s=86_400); twin.load_user("u1", saved)
        >>> twin.count("u1", "a", now=200.0), list(twin._shown["u1"]["b"])
        (2, [100.0, 160.5])
        """
        keys = self._shown.get(user_id)
        if keys is None:
            return None
        if now - min(map(_FIRST, keys.values())) >= self.window_s:  # some left the window: forget them first
            for key in list(keys):
                self.count(user_id, key, now)
            keys = self._shown.get(user_id)
            if keys is None:
                return None
        if len(keys) > max_keys:
            keys = dict(sorted(keys.items(), key=lambda kv: kv[1][-1])[-max_keys:])
        distinct = sorted(set().union(*keys.values()), reverse=True)
        newest = distinct[0]
        position = dict(zip(distinct, range(len(distinct))))
        return {
            "t": newest, "a": [round((newest - ts) * 1000.0) for ts in distinct], "k": list(keys),
            "n": list(map(len, keys.values())),
            "i": list(map(position.__getitem__, chain.from_iterable(keys.values()))),
        }  # fmt: skip

    def load_user(self, user_id: str, data: dict | None) -> None:
        """Replace the user's impressions with :meth:`user_state`'s output (``None``: they have none)."""
        self.forget(user_id)
        if not data:
            return
        newest = data["t"]
        times = [newest - age / 1000.0 for age in data["a"]]
        flat = iter(data["i"])
        self._load_keys(user_id, ((key, [times[i] for i in islice(flat, n)]) for key, n in zip(data["k"], data["n"])))


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
        shown = self.history.keys_shown(context.user_id)
        if not shown:  # most shoppers have seen none of the candidates: one lookup instead of one per candidate
            return list(candidates)
        return [c for c in candidates if not self._capped(self._key(c), shown, context)]

    def _key(self, candidate: Candidate) -> str | None:
        return candidate.item_id if self.key == "item" else candidate.creative_id

    def _capped(self, key: str | None, shown: Collection[str], context: RuleContext) -> bool:
        if key is None or key not in shown:
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
