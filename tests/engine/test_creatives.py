"""Creative inventory: shrinkage priors, deterministic campaigns, real-data loader and synthetic fallback."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kairos.engine.creatives import (
    add_generated_variant,
    assign_campaigns,
    build_creatives,
    builtin_inventory,
    fit_prior_strength,
    load_inventory,
    variant_prior,
    variant_sampler,
)

DATA_DIR = Path("/work/shared/data")


def test_variant_prior_hand_computed():
    # mu m = 0.01 * 100 = 1; history scaled by 500 / 1000 = 0.5 -> 1 + 10, 99 + 490
    assert variant_prior(20, 1000, mu=0.01, m=100, max_history=500) == pytest.approx((11.0, 589.0))
    # small history is used in full
    assert variant_prior(2, 100, mu=0.01, m=100, max_history=500) == pytest.approx((3.0, 197.0))


def test_prior_mean_is_shrunk_toward_global_ctr():
    packages = pd.DataFrame({
        "clickability_test_id": ["t1", "t1", "t2", "t2"],
        "headline": ["a", "b", "c", "d"], "lede": ["", "", "", ""],
        "impressions": [1000, 1000, 1000, 50], "clicks": [40, 10, 20, 5],
    })
    creatives, mu, m = build_creatives(packages)
    assert mu == pytest.approx(75 / 3050)
    for creative in creatives.values():
        for v in creative.variants:
            raw = v.clicks / v.impressions
            assert min(raw, mu) - 1e-12 <= v.prior_ctr <= max(raw, mu) + 1e-12


def test_fit_prior_strength_without_true_spread_is_maximal():
    n = np.full(100, 1000)
    assert fit_prior_strength(np.full(100, 20), n) == 1e5  # identical CTRs: no spread beyond noise


def test_campaigns_are_deterministic_and_cover_every_creative():
    ids = [f"c{i}" for i in range(10)]
    a, b = assign_campaigns(ids, n_campaigns=3, seed=5), assign_campaigns(ids, n_campaigns=3, seed=5)
    assert a == b
    assert sorted(c for camp in a.values() for c in camp.creative_ids) == sorted(ids)
    for campaign in a.values():
        assert 0.20 <= campaign.bid_per_click <= 2.00 and 50 <= campaign.daily_budget <= 500
    assert assign_campaigns(ids, n_campaigns=3, seed=6) != a


def test_builtin_inventory_when_data_missing(tmp_path):
    inventory = load_inventory(tmp_path, seed=0)
    assert inventory.synthetic and len(inventory.creatives) == 6
    assert load_inventory(None).synthetic
    creative = inventory.creatives_of(next(iter(inventory.campaigns)))[0]
    assert inventory.campaign_of(creative.creative_id).campaign_id == next(iter(inventory.campaigns))
    assert builtin_inventory() == builtin_inventory()


def test_variant_sampler_uses_priors_and_generated_arm():
    creative = builtin_inventory().creatives["synthetic-0"]
    sampler = variant_sampler(creative, seed=0)
    best = max(creative.variants, key=lambda v: v.prior_ctr)
    assert sampler.stats(best.variant_id).posterior_mean == pytest.approx(best.prior_ctr)
    add_generated_variant(sampler, creative, "synthetic-0:gen-1", strength=20)
    generated = sampler.stats("synthetic-0:gen-1")
    assert generated.alpha + generated.beta == pytest.approx(20)
    sampler.update("synthetic-0:gen-1", clicked=True)
    assert generated.impressions == 1 and generated.ctr == 1.0


@pytest.mark.skipif(not (DATA_DIR / "creatives" / "upworthy_packages.parquet").exists(), reason="no Upworthy data")
def test_real_upworthy_inventory():
    inventory = load_inventory(DATA_DIR, n_campaigns=10, seed=0, max_tests=200)
    assert not inventory.synthetic and len(inventory.creatives) == 200
    assert 0.001 < inventory.global_ctr < 0.1 and inventory.prior_strength >= 10
    variants = [v for c in inventory.creatives.values() for v in c.variants]
    assert all(len(c.variants) >= 2 for c in inventory.creatives.values())
    assert all(v.headline and 0 < v.prior_ctr < 1 for v in variants)
    assert all("<p>" not in v.lede for v in variants)
