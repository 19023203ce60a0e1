"""Per-campaign budget pacing by probabilistic throttling against a target spend curve.

Each campaign has a daily budget ``B``. A *spend curve* says which share of the day's budget should be spent by
each moment of the day (by default uniform, i.e. proportional to the elapsed time; pass hourly traffic weights to
follow the traffic instead). At time ``t`` the target spend is ``B x curve(t)``; the campaign's overspend is
``excess = spent - target``. The campaign takes part in an auction with probability

``p = clip(1 - excess / (tolerance x B), 0, 1)``

so a campaign on or under target always takes part (``p = 1``), one ahead of target by ``tolerance x B`` or more
never does, and in between ``p`` falls linearly. A campaign whose spend has reached its budget never takes part.
Spend and the day are keyed by the event clock passed in (Unix seconds, shifted by ``utc_offset_s``): nothing here
reads the wall clock, so replays are deterministic. A new day resets spend to 0.

Examples
--------
>>> pacer = BudgetPacer({"k1": 100.0}, tolerance=0.05)
>>> noon = 12 * 3600.0
>>> pacer.record_spend("k1", 52.5, now=noon)
>>> pacer.participation_probability("k1", now=noon)   # target 50, excess 2.5 of a 5.0 band
0.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kairos.engine.rng import generator_state, restore_generator

SECONDS_PER_DAY = 86_400.0


@dataclass
class CampaignSpend:
    """Spend of one campaign on one day (the day number counts days since the epoch in the pacer's timezone)."""

    day: int
    spent: float = 0.0


class SpendCurve:
    """Cumulative share of a day's budget to be spent by each second of the day.

    ``hourly_weights`` are relative traffic (or value) weights for the 24 hours; the curve is their cumulative
    share, interpolated linearly within each hour.

    >>> SpendCurve().share(6 * 3600.0)
    0.25
    >>> SpendCurve([0.0] * 12 + [1.0] * 12).share(18 * 3600.0)
    0.5
    """

    def __init__(self, hourly_weights: Sequence[float] | None = None) -> None:
        weights = np.ones(24) if hourly_weights is None else np.asarray(hourly_weights, dtype=float)
        if weights.shape != (24,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("hourly_weights must be 24 non-negative numbers with a positive sum")
        self._cumulative = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])

    def share(self, seconds_into_day: float) -> float:
        hours = min(max(seconds_into_day / 3600.0, 0.0), 24.0)
        return float(np.interp(hours, np.arange(25), self._cumulative))


class BudgetPacer:
    """Decides, per campaign and request, whether the campaign may bid, and books its spend.

    Parameters
    ----------
    daily_budgets
        Campaign id -> daily budget (same currency as the per-click prices booked with :meth:`record_spend`).
    curve
        Target spend curve; uniform over the day when ``None``.
    tolerance
        Width of the throttling band as a share of the daily budget.
    utc_offset_s
        Offset of the campaign's day from UTC, in seconds (the day rolls over at local midnight).
    seed
        Seed of the random draws made by :meth:`should_participate`.
    """

    def __init__(
        self,
        daily_budgets: Mapping[str, float],
        curve: SpendCurve | None = None,
        tolerance: float = 0.05,
        utc_offset_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        if tolerance <= 0:
            raise ValueError("tolerance must be > 0")
        self._budgets: dict[str, float] = {}
        for campaign_id, budget in daily_budgets.items():
            self.set_budget(campaign_id, budget)
        self._curve = curve or SpendCurve()
        self._tolerance = tolerance
        self._offset = utc_offset_s
        self._spend: dict[str, CampaignSpend] = {}
        self._rng = np.random.default_rng(seed)

    def set_budget(self, campaign_id: str, daily_budget: float) -> None:
        if daily_budget < 0:
            raise ValueError(f"daily budget of {campaign_id!r} must be >= 0")
        self._budgets[campaign_id] = float(daily_budget)

    def record_spend(self, campaign_id: str, amount: float, now: float) -> None:
        """Book ``amount`` (a charged click) against the campaign's budget for the day of ``now``."""
        if amount < 0:
            raise ValueError("spend must be >= 0")
        self._today(campaign_id, now).spent += amount

    def spent(self, campaign_id: str, now: float) -> float:
        """Spend booked so far on the day of ``now``."""
        return self._today(campaign_id, now).spent

    def remaining(self, campaign_id: str, now: float) -> float:
        return max(self._budgets.get(campaign_id, 0.0) - self.spent(campaign_id, now), 0.0)

    def target_spend(self, campaign_id: str, now: float) -> float:
        """Spend the curve expects by ``now``."""
        return self._budgets.get(campaign_id, 0.0) * self._curve.share(self._seconds_into_day(now))

    def participation_probability(self, campaign_id: str, now: float) -> float:
        """Probability that the campaign takes part in an auction at ``now`` (0 for unknown campaigns)."""
        budget = self._budgets.get(campaign_id, 0.0)
        if budget <= 0 or self.spent(campaign_id, now) >= budget:
            return 0.0
        excess = self.spent(campaign_id, now) - self.target_spend(campaign_id, now)
        return float(np.clip(1.0 - excess / (self._tolerance * budget), 0.0, 1.0))

    def should_participate(self, campaign_id: str, now: float) -> bool:
        """One seeded Bernoulli draw with :meth:`participation_probability`."""
        p = self.participation_probability(campaign_id, now)
        # Skip the draw at the extremes so p = 1 / p = 0 never consume randomness (keeps replays aligned).
        if p >= 1.0 or p <= 0.0:
            return p >= 1.0
        return bool(self._rng.random() < p)

    def to_state(self) -> dict:
        """Spend booked per campaign as ``[day, spent]`` and the draw stream's position (JSON-able); budgets, the
        curve, the tolerance and the offset are configuration and come from the constructor."""
        spend = {campaign: [record.day, record.spent] for campaign, record in self._spend.items()}
        return {"spend": spend, "rng": generator_state(self._rng)}

    def load_state(self, data: dict) -> None:
        spend = data["spend"].items()
        self._spend = {campaign: CampaignSpend(int(day), float(spent)) for campaign, (day, spent) in spend}
        restore_generator(self._rng, data["rng"])

    def _today(self, campaign_id: str, now: float) -> CampaignSpend:
        day = self._day(now)
        record = self._spend.get(campaign_id)
        if record is None or day > record.day:
            # First sight or day rollover: spend starts again from zero.
            record = self._spend[campaign_id] = CampaignSpend(day=day)
        # An event stamped with an earlier day than the latest seen (a late click) is booked on the latest day:
        # that errs towards spending less, never more.
        return record

    def _day(self, now: float) -> int:
        return int((now + self._offset) // SECONDS_PER_DAY)

    def _seconds_into_day(self, now: float) -> float:
        return (now + self._offset) % SECONDS_PER_DAY
