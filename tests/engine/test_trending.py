"""Decayed trending counters: hand-computed decay, trend ratio, top-k and bounded memory."""

import math

import pytest

from kairos.engine.trending import TrendingCounter


def test_counts_halve_every_half_life():
    trend = TrendingCounter(short_half_life_s=10, long_half_life_s=100)
    trend.add("a", ts=0.0)
    trend.add("a", ts=10.0)  # short: 1 * 0.5 + 1 = 1.5, long: 2 ** -0.1 + 1
    short, long = trend.counts(now=20.0)["a"]
    assert short == pytest.approx(0.75)
    assert long == pytest.approx((2**-0.1 + 1) * 2**-0.1)


def test_late_event_is_decayed_not_rewinding_time():
    trend = TrendingCounter(short_half_life_s=10, long_half_life_s=100)
    trend.add("a", ts=100.0)
    trend.add("a", ts=90.0)  # 10 s late: counts 0.5 on the short horizon
    assert trend.counts(now=100.0)["a"][0] == pytest.approx(1.5)


def test_trend_ratio_hand_computed():
    trend = TrendingCounter(short_half_life_s=10, long_half_life_s=100, smoothing_rate=0.0, min_count=1)
    trend.add("a", ts=0.0)
    # counts (1, 1): rates ln2/10 and ln2/100 -> ratio 10
    assert trend.trend_scores(now=0.0)[0] == pytest.approx(10.0)
    assert trend.top_trending(5, now=0.0) == [("a", pytest.approx(10.0))]


def test_burst_trends_over_steady_and_steady_is_popular():
    trend = TrendingCounter(short_half_life_s=60, long_half_life_s=3600, min_count=2)
    for t in range(24):
        trend.add("steady", ts=t * 300.0)
    for t in range(5):
        trend.add("burst", ts=7000.0 + t)
    now = 7010.0
    assert trend.top_trending(2, now)[0][0] == "burst"
    assert [item for item, _ in trend.popular(1, now)] == ["steady"]
    assert all(item != "burst" for item, _ in trend.top_trending(2, now, exclude={"burst"}))


def test_min_count_blocks_single_event_trends():
    trend = TrendingCounter(min_count=3)
    trend.add("once", ts=0.0)
    assert trend.top_trending(10, now=0.0) == []
    assert trend.popular(10, now=0.0)[0][0] == "once"


def test_memory_bounded_keeps_popular_items():
    trend = TrendingCounter(max_items=100)
    for _ in range(5):
        trend.add("hot", ts=0.0)
    for i in range(300):
        trend.add(f"cold-{i}", ts=float(i))
    assert len(trend) <= 100
    assert "hot" in trend.counts(now=300.0)
    assert math.isfinite(trend.popular(1, now=300.0)[0][1])
