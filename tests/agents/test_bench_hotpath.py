"""``kairos bench hotpath``: the worker's cost per event without broker or Redis, on simulated shoppers."""

from __future__ import annotations

import time

from kairos.agents.bench_hotpath import bench_hotpath
from kairos.agents.cli import build_parser
from kairos.agents.settings import Settings


def test_bench_hotpath_times_every_event_it_was_given(tmp_path) -> None:
    (tmp_path / "no-models").mkdir()
    settings = Settings(kafka_bootstrap_servers=None, redis_url=None, model_dir=tmp_path / "no-models", data_dir=None)
    result = bench_hotpath(settings, None, "simulated", warm=300, events=40, batch=4)
    assert result["warm_events"] == 300 and result["events"] == 40 and result["batch"] == 4
    assert result["ms_per_event"] > 0 and 0 < result["batch_p50_ms"] <= result["batch_p99_ms"]
    assert "SIMULATED" in result["source"]
    assert 0 < result["recs_per_event"] <= 1 and result["recommend_every_event"] is False


def test_bench_hotpath_ranks_every_event_when_asked(tmp_path) -> None:
    (tmp_path / "no-models").mkdir()
    settings = Settings(kafka_bootstrap_servers=None, redis_url=None, model_dir=tmp_path / "no-models", data_dir=None,
                        recommend_every_event=True)  # fmt: skip
    result = bench_hotpath(settings, None, "simulated", warm=300, events=60, batch=20)
    assert result["recs_per_event"] == 1.0 and result["recommend_every_event"] is True
    # the same events in the default mode: a shopper's events in one batch of 20 are ranked once
    coalesced = bench_hotpath(settings.model_copy(update={"recommend_every_event": False}), None, "simulated", warm=300,
                              events=60, batch=20)  # fmt: skip
    assert coalesced["recs_per_event"] < 1.0


def test_bench_hotpath_idles_before_each_batch_without_timing_the_idle(tmp_path) -> None:
    (tmp_path / "no-models").mkdir()
    settings = Settings(kafka_bootstrap_servers=None, redis_url=None, model_dir=tmp_path / "no-models", data_dir=None)
    started = time.perf_counter()
    result = bench_hotpath(settings, None, "simulated", warm=200, events=10, batch=1, gap_ms=150.0)
    assert time.perf_counter() - started >= 10 * 0.150  # ten idles of 150 ms, one before each event
    assert result["gap_ms"] == 150.0 and result["events"] == 10
    assert result["batch_p50_ms"] < 150.0 and result["ms_per_event"] < 150.0  # the idle is not in the timings


def test_bench_hotpath_is_a_kairos_command() -> None:
    args = build_parser().parse_args(["bench", "hotpath", "--warm", "10", "--events", "5", "--batch", "2"])
    assert (args.warm, args.events, args.batch, args.source, args.gap_ms) == (10, 5, 2, "taobao", 0.0)
    args = build_parser().parse_args(["bench", "hotpath", "--gap-ms", "5"])
    assert args.gap_ms == 5.0
