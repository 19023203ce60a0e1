"""CandidatePool.extend: the same pool as one ``add`` per item, and a walk that can resume where it stopped."""

import random

from kairos.engine.candidates import CandidatePool


def _add_one_by_one(pool: CandidatePool, ranked: list[str], reason: str, limit: int, excluded: set[str]) -> None:
    for item in ranked:  # the loop retrieval ran before extend
        if len(pool) >= limit:
            return
        if item not in excluded:
            pool.add(item, reason)


def _random_case(rng: random.Random) -> tuple[CandidatePool, list[str], set[str], int]:
    pool = CandidatePool()
    for item in rng.sample(range(40), rng.randrange(15)):
        for reason in rng.sample(["a", "b", "c", "d", "e", "popular"], rng.randrange(1, 6)):
            pool.add(f"i{item}", reason)
    ranked = [f"i{item}" for item in rng.sample(range(40), rng.randrange(1, 30))]
    excluded = {f"i{item}" for item in rng.sample(range(40), rng.randrange(8))}
    return pool, ranked, excluded, len(pool) + rng.randrange(12)


def _state(pool: CandidatePool) -> tuple:
    return pool.items, list(pool.reasons.items())


def test_extend_matches_one_add_per_item_and_counts_the_walk():
    rng = random.Random(7)
    for _ in range(500):
        pool, ranked, excluded, limit = _random_case(rng)
        reference = CandidatePool([*pool.items], {k: [*v] for k, v in pool.reasons.items()})
        walked = pool.extend(ranked, "popular", limit, excluded)
        _add_one_by_one(reference, ranked, "popular", limit, excluded)
        assert _state(pool) == _state(reference)
        assert len(pool) >= limit or walked == len(ranked)


def test_a_second_walk_may_start_where_the_first_stopped():
    """retrieve_candidates walks the best sellers twice: the items of the first walk need not be walked again."""
    rng = random.Random(11)
    for _ in range(500):
        pool, ranked, excluded, limit = _random_case(rng)
        walked = pool.extend(ranked, "popular", limit, excluded)
        for item in rng.sample(pool.items, min(3, len(pool))):  # other sources in between
            pool.add(item, "co_visit")
        pool.extend(["x1", "x2"], "trending")
        again = CandidatePool([*pool.items], {k: [*v] for k, v in pool.reasons.items()})
        pool.extend(ranked[walked:], "popular", limit + 5, excluded)
        again.extend(ranked, "popular", limit + 5, excluded)
        assert _state(pool) == _state(again)


def test_recently_engaged_items_join_a_pool_the_discovery_sources_filled_first():
    from factories import T0, click, purchase

    from kairos.engine.config import EngineConfig
    from kairos.engine.recommender import Recommender
    from kairos.engine.state import UserInterest

    config = EngineConfig()
    recommender, users = Recommender(config), {}

    def observe(event):
        user = users.setdefault(event.user_id, UserInterest.new(event.user_id, config))
        recommender.observe(user, event)
        return user

    for n in range(60):  # returning shoppers' discoveries: a discovered-now list of 30 items
        observe(purchase(user=f"b{n}", items=((f"warm{n}", "c", 1.0),), ts=T0 + n))
        observe(purchase(user=f"b{n}", items=((f"hit{n % 30}", "c", 1.0),), ts=T0 + 100 + n))
    shopper = observe(click(user="me", item="niche", category="rare", action="add_to_cart", ts=T0 + 7_200))
    pool = recommender._retrieve(shopper, T0 + 7_201, set())  # popular lists are cached for an hour
    assert len([item for item in pool.items if "popular_now" in pool.reasons[item]]) >= 5  # filled past 5 first
    assert "recently_engaged" in pool.reasons["niche"]
