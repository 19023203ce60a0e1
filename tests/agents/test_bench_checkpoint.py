"""``kairos bench checkpoint``: the loop time of a global checkpoint built in slices, on simulated shoppers."""

from __future__ import annotations

from kairos.agents.bench_checkpoint import bench_checkpoint
from kairos.agents.cli import build_parser
from kairos.agents.settings import Settings


def test_bench_checkpoint_builds_every_partition_in_slices_equal_to_the_blob_at_once(tmp_path) -> None:
    (tmp_path / "no-models").mkdir()
    settings = Settings(kafka_bootstrap_servers=None, redis_url=None, model_dir=tmp_path / "no-models", data_dir=None,
                        checkpoint_slice_ms=0.05)  # fmt: skip
    result = bench_checkpoint(settings, None, "simulated", events=1500, repeats=2)
    assert result["builds"] == 2 * 4 and len(result["blob_mb"]) == 4 and result["events"] == 1500
    assert result["equal_to_global_blob"] is True
    assert result["slices_per_build"]["p50"] > 1  # 0.05-ms slices: every build took several
    for key in ("snapshot_ms", "slice_ms", "last_slice_ms", "at_once_ms"):
        # timed, in 0.01 ms: a last slice that only closes the blob can round to 0 on a fast machine
        assert 0 <= result[key]["p50"] <= result[key]["max"] and result[key]["max"] > 0, key
    assert "selection state (to_state)" in result["at_once_parts_ms"]
    assert "discovery.links" not in result["at_once_parts_ms"]  # built in pieces, not at once
    assert "SIMULATED" in result["source"] and result["shared_discovery"] is True


def test_bench_checkpoint_is_a_kairos_command() -> None:
    args = build_parser().parse_args(["bench", "checkpoint", "--events", "100", "--repeats", "1"])
    assert (args.events, args.repeats, args.source) == (100, 1, "online_retail")
