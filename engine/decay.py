"""Exponential time decay with a half-life, and a bounded map of decayed scores.

Scores are stored as ``(value, t)`` pairs and decayed lazily on read, so an update costs O(1) and an idle key
costs nothing. ``value(t) = value(t0) * 2 ** (-(t - t0) / half_life)``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """Weight left after ``elapsed_s`` seconds; events from the future (clock skew) are not amplified.

    >>> decay_factor(3600.0, 3600.0)
    0.5
    >>> decay_factor(-10.0, 3600.0)
    1.0
    """
    if elapsed_s <= 0.0:
        return 1.0
    return 2.0 ** (-elapsed_s / half_life_s)


class DecayedScores:
    """A map key -> decayed score, bounded to ``capacity`` keys (the weakest now are dropped first).

    >>> s = DecayedScores(half_life_s=10.0, capacity=2)
    >>> s.add("a", 4.0, t=0.0); s.add("b", 1.0, t=0.0); s.add("c", 2.0, t=10.0)
    >>> sorted(s.items(now=10.0))
    [('a', 2.0), ('c', 2.0)]
    """

    __slots__ = ("half_life_s", "capacity", "_scores")

    def __init__(self, half_life_s: float, capacity: int, scores: dict[str, list[float]] | None = None) -> None:
        self.half_life_s = half_life_s
        self.capacity = capacity
        self._scores: dict[str, list[float]] = scores if scores is not None else {}

    def add(self, key: str, weight: float, t: float) -> None:
        entry = self._scores.get(key)
        if entry is None:
            self._scores[key] = [max(weight, 0.0), t]
            if len(self._scores) > self.capacity:
                self._evict(t)
            return
        value, t0 = entry
        # Out-of-order events keep the newest reference time and are decayed onto it.
        if t >= t0:
            entry[0] = max(value * decay_factor(t - t0, self.half_life_s) + weight, 0.0)
            entry[1] = t
        else:
            entry[0] = max(value + weight * decay_factor(t0 - t, self.half_life_s), 0.0)

    def get(self, key: str, now: float) -> float:
        entry = self._scores.get(key)
        if entry is None:
            return 0.0
        return entry[0] * decay_factor(now - entry[1], self.half_life_s)

    def items(self, now: float) -> Iterator[tuple[str, float]]:
        for key, (value, t0) in self._scores.items():
            yield key, value * decay_factor(now - t0, self.half_life_s)

    def top(self, n: int, now: float) -> list[tuple[str, float]]:
        return heapq.nlargest(n, self.items(now), key=lambda kv: kv[1])

    def total(self, now: float) -> float:
        return sum(score for _, score in self.items(now))

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, key: str) -> bool:
        return key in self._scores

    def _evict(self, now: float) -> None:
        # Evict down to ~90% of capacity at once so eviction's sort is amortised over many inserts.
        keep = self.capacity - self.capacity // 10
        ranked = sorted(self._scores.items(), key=lambda kv: kv[1][0] * decay_factor(now - kv[1][1], self.half_life_s))
        for key, _ in ranked[: len(ranked) - keep]:
            del self._scores[key]

    def to_state(self) -> dict[str, list[float]]:
        return self._scores

    @staticmethod
    def log_weight(score: float) -> float:
        return math.log1p(max(score, 0.0))
