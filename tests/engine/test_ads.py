from collections import Counter

from kairos.engine.ads import AdSelector
from kairos.engine.creatives import builtin_inventory

T0 = 1_700_000_000.0


def test_decision_is_a_priced_second_price_win():
    ads = AdSelector(builtin_inventory(), reserve_ev=0.0001)
    decision = ads.decide("r1", "u1", "cold", T0)
    assert decision is not None and decision.won
    assert 0 < decision.pctr < 1 and decision.clearing_price <= decision.bid
    assert abs(decision.expected_value - decision.pctr * decision.bid) < 1e-9
    assert 0 < decision.propensity <= 1


def test_frequency_cap_per_user_and_creative():
    ads = AdSelector(builtin_inventory(), reserve_ev=0.0001, creative_cap=2)
    shown = Counter()
    for n in range(30):
        decision = ads.decide(f"r{n}", "u1", "cold", T0 + n)
        if decision is not None:
            shown[decision.creative_id] += 1
    assert shown and max(shown.values()) <= 2
    other = ads.decide("r-other", "u2", "cold", T0 + 40)  # another user is not capped by u1's views
    assert other is not None


def test_click_updates_the_variant_and_no_click_expires():
    ads = AdSelector(builtin_inventory(), reserve_ev=0.0001)
    decision = ads.decide("r1", "u1", "cold", T0)
    sampler = ads.samplers[decision.creative_id]
    before = sampler.stats(decision.variant_id)
    clicks_before = before.clicks
    assert ads.on_click("r1", T0 + 5)
    assert sampler.stats(decision.variant_id).clicks == clicks_before + 1
    assert not ads.on_click("r1", T0 + 6)  # attributed once
    second = ads.decide("r2", "u1", "cold", T0 + 10)
    impressions = ads.samplers[second.creative_id].stats(second.variant_id).impressions
    ads.expire(T0 + 10 + ads.attribution_window_s + 1)
    assert ads.samplers[second.creative_id].stats(second.variant_id).impressions == impressions + 1
