"""Candidate retrieval: several named sources, merged and deduplicated, each candidate remembering why it came.

Sources (in the order they fill the pool):
``recently_engaged`` the last few items the user interacted with (and did not buy): shoppers come back to them;
``popular``    the long-run best sellers (a fifth of the pool first, more at the end to fill it);
``co_visit``   neighbours of the user's recent items in the co-occurrence graph;
``category``   popular items of the user's strongest categories;
``trending``   items rising now (short half-life popularity);
``popular``    long-run best sellers: the cold-start source for a user with no state.
Extra sources (e.g. the embedding ANN index) plug in as callables.

With a :class:`~kairos.engine.discovery.PurchaseGraph` two sources come first and every candidate gets a
discovery score (``CandidatePool.discovery``, blended with the ranker's score by the Recommender):
``similar_purchases``  item-kNN over the shopper's purchase history (cosine of co-purchases);
``similar_shoppers``   user-kNN: what shoppers who bought like this one bought;
``similar_products``   content kNN: items of the product lines (names, stock-code families) the shopper bought;
``popular_now``        what sells in the last few days (for a shopper with no history, the whole list, blended with
                       what newcomers' first orders hold), or for a returning shopper what others bought for the
                       first time in the last few days.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from kairos.engine.discovery import PurchaseGraph
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
    #: item -> discovery score (kNN vote / best vote + user-kNN and popular-now shares); empty without a
    #: PurchaseGraph.
    discovery: dict[str, float] = field(default_factory=dict)

    def add(self, item_id: str, reason: str) -> None:
        known = self.reasons.get(item_id)
        if known is None:
            self.items.append(item_id)
            self.reasons[item_id] = [reason]
        elif reason not in known and len(known) < 4:
            known.append(reason)

    def extend(
        self, ranked: Sequence[str], reason: str, limit: float = math.inf, excluded: Collection[str] = ()
    ) -> int:
        """:meth:`add` for each of ``ranked`` in order, skipping ``excluded``, until the pool holds ``limit``
        candidates. Returns how many of ``ranked`` it walked: those are now excluded or in the pool with ``reason``
        (or with four other reasons), so a later walk with the same reason can start after them.

        One loop with the pool's list and dict at hand: the popular, trending and category lists are walked item
        by item, and a ``len`` and an ``add`` call per item made them the largest part of retrieval with 500
        candidates."""
        items, reasons = self.items, self.reasons
        size = len(items)
        for walked, item in enumerate(ranked):
            if size >= limit:
                return walked
            if item in excluded:
                continue
            known = reasons.get(item)
            if known is None:
                items.append(item)
                reasons[item] = [reason]
                size += 1
            elif reason not in known and len(known) < 4:
                known.append(reason)
        return len(ranked)

    def __len__(self) -> int:
        return len(self.items)


def retrieve_candidates(
    user: UserInterest,
    model: GlobalModel,
    now: float,
    limit: int,
    excluded: set[str],
    extra_sources: Iterable[tuple[str, CandidateSource]] = (),
    discovery: PurchaseGraph | None = None,
) -> CandidatePool:
    pool = CandidatePool()
    if discovery is not None:
        _add_discovery(pool, user, discovery, now, limit, excluded)
        if user.event_count == 0 and len(pool) >= limit:
            return pool  # no history: what sells now, in that order (nothing else has evidence for this shopper)
    trending, popular = model.top_items(now)
    pool.extend(list(reversed(user.recent))[:5], "recently_engaged", len(pool) + 5, excluded)
    # The long-run best sellers always compete: a strong baseline for everyone, and the ranker decides.
    walked = pool.extend(popular, "popular", len(pool) + limit // 5, excluded)
    _add_co_visits(pool, user, model, limit // 2, excluded)
    _add_category_items(pool, user, model, now, limit // 4, excluded)
    for name, source in extra_sources:
        for item, _ in source(user, now, limit // 4):
            if item not in excluded:
                pool.add(item, name)
    pool.extend(trending, "trending", limit, excluded)
    pool.extend(popular[walked:], "popular", limit, excluded)  # the first walk's items have their reason already
    del pool.items[limit:]
    return pool


def _add_discovery(
    pool: CandidatePool, user: UserInterest, discovery: PurchaseGraph, now: float, limit: int, excluded: set[str]
) -> None:
    config = discovery.config
    similar = discovery.scores(user, now, limit // 2, excluded) if user.purchased else []
    best = similar[0][1] if similar else 1.0
    for item, score in similar:
        pool.add(item, "similar_purchases")
        pool.discovery[item] = score / best
    shoppers = discovery.similar_shoppers_scores(user, limit // 4, excluded) if user.purchased else []
    best = shoppers[0][1] if shoppers else 1.0
    for item, score in shoppers:
        pool.add(item, "similar_shoppers")
        pool.discovery[item] = pool.discovery.get(item, 0.0) + config.discovery_shopper_weight * score / best
    content = discovery.similar_products_scores(user, limit // 5, excluded) if user.purchased else []
    best = content[0][1] if content else 1.0
    for item, score in content:
        pool.add(item, "similar_products")
        pool.discovery[item] = pool.discovery.get(item, 0.0) + config.catalogue_weight * score / best
    popular = discovery.popular(now, discovered=True) if user.event_count > 0 else discovery.cold_start(now)
    top = popular[0][1] if popular else 1.0
    wanted = limit if user.event_count == 0 else len(pool) + limit // 5
    arrivals = discovery.new_arrivals(now) if user.event_count > 0 else frozenset()
    # Every item of the list gets its share; only the first ones join the pool.
    scores, weight, new_boost = pool.discovery, config.discovery_popular_weight, 1.0 + config.discovery_new_weight
    for item, score in popular:
        if item not in excluded:
            share = weight * score / top
            scores[item] = scores.get(item, 0.0) + (share * new_boost if item in arrivals else share)
    pool.extend([item for item, _ in popular], "popular_now", wanted, excluded)
    if user.event_count > 0:
        factor = config.discovery_stale_factor
        for item in discovery.stale_items(pool.discovery, now):
            pool.discovery[item] *= factor


def _add_co_visits(pool: CandidatePool, user: UserInterest, model: GlobalModel, n: int, excluded: set[str]) -> None:
    recent = list(user.recent)[-model.config.candidate_anchors :]
    co_visit, add = pool.co_visit, pool.add
    for anchor in reversed(recent):  # the latest item's neighbours first
        reason = f"co_visit:{anchor}"
        for item, weight in model.neighbours_of(anchor, n):
            if item in excluded or item == anchor:
                continue
            co_visit[item] = co_visit.get(item, 0.0) + weight
            add(item, reason)


def _add_category_items(
    pool: CandidatePool, user: UserInterest, model: GlobalModel, now: float, n: int, excluded: set[str]
) -> None:
    for category, _ in user.categories.top(3, now):
        pool.extend(model.category_top(category, n, now), f"category:{category}", len(pool) + n, excluded)
