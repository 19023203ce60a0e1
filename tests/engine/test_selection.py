import random

import numpy as np
import pytest
from factories import T0, click, impression, purchase

from kairos.engine.config import EngineConfig
from kairos.engine.selection import Selector
from kairos.engine.state import UserInterest


def _warm(selector: Selector, seed=0) -> None:
    rng = random.Random(seed)
    users: dict[str, UserInterest] = {}
    for n in range(3000):
        uid = f"bg{rng.randrange(60)}"
        cat = int(uid[2:]) % 5
        user = users.setdefault(uid, UserInterest.new(uid, selector.config))
        selector.observe(user, click(user=uid, item=f"c{cat}-i{rng.randrange(20)}", category=f"c{cat}", ts=T0 + n))


def _shopper(selector: Selector) -> UserInterest:
    user = UserInterest.new("shopper", selector.config)
    selector.observe(user, click(user="shopper", item="c1-i0", category="c1", ts=T0 + 4000))
    return user


def _rank_of(selection, item_id: str) -> int:
    ids = [i.item_id for i in selection.items]
    return ids.index(item_id) if item_id in ids else len(ids)


def test_click_after_impression_moves_the_item_and_its_neighbours_up():
    selector = Selector(EngineConfig(top_n=10, max_candidates=60), exploration=False, max_per_category=10)
    _warm(selector)
    user = _shopper(selector)
    now = T0 + 4001
    first = selector.select(user, now, n=10)
    target = first.items[-1].item_id  # the weakest item shown
    neighbour_scores_before = dict(zip(*_scores(selector, user, now)))
    for round_ in range(3):
        shown = selector.select(user, now + round_ * 10, n=10)
        selector.observe(user, impression(user="shopper", items=[i.item_id for i in shown.items], rec_id=shown.rec_id, ts=now + round_ * 10))
        if target in [i.item_id for i in shown.items]:
            selector.observe(user, click(user="shopper", item=target, category=target.split("-")[0], action="click", ts=now + round_ * 10 + 1, rec_id=shown.rec_id))
    after = selector.select(user, now + 40, n=10)
    assert _rank_of(after, target) < _rank_of(first, target), "clicked item did not move up"
    neighbours = [n for n, _ in selector.model.neighbours_of(target, 5)]
    items, scores_after = _scores(selector, user, now + 40)
    after_map = dict(zip(items, scores_after))
    moved = [n for n in neighbours if n in after_map and n in neighbour_scores_before and after_map[n] > neighbour_scores_before[n]]
    assert moved, "no similar item gained from the click"
    assert selector.examples_learned > 0


def _scores(selector: Selector, user: UserInterest, now: float):
    from kairos.engine.selection import TOP_LOGIT, segment_of

    pool, scores = selector.recommender.score_candidates(user, now)
    return pool.items, selector.corrector.correct(pool.items, segment_of(user, now), scores - scores.max() + TOP_LOGIT)


def test_purchased_item_disappears():
    selector = Selector(EngineConfig(top_n=10), exploration=False)
    _warm(selector)
    user = _shopper(selector)
    before = selector.select(user, T0 + 4001, n=10)
    bought = before.items[0].item_id
    selector.observe(user, purchase(user="shopper", items=[(bought, "c1", 3.0)], ts=T0 + 4002))
    after = selector.select(user, T0 + 4003, n=10)
    assert bought not in [i.item_id for i in after.items]


def test_frequency_cap_holds():
    selector = Selector(EngineConfig(top_n=5), exploration=False, frequency_cap=2, max_per_category=10)
    _warm(selector)
    user = _shopper(selector)
    seen: dict[str, int] = {}
    for n in range(6):
        shown = selector.select(user, T0 + 4001 + n, n=5)
        ids = [i.item_id for i in shown.items]
        for item in ids:
            seen[item] = seen.get(item, 0) + 1
        selector.observe(user, impression(user="shopper", items=ids, rec_id=shown.rec_id, ts=T0 + 4001 + n))
    assert max(seen.values()) <= 2, seen


