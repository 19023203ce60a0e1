"""Budget pacing on hand-computed cases: overspend throttles, underspend does not, exhausted budgets stop,
and a new day resets spend."""

import pytest

from kairos.engine.pacing import BudgetPacer, SpendCurve

HOUR = 3600.0
DAY = 24 * HOUR


def pacer(**kwargs):
    return BudgetPacer({"k1": 100.0, "k2": 200.0}, tolerance=0.05, **kwargs)


def test_uniform_target_spend():
    p = pacer()
    assert p.target_spend("k1", 6 * HOUR) == pytest.approx(25.0)
    assert p.target_spend("k2", 18 * HOUR) == pytest.approx(150.0)


def test_underspend_does_not_throttle():
    p = pacer()
    p.record_spend("k1", 30.0, now=12 * HOUR)  # target 50
    assert p.participation_probability("k1", 12 * HOUR) == 1.0
    assert all(p.should_participate("k1", 12 * HOUR) for _ in range(100))


def test_overspend_throttles_linearly():
    p = pacer()
    p.record_spend("k1", 52.5, now=12 * HOUR)  # excess 2.5 over target 50; band = 0.05 * 100 = 5
    assert p.participation_probability("k1", 12 * HOUR) == pytest.approx(0.5)
    p.record_spend("k1", 2.5, now=12 * HOUR)  # excess 5.0 -> fully throttled
    assert p.participation_probability("k1", 12 * HOUR) == 0.0
    # an hour later the target has moved to 54.17 > 55 - 5: it may bid again with p = 1 - 0.8333/5
    assert p.participation_probability("k1", 13 * HOUR) == pytest.approx(1 - (55 - 100 * 13 / 24) / 5)


def test_throttled_draws_follow_probability_with_seed():
    p = pacer(seed=1)
    p.record_spend("k1", 52.5, now=12 * HOUR)
    share = sum(p.should_participate("k1", 12 * HOUR) for _ in range(4000)) / 4000
    assert share == pytest.approx(0.5, abs=0.03)


def test_exhausted_budget_never_participates():
    p = pacer()
    p.record_spend("k1", 100.0, now=23.99 * HOUR)  # target ~99.96, but the budget is gone
    assert p.participation_probability("k1", 23.99 * HOUR) == 0.0
    assert p.remaining("k1", 23.99 * HOUR) == 0.0
    assert not p.should_participate("k1", 23.99 * HOUR)


def test_unknown_campaign_does_not_participate():
    assert pacer().participation_probability("nope", 0.0) == 0.0


def test_day_rollover_resets_spend():
    p = pacer()
    p.record_spend("k1", 100.0, now=DAY - 1)
    assert p.participation_probability("k1", DAY - 1) == 0.0
    assert p.spent("k1", DAY + 1) == 0.0
    assert p.participation_probability("k1", DAY + HOUR) == 1.0
    # a late click stamped yesterday is booked on today, not resetting today's spend
    p.record_spend("k1", 1.0, now=DAY + 2 * HOUR)
    p.record_spend("k1", 1.0, now=DAY - 5)
    assert p.spent("k1", DAY + 2 * HOUR) == pytest.approx(2.0)


def test_utc_offset_moves_midnight():
    p = pacer(utc_offset_s=2 * HOUR)  # local midnight is 22:00 UTC
    p.record_spend("k1", 10.0, now=21 * HOUR)
    assert p.spent("k1", 23 * HOUR) == 0.0
    assert p.target_spend("k1", 23 * HOUR) == pytest.approx(100.0 / 24)


def test_traffic_weighted_curve():
    evening_only = SpendCurve([0.0] * 18 + [1.0] * 6)
    p = BudgetPacer({"k1": 60.0}, curve=evening_only, tolerance=0.1)
    assert p.target_spend("k1", 12 * HOUR) == 0.0
    p.record_spend("k1", 3.0, now=12 * HOUR)  # 3 ahead of a 6.0 band -> p = 0.5
    assert p.participation_probability("k1", 12 * HOUR) == pytest.approx(0.5)
    assert p.target_spend("k1", 21 * HOUR) == pytest.approx(30.0)


def test_invalid_configuration():
    with pytest.raises(ValueError):
        BudgetPacer({"k": -1.0})
    with pytest.raises(ValueError):
        SpendCurve([1.0] * 23)
