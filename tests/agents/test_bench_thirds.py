"""The latency phase's split into thirds (a phase that slows down as it goes shows in the last third)."""

from __future__ import annotations

import math

import numpy as np

from kairos.agents.bench_pipeline import latency_by_third


def test_each_third_has_its_own_percentiles_in_arrival_order() -> None:
    steady, slowing = np.full(200, 5.0), np.linspace(5.0, 105.0, 100)
    thirds = latency_by_third(np.concatenate([steady, slowing]))
    assert thirds[0] == {"p50_ms": 5.0, "p99_ms": 5.0}
    assert thirds[1] == {"p50_ms": 5.0, "p99_ms": 5.0}
    assert thirds[2]["p50_ms"] == 55.0
    assert thirds[2]["p99_ms"] == round(float(np.percentile(slowing, 99)), 2)


def test_short_and_empty_phases_give_three_entries() -> None:
    assert [t["p50_ms"] for t in latency_by_third(np.array([3.0, 7.0]))][:2] == [3.0, 7.0]
    assert len(latency_by_third(np.array([]))) == 3
    assert all(math.isnan(t["p99_ms"]) for t in latency_by_third(np.array([])))