def test_category_cap_diversifies():
    selector = Selector(EngineConfig(top_n=10), exploration=False, max_per_category=2)
    _warm(selector)
    user = _shopper(selector)
    shown = selector.select(user, T0 + 4001, n=10)
    categories = [i.item_id.split("-")[0] for i in shown.items]
    assert max(categories.count(c) for c in set(categories)) <= 2


def test_hidden_items_never_shown():
    selector = Selector(EngineConfig(top_n=10), exploration=False)
    _warm(selector)
    user = _shopper(selector)
    first = selector.select(user, T0 + 4001, n=10)
    selector.hidden.update(i.item_id for i in first.items[:3])
    again = selector.select(user, T0 + 4002, n=10)
    assert not selector.hidden & {i.item_id for i in again.items}


@pytest.mark.parametrize("n_items", [3, 4])
def test_logged_propensities_are_consistent_with_the_policy(n_items):
    """Each position's propensities over all items sum to 1, and the probabilities of all ordered slates the
    policy can show sum to 1 and give the same position marginals."""
    import itertools

    selector = Selector(EngineConfig(top_n=n_items), exploration=True, epsilon=0.3)
    policy = selector.policy
    policy.draws = 20_000
    scores, sds = np.array([3.0, 1.0, 2.0, 0.5][:n_items]), np.full(n_items, 0.8)
    k = 2
    marginals = policy.position_marginals(scores, sds, k)
    assert np.allclose(marginals.sum(axis=0), 1.0)
    slates = policy.slate_distribution(scores, sds, k)
    assert set(slates) == set(itertools.permutations(range(n_items), k))  # the uniform branch shows any of them
    assert sum(slates.values()) == pytest.approx(1.0)
    from_slates = np.zeros((n_items, k))
    for order, p in slates.items():
        from_slates[list(order), range(k)] += p
    np.testing.assert_allclose(from_slates, marginals, atol=0.02)


def test_logged_propensities_match_how_often_the_selector_shows_each_item():
    """The propensity logged with each shown item is how often the selector shows that item at that position:
    with the shopper's state unchanged, 1,500 selections, each item's frequency at a position against the mean
    propensity logged for it there."""
    selector = Selector(EngineConfig(top_n=5), exploration=True, epsilon=0.1, exploration_sd=0.7, seed=4)
    _warm(selector)
    user = _shopper(selector)
    shown: dict[tuple[str, int], list[float]] = {}
    rounds = 1500
    for _ in range(rounds):
        for position, item in enumerate(selector.select(user, T0 + 4001, n=5).items):
            shown.setdefault((item.item_id, position), []).append(item.propensity)
    common = [key for key, logged in shown.items() if len(logged) >= 150]
    assert len(common) >= 5
    for key in common:
        assert len(shown[key]) / rounds == pytest.approx(float(np.mean(shown[key])), abs=0.04), key


def test_exploration_records_propensity_per_item():
    selector = Selector(EngineConfig(top_n=5), exploration=True, epsilon=0.5, seed=3)
    _warm(selector)
    user = _shopper(selector)
    selections = [selector.select(user, T0 + 4001 + n, n=5) for n in range(40)]
    assert any(s.explored for s in selections) and not all(s.explored for s in selections)
    for s in selections:
        assert all(0 < item.propensity <= 1 for item in s.items)
        assert 0 < s.slate_propensity <= 1


def test_without_feedback_clicks_do_not_change_scores():
    selector = Selector(EngineConfig(top_n=10), exploration=False, feedback=False)
    _warm(selector)
    user = _shopper(selector)
    shown = selector.select(user, T0 + 4001, n=10)
    selector.observe(user, impression(user="shopper", items=[i.item_id for i in shown.items], rec_id=shown.rec_id, ts=T0 + 4002))
    assert selector.examples_learned == 0
