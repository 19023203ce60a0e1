"""``kairos bench hotpath``: the worker's cost per event without broker or Redis, on simulated shoppers."""

from __future__ import annotations

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


def test_bench_hotpath_is_a_kairos_command() -> None:
    args = build_parser().parse_args(["bench", "hotpath", "--warm", "10", "--events", "5", "--batch", "2"])
    assert (args.warm, args.events, args.batch, args.source) == (10, 5, 2, "taobao")
