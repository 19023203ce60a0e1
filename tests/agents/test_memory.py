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
