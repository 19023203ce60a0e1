"""Creative inventory: creatives with copy variants (bandit arms) grouped into campaigns with bids and budgets.

Real copy comes from the Upworthy Research Archive headline tests (``creatives/upworthy_packages.parquet`` under a
data dir): each ``clickability_test_id`` becomes a :class:`Creative` whose headline variants are its arms. Their
observed clicks and impressions become Beta priors for Thompson sampling, shrunk toward the global CTR:

* The population prior is ``Beta(mu x m, (1 - mu) x m)``: ``mu`` is the pooled CTR of all variants and ``m`` (prior
  strength, in pseudo-impressions) is fitted by the method of moments -- the spread of variant CTRs beyond what
  binomial noise explains says how different variants truly are; the less they differ, the larger ``m``.
* A variant's posterior given its ``c`` clicks in ``n`` impressions is ``Beta(mu m + c, (1 - mu) m + n - c)``, whose
  mean ``(mu m + c) / (m + n)`` is its CTR shrunk toward ``mu``: little data -> near ``mu``.
* Historical traffic (Upworthy readers, 2013-2015) is not our traffic, so the historical counts are scaled down to at
  most ``max_history`` pseudo-impressions per variant: the prior keeps the variant's *ranking* information but live
  clicks can overturn it within a few hundred impressions.

Campaigns (bid per click, daily budget) do not exist in the archive: :func:`assign_campaigns` makes them
deterministically from a seed. Without the data dir, :func:`builtin_inventory` gives a small **synthetic** inventory
(made-up headlines and counts) so the engine and its tests run anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kairos.engine.bandit import ThompsonSampler

UPWORTHY_FILE = Path("creatives") / "upworthy_packages.parquet"


@dataclass(frozen=True)
class Variant:
    """One copy variant of a creative: text, historical counts and its Beta prior for Thompson sampling."""

    variant_id: str
    headline: str
    lede: str
    prior_alpha: float
    prior_beta: float
    impressions: int = 0
    clicks: int = 0

    @property
    def prior_ctr(self) -> float:
        return self.prior_alpha / (self.prior_alpha + self.prior_beta)


@dataclass(frozen=True)
class Creative:
    creative_id: str
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class Campaign:
    """An advertiser's campaign: a per-click bid, a daily budget and the creatives it may show."""

    campaign_id: str
    bid_per_click: float
    daily_budget: float
    creative_ids: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    creatives: dict[str, Creative]
    campaigns: dict[str, Campaign]
    global_ctr: float
    prior_strength: float
    synthetic: bool

    def creatives_of(self, campaign_id: str) -> list[Creative]:
        return [self.creatives[c] for c in self.campaigns[campaign_id].creative_ids]

    def campaign_of(self, creative_id: str) -> Campaign:
        for campaign in self.campaigns.values():
            if creative_id in campaign.creative_ids:
                return campaign
        raise KeyError(creative_id)


def fit_prior_strength(clicks: np.ndarray, impressions: np.ndarray, lo: float = 10.0, hi: float = 1e5) -> float:
    """Method-of-moments Beta prior strength ``m`` from per-variant counts, clipped to ``[lo, hi]``.

    The observed CTR variance is the true-CTR variance ``mu (1 - mu) / (m + 1)`` plus the binomial noise
    ``mu (1 - mu) / n`` (averaged); solving for ``m`` gives the estimate.

    >>> rng = np.random.default_rng(0)
    >>> n = np.full(4000, 5000); true = rng.beta(0.02 * 500, 0.98 * 500, size=4000)
    >>> 300 < fit_prior_strength(rng.binomial(n, true), n) < 800
    True
    """
    impressions = np.asarray(impressions, dtype=float)
    ctr = np.asarray(clicks, dtype=float) / impressions
    mu = float(np.sum(clicks) / impressions.sum())
    noise = float(np.mean(mu * (1 - mu) / impressions))
    between = float(np.var(ctr)) - noise
    if between <= 0:
        return hi
    return float(np.clip(mu * (1 - mu) / between - 1.0, lo, hi))


def variant_prior(clicks: int, impressions: int, mu: float, m: float, max_history: float) -> tuple[float, float]:
    """Beta prior of one variant: population prior plus its history scaled to at most ``max_history`` impressions.

    >>> variant_prior(clicks=20, impressions=1000, mu=0.01, m=100, max_history=500)   # history halved
    (11.0, 589.0)
    """
    scale = min(1.0, max_history / impressions) if impressions > 0 else 0.0
    return mu * m + clicks * scale, (1 - mu) * m + (impressions - clicks) * scale


