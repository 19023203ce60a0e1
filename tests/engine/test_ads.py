from collections import Counter

import orjson

from kairos.engine.ads import AdSelector
from kairos.engine.copywriting import CopyBook
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


# --- the ad state in the partition checkpoint (engine/selection.py "ads", docs/state.md) ---


def _busy_selector(copybook=None) -> tuple[AdSelector, list]:
    """A selector after real traffic: decisions for five users (u0 capped on what it saw), half of them clicked."""
    ads = AdSelector(builtin_inventory(), reserve_ev=0.0001, creative_cap=2, copybook=copybook, seed=3)
    decisions = []
    for n in range(40):
        decision = ads.decide(f"r{n}", f"u{n % 5}" if n % 2 else "u0", "cold", T0 + n)
        if decision is not None:
            decisions.append(decision)
            if n % 4 == 1:
                assert ads.on_click(decision.request_id, T0 + n + 1)
    return ads, decisions


def _restored(ads: AdSelector, copybook=None) -> AdSelector:
    blob = orjson.dumps(ads.to_state())  # the checkpoint is orjson (engine/partition.py global_blob)
    restored = AdSelector(builtin_inventory(), reserve_ev=0.0001, creative_cap=2, copybook=copybook, seed=3)
    restored.load_state(orjson.loads(blob))
    return restored


def _arms(ads: AdSelector) -> dict:
    """creative -> variant -> (alpha, beta, impressions, clicks), copied out of the samplers."""
    return {c: {v: (a.alpha, a.beta, a.impressions, a.clicks) for v, a in sampler._arms.items()}
            for c, sampler in ads.samplers.items()}


def test_ad_state_round_trips_with_identical_posteriors_spend_caps_and_open_requests():
    copybook = CopyBook()
    ads, decisions = _busy_selector(copybook)
    winner = decisions[0].creative_id
    copybook.add_ad_variant(winner, f"{winner}:gen-1", "A fresh take on the headline")
    for n in range(40, 60):  # the generated arm is offered and learns too
        decision = ads.decide(f"r{n}", f"v{n}", "cold", T0 + n)
        if decision is not None:
            decisions.append(decision)
    restored = _restored(ads, copybook)
    now = T0 + 60

    assert _arms(restored) == _arms(ads) and any(arm[3] for arms in _arms(ads).values() for arm in arms.values())
    spent = {c: ads.pacer.spent(c, now) for c in ads.inventory.campaigns}
    assert {c: restored.pacer.spent(c, now) for c in spent} == spent and sum(spent.values()) > 0
    capped = {d.creative_id for d in decisions if d.user_id == "u0"}
    capped = {c for c in capped if ads.creative_views.count("u0", c, now) >= ads.creative_cap}
    assert capped, "u0 should have reached the cap on some creative"
    assert all(restored.creative_views.count("u0", c, now) >= restored.creative_cap for c in capped)
    assert list(restored.served.items()) == list(ads.served.items()) and restored.served
    assert restored.headline(ads.inventory.creatives[winner], f"{winner}:gen-1") == "A fresh take on the headline"
    assert restored.no_fill == ads.no_fill

    # the restored selector goes on exactly as the one that never stopped (same draws, spend, caps, labels)
    later = []
    for n in range(60, 90):
        user = "u0" if n % 3 == 0 else f"w{n}"
        decision = restored.decide(f"r{n}", user, "cold", T0 + n)
        assert decision == ads.decide(f"r{n}", user, "cold", T0 + n)
        later += [decision] if decision is not None else []
    assert later and not any(d.creative_id in capped for d in later if d.user_id == "u0")  # u0 stays capped
    assert _arms(restored) == _arms(ads)


def test_a_click_after_restore_credits_the_variant_that_was_served():
    ads, decisions = _busy_selector()
    restored = _restored(ads)
    request_id, (creative_id, variant_id, _, served_at) = next(iter(restored.served.items()))
    before = _arms(restored)
    assert restored.on_click(request_id, served_at + 60)
    after = _arms(restored)
    alpha, beta, impressions, clicks = before[creative_id].pop(variant_id)
    assert after[creative_id].pop(variant_id) == (alpha + 1, beta, impressions + 1, clicks + 1)
    assert after == before  # no other arm moved
    assert not restored.on_click(request_id, served_at + 61)  # credited once


def test_a_click_after_the_attribution_window_is_the_unclicked_impression():
    ads = AdSelector(builtin_inventory(), reserve_ev=0.0001)
    decision = ads.decide("r1", "u1", "cold", T0)
    stats = ads.samplers[decision.creative_id].stats(decision.variant_id)
    clicks, impressions = stats.clicks, stats.impressions
    assert not ads.on_click("r1", T0 + ads.attribution_window_s + 1)  # no decision expired it first: same label
    assert (stats.clicks, stats.impressions) == (clicks, impressions + 1) and "r1" not in ads.served


def test_selector_checkpoint_carries_the_ads_and_an_older_one_without_them_still_loads():
    from kairos.engine.config import EngineConfig
    from kairos.engine.selection import Selector

    cfg = EngineConfig()
    ads, _ = _busy_selector()
    selector = Selector(cfg, ads=ads)
    state = orjson.loads(orjson.dumps(selector.to_state()))
    fresh = Selector(cfg, ads=AdSelector(builtin_inventory(), reserve_ev=0.0001, creative_cap=2, seed=3))
    fresh.load_state(state)
    assert _arms(fresh.ads) == _arms(ads) and list(fresh.ads.served) == list(ads.served)

    del state["ads"]  # as written before the ad state was checkpointed
    old = Selector(cfg, ads=AdSelector(builtin_inventory(), reserve_ev=0.0001, creative_cap=2, seed=3))
    old.load_state(state)
    assert old.ads.samplers == {} and not old.ads.served  # the ads start from their priors, as before
    assert old.examples_learned == selector.examples_learned
    decision = old.decide_ad("r-new", None, T0)
    creative = old.ads.inventory.creatives[decision.creative_id]
    prior = next(v for v in creative.variants if v.variant_id == decision.variant_id)
    assert old.ads.samplers[decision.creative_id].stats(decision.variant_id).alpha == prior.prior_alpha
