"""Exponential time decay with a half-life, and a bounded map of decayed scores.

``value(t) = value(t0) * 2 ** (-(t - t0) / half_life)``. Every key of a :class:`DecayedScores` decays at the same
rate, so each score is stored scaled to one reference time ``ref``: ``s = value(t) * 2 ** ((t - ref) / half_life)``.
Then the value now is ``s * 2 ** (-(now - ref) / half_life)`` — one factor shared by every key — and ranking keys
needs no decay at all (the order of ``s`` is the order now). An update costs O(1); an idle key costs nothing.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from operator import itemgetter

#: Rebase when stored scores grow by 2**60: far from float overflow (2**1024), no precision lost.
_REBASE_EXPONENT = 60.0


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
    """A map key -> decayed score, bounded to ``capacity`` keys (the weakest are dropped first). Scores never go
    below zero (a negative signal can cancel interest, not create disinterest).

    >>> s = DecayedScores(half_life_s=10.0, capacity=2)
    >>> s.add("a", 4.0, t=0.0); s.add("b", 1.0, t=0.0); s.add("c", 2.0, t=10.0)
    >>> sorted(s.items(now=10.0))
    [('a', 2.0), ('c', 2.0)]
    """

    __slots__ = ("half_life_s", "capacity", "_scores", "_ref", "_factor_at")

    def __init__(self, half_life_s: float, capacity: int, state: dict | None = None) -> None:
        self.half_life_s = half_life_s
        self.capacity = capacity
        self._scores: dict[str, float] = {}
        self._ref: float | None = None
        self._factor_at: tuple[float, float] = (math.nan, 1.0)
        if state:
            self._ref = state["ref"]
            self._scores = state["s"]

    def _scale(self, t: float) -> float:
        """2 ** ((t - ref) / half_life): the weight of an event at ``t`` in stored units."""
        return 2.0 ** ((t - self._ref) / self.half_life_s)

    def _factor(self, now: float) -> float:
        """Stored units -> value at ``now`` (cached: one ``now`` is read many times per recommendation)."""
        at, factor = self._factor_at
        if at != now:
            factor = 1.0 / self._scale(now) if self._ref is not None else 1.0
            self._factor_at = (now, factor)
        return factor

    def add(self, key: str, weight: float, t: float) -> None:
        if self._ref is None:
            self._ref = t
        elif (t - self._ref) / self.half_life_s > _REBASE_EXPONENT:
            self._rebase(t)
        scores = self._scores
        scores[key] = max(scores.get(key, 0.0) + weight * self._scale(t), 0.0)
        if len(scores) > self.capacity:
            self._evict()

    def _rebase(self, t: float) -> None:
        shrink = 1.0 / self._scale(t)
        self._scores = {k: v * shrink for k, v in self._scores.items()}
        self._ref = t
        self._factor_at = (math.nan, 1.0)

    def get(self, key: str, now: float) -> float:
        stored = self._scores.get(key)
        return 0.0 if stored is None else stored * self._factor(now)

    def items(self, now: float) -> Iterator[tuple[str, float]]:
        factor = self._factor(now)
        for key, stored in self._scores.items():
            yield key, stored * factor

    def top(self, n: int, now: float) -> list[tuple[str, float]]:
        factor = self._factor(now)
        return [(k, v * factor) for k, v in heapq.nlargest(n, self._scores.items(), key=itemgetter(1))]

    def as_dict(self, now: float) -> dict[str, float]:
        factor = self._factor(now)
        return {k: v * factor for k, v in self._scores.items()}

    def total(self, now: float) -> float:
        return sum(self._scores.values()) * self._factor(now)

    def keys(self):
        return self._scores.keys()

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, key: str) -> bool:
        return key in self._scores

    def _evict(self) -> None:
        # Down to ~90% of capacity at once, so the selection is amortised over many inserts.
        keep = self.capacity - self.capacity // 10
        kept = heapq.nlargest(keep, self._scores.items(), key=itemgetter(1))
        self._scores = dict(kept)

    def to_state(self, copy: bool = False) -> dict:
        """The stored scores and their reference time; ``copy``: scores that later updates do not change (a flat
        dict of floats, so one ``dict.copy``: what a checkpoint built in slices keeps, engine/checkpoint.py)."""
        return {"ref": self._ref, "s": self._scores.copy() if copy else self._scores}
