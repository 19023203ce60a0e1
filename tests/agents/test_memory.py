"""The allocator settings of long-running workers (agents/memory.py), on this Linux/glibc test machine."""

import sys

import pytest

from kairos.agents import memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._LIBC is None, reason="glibc only")
def test_freed_large_blocks_go_back_to_the_system():
    import numpy as np

    def rss_kb() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    assert memory.fix_mmap_threshold()
    before = rss_kb()
    blocks = [np.ones(64 * 1024, dtype=np.float64) for _ in range(400)]  # 400 x 512 KiB = 200 MiB, touched
    assert rss_kb() - before > 150_000
    del blocks
    memory.trim()
    assert rss_kb() - before < 30_000, "freed blocks stayed resident"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Node:
    def __init__(self) -> None:
        self.other = None


def test_collector_policy_freezes_survivors_and_sweeps_frozen_cycles():
    import gc
    import weakref

    clock = _Clock()
    policy = memory.CollectorPolicy(freeze_interval_s=5.0, sweep_interval_s=60.0, clock=clock)
    try:
        assert policy.tick() == ""  # nothing is due yet
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a reference cycle, alive while frozen
        dead = weakref.ref(a)
        clock.now = 5.0
        frozen_before = gc.get_freeze_count()
        assert policy.tick() == "freeze"
        assert gc.get_freeze_count() > frozen_before
        assert policy.tick() == ""  # at most once per interval
        del a, b
        gc.collect()
        assert dead() is not None, "a frozen cycle is out of the collector's reach until the sweep"
        clock.now = 60.0
        assert policy.tick() == "sweep"
        assert dead() is None, "the sweep collects cycles that died while frozen"
    finally:
        gc.unfreeze()


def test_collector_pauses_are_exported_per_generation():
    import gc

    from kairos.engine import metrics

    memory.watch_collector_pauses()
    memory.watch_collector_pauses()  # idempotent: one callback
    assert gc.callbacks.count(memory._on_collection) == 1
    before = metrics.GC_PAUSE.labels("2")._sum.get(), _count(metrics.GC_PAUSE.labels("2"))
    gc.collect()
    assert _count(metrics.GC_PAUSE.labels("2")) == before[1] + 1
    assert metrics.GC_PAUSE.labels("2")._sum.get() > before[0]


def _count(child) -> float:
    return sum(bucket.get() for bucket in child._buckets)
