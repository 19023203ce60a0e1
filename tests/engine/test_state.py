import math

import orjson
import pytest
from factories import T0, click, impression, purchase

from kairos.engine.config import EngineConfig
from kairos.engine.decay import DecayedScores, decay_factor
from kairos.engine.state import UserInterest

HOUR = 3600.0


def test_decay_halves_every_half_life():
    assert decay_factor(HOUR, HOUR) == 0.5
    assert decay_factor(3 * HOUR, HOUR) == pytest.approx(0.125)
    assert decay_factor(-5.0, HOUR) == 1.0  # clock skew never amplifies


def test_decayed_scores_accumulate_and_decay():
    scores = DecayedScores(half_life_s=HOUR, capacity=10)
    scores.add("a", 4.0, t=0.0)
    scores.add("a", 2.0, t=HOUR)  # 4 decays to 2, plus 2
    assert scores.get("a", now=HOUR) == pytest.approx(4.0)
    assert scores.get("a", now=2 * HOUR) == pytest.approx(2.0)


def test_out_of_order_event_is_decayed_onto_the_newer_reference():
    scores = DecayedScores(half_life_s=HOUR, capacity=10)
    scores.add("a", 2.0, t=HOUR)
    scores.add("a", 2.0, t=0.0)  # an hour older: worth half at the reference time
    assert scores.get("a", now=HOUR) == pytest.approx(3.0)


def test_decayed_scores_are_bounded_and_keep_the_strongest():
    scores = DecayedScores(half_life_s=HOUR, capacity=20)
    for n in range(100):
        scores.add(f"k{n}", float(n), t=0.0)
    assert len(scores) <= 20
    assert "k99" in scores and "k0" not in scores


def test_user_state_learns_categories_items_and_recency():
    user = UserInterest.new("u1", EngineConfig(half_life_s=HOUR))
    user.apply(click(item="i1", category="shoes", action="view", ts=T0))
    user.apply(click(item="i2", category="shoes", action="add_to_cart", ts=T0 + HOUR))
    cfg = user.config
    expected = cfg.action_weights["view"] * 0.5 + cfg.action_weights["add_to_cart"]
    assert user.categories.get("shoes", now=T0 + HOUR) == pytest.approx(expected)
    assert list(user.recent) == ["i1", "i2"]
    assert user.version == 2 and user.event_count == 2


def test_purchase_is_excluded_for_the_window_and_return_clears_it():
    cfg = EngineConfig(purchase_exclusion_s=10 * 86_400.0)
    user = UserInterest.new("u1", cfg)
    user.apply(purchase(items=[("i1", "c", 9.99), ("i2", "c", 5.0)], ts=T0))
    assert user.excluded_items(now=T0 + 86_400) == {"i1", "i2"}
    assert user.excluded_items(now=T0 + 11 * 86_400) == set()
    user.apply(purchase(items=[("i1", "c", 9.99)], ts=T0 + 60, is_return=True))
    assert user.excluded_items(now=T0 + 120) == {"i2"}
    assert user.purchase_count == 2
    assert user.price_mean.get() == pytest.approx((9.99 + 5.0) / 2)


def test_same_event_applied_twice_counts_once():
    user = UserInterest.new("u1", EngineConfig())
    order = purchase(items=[("i1", "c", 3.0)], event_id="order-42")
    assert user.apply(order)
    assert user.apply(order) == []
    assert user.purchase_count == 1 and user.version == 1


def test_impression_changes_version_but_not_interest():
    user = UserInterest.new("u1", EngineConfig())
    user.apply(impression(items=("i1", "i2")))
    assert user.version == 1 and len(user.items) == 0


def test_state_is_bounded():
    cfg = EngineConfig(max_recent_items=5, max_affinities=20, max_purchased=10)
    user = UserInterest.new("u1", cfg)
    for n in range(200):
        user.apply(click(item=f"i{n}", category=f"c{n}", ts=T0 + n))
        user.apply(purchase(items=[(f"p{n}", "c", 1.0)], ts=T0 + n))
    assert len(user.recent) == 5 and len(user.items) <= 20 and len(user.categories) <= 20
    assert len(user.purchased) <= 10


def test_state_round_trips_through_json():
    cfg = EngineConfig()
    user = UserInterest.new("u1", cfg)
    user.apply(click(item="i1", category="c1", ts=T0))
    user.apply(purchase(items=[("i2", "c2", 4.0)], ts=T0 + 5))
    restored = UserInterest.from_state("u1", orjson.loads(orjson.dumps(user.to_state())), cfg)
    assert restored.to_state() == user.to_state()
    assert restored.has_applied(next(iter(user.seen_event_ids)))
    assert math.isclose(restored.categories.get("c1", T0 + 5), user.categories.get("c1", T0 + 5))
