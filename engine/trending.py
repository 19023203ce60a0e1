"""Trending items from exponentially decayed interaction counts over a short and a long horizon.

Each item keeps two counters that halve every ``short_half_life_s`` and ``long_half_life_s``. Under a steady rate
``r`` (events per second) a counter with half-life ``h`` settles at ``r h / ln 2``, so ``count x ln 2 / h`` is a rate
estimate on that horizon. The **trend ratio** compares the two rates,

``trend = (short_rate + a) / (long_rate + a)``,

with ``a`` (``smoothing_rate``) keeping rarely seen items from trending on a single event. ``trend > 1`` means the item
is hotter now than usual. :meth:`TrendingCounter.top_trending` serves as a candidate source, :meth:`popular` (long
horizon) for cold-start users. Memory is bounded by ``max_items``: beyond it the items with the smallest long-horizon
count are dropped.

Examples
--------
>>> trend = TrendingCounter(short_half_life_s=60, long_half_life_s=3600, min_count=2)
>>> for t in range(10):
...     trend.add("steady", ts=t * 360.0)
>>> for t in range(5):
...     trend.add("burst", ts=3240.0 + t)
>>> [item for item, _ in trend.top_trending(1, now=3250.0)]
['burst']
"""

from __future__ import annotations

import math

import numpy as np


class TrendingCounter:
    """Short- and long-horizon decayed counts per item (event time passed in, never read from a clock).

    Parameters
    ----------
    short_half_life_s, long_half_life_s
        Half-lives of the two counters.
    smoothing_rate
        Events per second added to both rates in the trend ratio.
    min_count
        Short-horizon count an item needs before it can trend.
    max_items
        Items kept; the least popular (long horizon) are dropped beyond it.
    """

    def __init__(self, short_half_life_s: float = 3600.0, long_half_life_s: float = 86_400.0,
                 smoothing_rate: float = 1e-4, min_count: float = 3.0, max_items: int = 200_000) -> None:
        if not 0 < short_half_life_s < long_half_life_s:
            raise ValueError("need 0 < short_half_life_s < long_half_life_s")
        self.half_lives = np.array([short_half_life_s, long_half_life_s])
        self.smoothing_rate, self.min_count, self.max_items = smoothing_rate, min_count, max_items
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._counts = np.zeros((0, 2))  # [short, long] as of _last[i]
        self._last = np.zeros(0)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item_id: str, ts: float, weight: float = 1.0) -> None:
        """Count one interaction (``weight`` lets purchases count more than views)."""
        i = self._slot(item_id, ts)
        # Late events (ts before the item's last update) are decayed forward to the stored time, not backwards.
        elapsed = ts - self._last[i]
        if elapsed >= 0:
            self._counts[i] = self._counts[i] * self._decay(elapsed) + weight
            self._last[i] = ts
        else:
            self._counts[i] += weight * self._decay(-elapsed)
        if len(self._ids) > self.max_items:
            self._evict(ts)

    def counts(self, now: float) -> dict[str, tuple[float, float]]:
        """``item -> (short count, long count)`` decayed to ``now``."""
        current = self._counts_at(now)
        return {item: (float(current[i, 0]), float(current[i, 1])) for item, i in self._index.items()}

    def trend_scores(self, now: float) -> np.ndarray:
        """Trend ratio of every item (aligned with the internal order), 0 for items below ``min_count``."""
        current = self._counts_at(now)
        rates = current * math.log(2) / self.half_lives
        ratio = (rates[:, 0] + self.smoothing_rate) / (rates[:, 1] + self.smoothing_rate)
        return np.where(current[:, 0] >= self.min_count, ratio, 0.0)

    def top_trending(self, k: int, now: float, exclude: set[str] = frozenset()) -> list[tuple[str, float]]:
        """The ``k`` items with the highest trend ratio above 1, best first (ties by item id)."""
        return self._top(self.trend_scores(now), k, exclude, minimum=1.0)

    def popular(self, k: int, now: float, exclude: set[str] = frozenset()) -> list[tuple[str, float]]:
        """The ``k`` items with the highest long-horizon count: a cold-start candidate source."""
        return self._top(self._counts_at(now)[:, 1], k, exclude, minimum=0.0)

    def _top(self, scores: np.ndarray, k: int, exclude: set[str], minimum: float) -> list[tuple[str, float]]:
        order = sorted(range(len(self._ids)), key=lambda i: (-scores[i], self._ids[i]))
        picked = (self._ids[i] for i in order if scores[i] > minimum and self._ids[i] not in exclude)
        return [(item, float(scores[self._index[item]])) for item, _ in zip(picked, range(k))]

    def _counts_at(self, now: float) -> np.ndarray:
        n = len(self._ids)
        elapsed = np.maximum(now - self._last[:n], 0.0)[:, None]
        return self._counts[:n] * np.exp2(-elapsed / self.half_lives[None, :])

    def _decay(self, elapsed: float) -> np.ndarray:
        return np.exp2(-elapsed / self.half_lives)

    def _slot(self, item_id: str, ts: float) -> int:
        if item_id not in self._index:
            n = len(self._ids)
            if n == len(self._last):
                # Grow by doubling so adding n new items costs O(n) copies in total, not O(n^2).
                self._counts = np.vstack([self._counts, np.zeros((max(n, 16), 2))])
                self._last = np.concatenate([self._last, np.zeros(max(n, 16))])
            self._index[item_id] = n
            self._ids.append(item_id)
            self._counts[n], self._last[n] = 0.0, ts
        return self._index[item_id]

    def _evict(self, now: float) -> None:
        # Drop the least popular tenth in one go so eviction cost is amortised over many adds.
        long_counts = self._counts_at(now)[:, 1]
        keep = np.sort(np.argsort(-long_counts, kind="stable")[: int(self.max_items * 0.9)])
        self._ids = [self._ids[i] for i in keep]
        self._counts, self._last = self._counts[keep], self._last[keep]
        self._index = {item: i for i, item in enumerate(self._ids)}