def build_creatives(packages: pd.DataFrame, max_history: float = 500.0) -> tuple[dict[str, Creative], float, float]:
    """Creatives from Upworthy-shaped rows; returns them with the pooled CTR and the fitted prior strength."""
    packages = packages[packages["impressions"] > 0]
    mu = float(packages["clicks"].sum() / packages["impressions"].sum())
    m = fit_prior_strength(packages["clicks"].to_numpy(), packages["impressions"].to_numpy())
    creatives = {}
    for test_id, rows in packages.groupby("clickability_test_id", sort=True):
        variants = tuple(
            _variant(f"{test_id}:{i}", row, mu, m, max_history) for i, row in enumerate(rows.itertuples())
        )
        creatives[str(test_id)] = Creative(str(test_id), variants)
    return creatives, mu, m


def assign_campaigns(creative_ids: Sequence[str], n_campaigns: int = 20, seed: int = 0) -> dict[str, Campaign]:
    """Deterministic synthetic campaigns: creatives dealt round-robin after a seeded shuffle, with bids drawn
    uniformly in [0.20, 2.00] per click and budgets in [50, 500] per day (rounded to cents / units)."""
    rng = np.random.default_rng(seed)
    shuffled = [creative_ids[i] for i in rng.permutation(len(creative_ids))]
    campaigns = {}
    for k in range(min(n_campaigns, len(shuffled))):
        campaign_id = f"campaign-{k:03d}"
        campaigns[campaign_id] = Campaign(
            campaign_id=campaign_id,
            bid_per_click=round(float(rng.uniform(0.20, 2.00)), 2),
            daily_budget=float(round(rng.uniform(50, 500))),
            creative_ids=tuple(sorted(shuffled[k::n_campaigns])),
        )
    return campaigns


def load_inventory(data_dir: str | Path | None, n_campaigns: int = 20, seed: int = 0, max_tests: int | None = None,
                   max_history: float = 500.0) -> Inventory:
    """Inventory from ``<data_dir>/creatives/upworthy_packages.parquet``, or the synthetic built-in one if missing.

    ``max_tests`` keeps the first tests by id (for small, fast inventories).
    """
    path = Path(data_dir) / UPWORTHY_FILE if data_dir is not None else None
    if path is None or not path.exists():
        return builtin_inventory(n_campaigns=min(n_campaigns, 3), seed=seed)
    packages = pd.read_parquet(path, columns=["clickability_test_id", "headline", "lede", "impressions", "clicks"])
    if max_tests is not None:
        keep = sorted(packages["clickability_test_id"].unique())[:max_tests]
        packages = packages[packages["clickability_test_id"].isin(keep)]
    creatives, mu, m = build_creatives(packages, max_history)
    campaigns = assign_campaigns(sorted(creatives), n_campaigns, seed)
    return Inventory(creatives, campaigns, mu, m, synthetic=False)


def builtin_inventory(n_campaigns: int = 3, seed: int = 0) -> Inventory:
    """A small synthetic inventory (made-up copy and counts), used when the real data is not available."""
    rows = []
    for t, theme in enumerate(["winter coats", "running shoes", "linen shirts", "gift sets", "denim", "sneakers"]):
        for pattern, clicks in [("New in: {}", 30), ("{} you will love", 45), ("Last chance on {}", 20)]:
            rows.append({"clickability_test_id": f"synthetic-{t}", "headline": pattern.format(theme),
                         "lede": f"Our {theme} edit.", "impressions": 2000, "clicks": clicks + 5 * t})
    creatives, mu, m = build_creatives(pd.DataFrame(rows))
    campaigns = assign_campaigns(sorted(creatives), n_campaigns, seed)
    return Inventory(creatives, campaigns, mu, m, synthetic=True)


def variant_sampler(creative: Creative, seed: int = 0) -> ThompsonSampler:
    """A Thompson sampler over the creative's variants, each starting from its Beta prior."""
    sampler = ThompsonSampler(seed=seed)
    for variant in creative.variants:
        sampler.add_arm(variant.variant_id, variant.prior_alpha, variant.prior_beta)
    return sampler


def add_generated_variant(sampler: ThompsonSampler, creative: Creative, variant_id: str,
                          strength: float = 20.0) -> None:
    """Register generated copy as a new arm, with a weak prior centred on the creative's mean prior CTR.

    A weak prior (``strength`` pseudo-impressions) lets the sampler try new copy early, and the arm's observed
    CTR is tracked from its first impression like any other variant's.
    """
    mean = float(np.mean([v.prior_ctr for v in creative.variants]))
    sampler.add_arm(variant_id, mean * strength, (1 - mean) * strength)


def _variant(variant_id: str, row, mu: float, m: float, max_history: float) -> Variant:
    alpha, beta = variant_prior(int(row.clicks), int(row.impressions), mu, m, max_history)
    return Variant(variant_id, str(row.headline), _clean(row.lede), alpha, beta, int(row.impressions), int(row.clicks))


def _clean(text) -> str:
    # Ledes are stored as HTML fragments; the engine only needs plain text for prompts and display.
    if not isinstance(text, str):
        return ""
    return text.replace("<p>", "").replace("</p>", " ").strip()
