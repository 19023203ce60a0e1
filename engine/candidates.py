"""Candidate retrieval: several named sources, merged and deduplicated, each candidate remembering why it came.

Sources (in the order they fill the pool):
``recently_engaged`` the last few items the user interacted with (and did not buy): shoppers come back to them;
``popular``    the long-run best sellers (a fifth of the pool first, more at the end to fill it);
``co_visit``   neighbours of the user's recent items in the co-occurrence graph;
``category``   popular items of the user's strongest categories;
``trending``   items rising now (short half-life popularity);
``popular``    long-run best sellers: the cold-start source for a user with no state.
Extra sources (e.g. the embedding ANN index) plug in as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kairos.engine.global_model import GlobalModel
from kairos.engine.state import UserInterest

#: A pluggable source: (user, now, n) -> [(item_id, score)].
CandidateSource = Callable[[UserInterest, float, int], list[tuple[str, float]]]


@dataclass(slots=True)
class CandidatePool:
    """Ordered, deduplicated candidates with their source reasons and co-visit scores (a ranking feature)."""

    items: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    co_visit: dict[str, float] = field(default_factory=dict)

    def add(self, item_id: str, reason: str) -> None:
        known = self.reasons.get(item_id)
        if known is None:
            self.items.append(item_id)
            self.reasons[item_id] = [reason]
        elif reason not in known and len(known) < 4:
            known.append(reason)

    def __len__(self) -> int:
        return len(self.items)


def retrieve_candidates(
    user: UserInterest,
    model: GlobalModel,
    now: float,
    limit: int,
    excluded: set[str],
    extra_sources: Iterable[tuple[str, CandidateSource]] = (),
) -> CandidatePool:
    pool = CandidatePool()
    trending, popular = model.top_items(now)
    _add_ranked(pool, "recently_engaged", list(reversed(user.recent))[:5], 5, excluded)
    # The long-run best sellers always compete: a strong baseline for everyone, and the ranker decides.
    _add_ranked(pool, "popular", popular, len(pool) + limit // 5, excluded)
    _add_co_visits(pool, user, model, limit // 2, excluded)
    _add_category_items(pool, user, model, now, limit // 4, excluded)
    for name, source in extra_sources:
        for item, _ in source(user, now, limit // 4):
            if item not in excluded:
                pool.add(item, name)
    _add_ranked(pool, "trending", trending, limit, excluded)
    _add_ranked(pool, "popular", popular, limit, excluded)
    del pool.items[limit:]
    return pool


def _add_co_visits(pool: CandidatePool, user: UserInterest, model: GlobalModel, n: int, excluded: set[str]) -> None:
    recent = list(user.recent)[-model.config.candidate_anchors :]
    for anchor in reversed(recent):  # the latest item's neighbours first
        for item, weight in model.neighbours_of(anchor, n):
            if item in excluded or item == anchor:
                continue
            pool.co_visit[item] = pool.co_visit.get(item, 0.0) + weight
            pool.add(item, f"co_visit:{anchor}")


def _add_category_items(
    pool: CandidatePool, user: UserInterest, model: GlobalModel, now: float, n: int, excluded: set[str]
) -> None:
    for category, _ in user.categories.top(3, now):
        items = model.category_items.get(category)
        if items is not None:
            _add_ranked(pool, f"category:{category}", [i for i, _ in items.top(n, now)], len(pool) + n, excluded)


def _add_ranked(pool: CandidatePool, reason: str, ranked: list[str], limit: int, excluded: set[str]) -> None:
    for item in ranked:
        if len(pool) >= limit:
            return
        if item not in excluded:
            pool.add(item, reason)
