"""The shopper simulator: determinism, a plausible organic stream, a closed loop that rewards learning, bad payloads."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from kairos.engine.simulator import (
    MALFORMED_FAULTS,
    ShopperSimulator,
    malformed_payload,
    malformed_payloads,
    with_malformed,
)
from kairos.schemas.codec import InvalidEvent, decode_event, encode
from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent

SLATE = 10


@pytest.fixture(scope="module")
def simulator() -> ShopperSimulator:
    return ShopperSimulator(seed=7, n_users=300, n_items=600, n_categories=12)


@pytest.fixture(scope="module")
def organic(simulator) -> list:
    return list(simulator.events(6_000))


def test_organic_stream_is_reproducible_time_ordered_and_valid(simulator, organic):
    assert len(organic) == 6_000
    assert [e.event_id for e in organic[:500]] == [e.event_id for e in simulator.events(500)]
    assert all(a.ts <= b.ts for a, b in zip(organic, organic[1:]))
    assert len({e.event_id for e in organic}) == len(organic)
    assert all(decode_event(encode(e)) == e for e in organic[:300])
    assert organic[0].ts >= simulator.start_ts


def test_organic_funnel_has_views_carts_purchases(organic):
    kinds = Counter(getattr(e, "action", e.kind) for e in organic)
    assert kinds["view"] > kinds["add_to_cart"] > kinds["purchase"] > 0
    for order in (e for e in organic if isinstance(e, PurchaseEvent)):
        assert all((line.quantity < 0) == order.is_return and line.unit_price > 0 for line in order.lines)


def test_organic_views_follow_latent_preferences(simulator, organic):
    """The category a user views most is, far more often than chance, their top latent category."""
    views = defaultdict(Counter)
    for event in organic:
        if isinstance(event, ClickEvent):
            views[event.user_id][simulator.category_of(event.item_id)] += 1
    active = [u for u, c in views.items() if sum(c.values()) >= 15]
    top_latent = {u: simulator.category_ids[int(np.argmax(simulator.preferences[int(u[5:]) - 1]))] for u in active}
    hits = sum(views[u].most_common(1)[0][0] == top_latent[u] for u in active)
    assert len(active) > 30 and hits / len(active) > 0.6  # chance would be about 1/12


def test_catalog_has_names_prices_and_every_category(simulator):
    items = list(simulator.catalog.values())
    assert len(items) == 600 and all(item.name and item.price > 0 for item in items)
    assert len({item.category_id for item in items}) == 12


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = (ShopperSimulator(seed=s, n_users=20, n_items=40, n_categories=4) for s in (1, 1, 2))
    assert a.catalog == b.catalog and np.array_equal(a.preferences, b.preferences)
    assert not np.array_equal(a.preferences, c.preferences)


def test_show_returns_the_impression_then_responses_tagged_with_the_rec(simulator):
    user = simulator.users[0]
    best = sorted(simulator.items, key=lambda i: -simulator.true_affinity(user, i))[:SLATE]
    responses = [e for n in range(20) for e in simulator.show(user, best, f"rec-{n}", now=1.7e9 + n)]
    impressions = [e for e in responses if isinstance(e, ImpressionEvent)]
    assert len(impressions) == 20 and [s.position for s in impressions[0].items] == list(range(1, SLATE + 1))
    clicks = [e for e in responses if isinstance(e, ClickEvent) and e.action == "click"]
    assert clicks and all(e.rec_id.startswith("rec-") and 1 <= e.position <= SLATE for e in clicks)
    assert all(e.item_id in best for e in clicks)
    for n in range(20):
        slate = simulator.show(user, best, f"again-{n}", now=1.7e9 + 100)
        assert [e.ts for e in slate] == sorted(e.ts for e in slate) and isinstance(slate[0], ImpressionEvent)


def test_unknown_items_are_shown_but_never_clicked(simulator):
    events = simulator.show(simulator.users[1], ["not-ours"] * 3, "rec-x", now=1.7e9)
    assert len(events) == 1 and [s.item_id for s in events[0].items] == ["not-ours"]


def _ctr(simulator, policy, rng, n=400) -> float:
    clicks = 0
    for r in range(n):
        user = simulator.users[int(rng.integers(len(simulator.users)))]
        events = simulator.show(user, policy(user), f"r{r}", now=1.7e9)
        clicks += sum(isinstance(e, ClickEvent) and e.action == "click" for e in events)
    return clicks / (n * SLATE)


def test_a_recommender_that_learns_preferences_beats_one_that_does_not(simulator, organic):
    """Closed loop: learn category affinities from the organic stream, recommend from them, compare CTRs."""
    rng = np.random.default_rng(0)
    affinity = defaultdict(Counter)
    for event in organic:
        if isinstance(event, ClickEvent):
            affinity[event.user_id][simulator.category_of(event.item_id)] += 1
    by_category = defaultdict(list)
    for item in simulator.items:
        by_category[simulator.category_of(item)].append(item)

    def learned(user):
        top = [c for c, _ in affinity[user].most_common(2)] or list(by_category)[:1]
        pool = [i for c in top for i in by_category[c]]
        return list(rng.choice(pool, size=SLATE, replace=False))

    def random_slate(user):
        return list(rng.choice(simulator.items, size=SLATE, replace=False))

    assert _ctr(simulator, learned, rng) > 2 * _ctr(simulator, random_slate, rng)


def test_position_bias_lowers_clicks_further_down(simulator):
    user = simulator.users[2]
    item = max(simulator.items, key=lambda i: simulator.true_affinity(user, i))
    filler = [f"x{n}" for n in range(SLATE - 1)]
    top = sum(len(simulator.show(user, [item, *filler], f"a{n}", 1.7e9)) > 1 for n in range(400))
    bottom = sum(len(simulator.show(user, [*filler, item], f"b{n}", 1.7e9)) > 1 for n in range(400))
    assert top > 1.5 * bottom


def test_true_affinity_is_a_probability_ordered_by_preference(simulator):
    user = 3
    favourite, least = int(np.argmax(simulator.preferences[user])), int(np.argmin(simulator.preferences[user]))
    liked = [i for i, c in zip(simulator.items, simulator.item_category) if c == favourite]
    disliked = [i for i, c in zip(simulator.items, simulator.item_category) if c == least]
    uid = simulator.users[user]
    mean = lambda items: np.mean([simulator.true_affinity(uid, i) for i in items])  # noqa: E731
    assert 0 < mean(disliked) < mean(liked) < 1


def test_myntra_names_when_a_data_dir_is_given(tmp_path):
    import pandas as pd

    (tmp_path / "catalog").mkdir()
    names = [f"Brand Men Blue Shirt {n}" for n in range(5)] + [f"Brand Women Red Dress {n}" for n in range(3)]
    pd.DataFrame({"ProductName": names, "Price (INR)": [999] * 8}).to_parquet(
        tmp_path / "catalog" / "myntra_products.parquet"
    )
    sim = ShopperSimulator(seed=0, n_users=5, n_items=10, n_categories=2, data_dir=tmp_path)
    assert {item.category_id for item in sim.catalog.values()} == {"sim-shirt", "sim-dress"}
    assert all(item.name in names for item in sim.catalog.values())


# ---- malformed payloads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", MALFORMED_FAULTS)
def test_every_malformed_payload_is_rejected(fault):
    with pytest.raises(InvalidEvent):
        decode_event(malformed_payload(fault, np.random.default_rng(1)))


def test_malformed_payloads_cover_several_error_classes():
    payloads = malformed_payloads(np.random.default_rng(3), 16)
    classes = Counter()
    for payload in payloads:
        with pytest.raises(InvalidEvent) as err:
            decode_event(payload)
        classes[err.value.error_class] += 1
    assert len(payloads) == 16 and {"not_json", "oversize", "unknown_kind", "invalid_fields"} <= set(classes)
    assert malformed_payloads(5, 4) == malformed_payloads(5, 4)


def test_with_malformed_injects_about_the_fraction_asked(simulator, organic):
    mixed = list(with_malformed(organic[:2000], 0.1, seed=1))
    bad = [m for m in mixed if isinstance(m, bytes)]
    assert [m for m in mixed if not isinstance(m, bytes)] == organic[:2000]
    assert 120 < len(bad) < 280
    assert list(with_malformed(organic[:50], 0.0)) == organic[:50]
