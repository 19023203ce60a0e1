"""The pipeline benchmark's CPU accounting (agents/bench_pipeline.py ``CpuUse``): it finds the embedded broker's
process and reports the cores each part used, so a latency figure comes with where the machine's time went."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from kairos.agents.bench_pipeline import CpuUse, _broker_pid

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_the_embedded_broker_is_found_and_busy_work_is_counted(broker):
    pid = _broker_pid(broker)
    assert pid is not None
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"tansu" in f.read()
    cpu = CpuUse(pid)
    cpu.start()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # this process spins for 0.3 s
        pass
    used = cpu.stop()
    assert 0.2 <= used["workers"] <= 1.5  # about one core, less on a machine busy with other work
    assert 0.0 <= used["broker"] < 1.0  # idle broker: heartbeats at most
    assert 0.0 < used["machine_busy_share"] <= 1.0 and used["machine_cores"] >= 1


def test_no_broker_pid_for_an_address_nobody_listens_on():
    assert _broker_pid("127.0.0.1:1") is None


def test_worker_processes_are_counted_by_pid(broker):
    """With worker pids the cores are theirs, read from /proc, not this process's."""
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 1.5\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.2)  # the child is up and spinning
        cpu = CpuUse(_broker_pid(broker), [busy.pid])
        cpu.start()
        time.sleep(0.6)  # this process sleeps; the child spins
        used = cpu.stop()
    finally:
        busy.wait(10)
    assert 0.3 <= used["workers"] <= 1.2
