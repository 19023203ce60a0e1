"""``kairos bench api``: wired in the CLI, runs end to end (real redis-server, API and load generator processes) and
prints its figures as the last line; the load generator's arithmetic on known samples."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kairos.agents.cli import build_parser
from kairos.agents.ops import _OpenLoopLoad, bench_api_command, summarize_load


def test_bench_api_is_a_kairos_command():
    args = build_parser().parse_args(["bench", "api", "--rate", "50", "--seconds", "2", "--pin", "--realtime"])
    assert args.func is bench_api_command
    assert (args.rate, args.seconds, args.pin, args.realtime, args.users) == (50, 2.0, True, True, 100_000)


def test_summary_separates_latency_from_the_clients_lateness():
    load = _OpenLoopLoad()
    # (due, sent, answered, ok): 100 requests 10 ms apart, each sent 1 ms late and answered 2 ms after sending;
    # the last one is answered 50 ms after sending and was sent 20 ms late; one answer is an error.
    load.samples = [(k * 0.01, k * 0.01 + 0.001, k * 0.01 + 0.003, True) for k in range(99)]
    load.samples.append((0.99, 1.01, 1.06, False))
    result = summarize_load(load, total=101, warmup_s=0.0)
    assert result["p50_ms"] == pytest.approx(2.0) and result["max_ms"] == pytest.approx(50.0)
    assert result["late_p50_ms"] == pytest.approx(1.0) and result["late_max_ms"] == pytest.approx(20.0)
    assert result["from_due_p99_ms"] == pytest.approx(70.0)  # lateness + latency of the worst one
    assert result["requests"] == 100 and result["errors"] == 2  # one non-200, one never answered
    assert result["requests_per_s"] == pytest.approx(100 / 1.06, rel=1e-3)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_api_runs_and_prints_json_last():
    argv = ["bench", "api", "--users", "500", "--rate", "200", "--seconds", "2", "--connections", "4"]
    run = subprocess.run(
        [sys.executable, "-c", "from kairos.agents.cli import main; main()", *argv],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["requests"] >= 150  # 2 s at 200/s, the first second is warm-up
    assert result["requests_per_s"] == pytest.approx(200, rel=0.2)
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["p999_ms"] <= result["max_ms"]
    assert result["late_p99_ms"] >= 0 and result["server_p50_ms"] is not None
    assert result["pinned"] is False and result["realtime"] is False
