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


def test_generated_headline_becomes_an_arm_with_its_own_ctr():
    from kairos.engine.copywriting import CopyBook

    copybook = CopyBook()
    ads = AdSelector(builtin_inventory(), reserve_ev=0.0001, copybook=copybook)
    first = ads.decide("r1", "u1", "cold", T0)
    requests = copybook.take_requests()
    assert [r.kind for r in requests] == ["ad"] and requests[0].item_id == first.creative_id
    # the copy agent answers; the feed registers the variant in the shared copy book
    copybook.add_ad_variant(first.creative_id, f"{first.creative_id}:gen-1", "A fresh take on the headline")
    creative = ads.inventory.creatives[first.creative_id]
    variants = ads.variant_ids(creative)
    assert variants[-1] == f"{first.creative_id}:gen-1" and len(variants) == len(creative.variants) + 1
    assert ads.headline(creative, variants[-1]) == "A fresh take on the headline"
    sampler = ads.samplers[first.creative_id]
    sampler.update(variants[-1], True)
    assert sampler.stats(variants[-1]).clicks == 1 and sampler.stats(variants[-1]).impressions == 1
    ads.decide("r2", "u2", "cold", T0 + 1)
    assert [r for r in copybook.take_requests() if r.item_id == first.creative_id] == []  # asked for once
