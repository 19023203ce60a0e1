"""``kairos bench pipeline --latency-repeats``: the latency phase run again by new worker groups on fresh topics after
the same backlog, every run reported with the spread over them. Real broker and Redis, simulated shoppers, no model
directory (the plumbing is the point, not the ranker)."""

from __future__ import annotations

import asyncio

import pytest

from kairos.agents.bench_pipeline import bench_pipeline_main, fresh_topics, repeat_summary, run
from kairos.agents.cli import build_parser
from kairos.agents.runtime import Services
from kairos.engine.simulator import ShopperSimulator


def _run(p50: float, p99: float) -> dict:
    return {"latency_backlog_events_per_s": 500.0, "p50_ms": p50, "p99_ms": p99, "p999_ms": p99 + 10, "latency_by_third": [{"p50_ms": p50, "p99_ms": p99}] * 3,
            "consume_delay_p99_ms": 1.0, "worker_p99_ms": 2.0, "cpu_during_latency": {"workers": 0.5},
            "checkpoints": {"stall_max_ms": 3.0, "slice_max_ms": 2.1}}  # fmt: skip


def test_the_spread_over_repeats_is_min_median_max_of_each_run():
    summary = repeat_summary([_run(9, 30), _run(12, 55), _run(10, 24)])
    assert [r["p99_ms"] for r in summary["latency_repeats"]] == [30, 55, 24]
    assert [r["p999_ms"] for r in summary["latency_repeats"]] == [40, 65, 34]
    assert summary["latency_repeats"][1]["p99_by_third_ms"] == [55, 55, 55]
    assert summary["over_repeats"]["p99_ms"] == {"min": 24.0, "median": 30.0, "max": 55.0}
    assert summary["over_repeats"]["p50_ms"] == {"min": 9.0, "median": 10.0, "max": 12.0}
    assert [(r["checkpoint_stall_max_ms"], r["checkpoint_slice_max_ms"]) for r in summary["latency_repeats"]] == [(3.0, 2.1)] * 3


def test_each_repeat_gets_its_own_topics_group_and_keys(make_settings):
    settings = make_settings()
    names = {(s.topic_prefix, s.consumer_group) for s in (settings, *(fresh_topics(settings, n) for n in (1, 2, 3)))}
    assert len(names) == 4
    assert fresh_topics(settings).topic_prefix == fresh_topics(settings, 1).topic_prefix  # the one run before repeats


def test_repeats_must_be_at_least_one(make_settings):
    with pytest.raises(ValueError, match="at least 1"):
        bench_pipeline_main(make_settings(), None, "simulated", 100, 10.0, 1.0, 1, 0)
    assert build_parser().parse_args(["bench", "pipeline"]).latency_repeats == 1
    assert build_parser().parse_args(["bench", "pipeline", "--latency-repeats", "3"]).latency_repeats == 3


def test_the_latency_phase_is_repeated_on_fresh_topics_with_the_same_events(make_settings, redis_url, tmp_path):
    settings = make_settings(redis_url=redis_url, partitions=2, model_dir=tmp_path / "no-models",
                             recommend_every_event=True)  # fmt: skip
    svc = Services(settings.kafka_bootstrap_servers, redis_url, embedded_kafka=False, embedded_redis=False)
    stream = list(ShopperSimulator(seed=5, n_users=40, n_items=150, n_categories=5).events(360))
    backlog, paced = stream[:300], stream[300:]
    out = asyncio.run(run(settings, svc, backlog, {"latency": paced}, rate=40.0, latency_s=1.0, repeats=2))
    runs = out["latency_repeats"]
    assert len(runs) == 2
    # the first run is the top-level one; both ranked the same 40 paced events (1 s at 40/s), one recommendation each
    assert runs[0]["p99_ms"] == out["p99_ms"] and out["latency_events"] == 40
    assert out["p99_ms"] <= out["p999_ms"] <= out["max_ms"] and runs[0]["p999_ms"] == out["p999_ms"]
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and len(r["p99_by_third_ms"]) == 3 for r in runs)
    assert out["over_repeats"]["p99_ms"]["min"] <= out["over_repeats"]["p99_ms"]["max"]
    # the second group drained the same backlog on its own topics before its run
    assert all(r["backlog_events_per_s"] > 0 for r in runs) and out["recs_per_event"] == 1.0
