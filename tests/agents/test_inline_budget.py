"""Which global checkpoints the worker builds on its loop and which in a forked child (agents/snapshot.py)."""

from __future__ import annotations

from kairos.agents.snapshot import DEFAULT_MS_PER_MB, InlineBudget


def test_a_partition_never_checkpointed_is_built_inline_and_a_large_one_in_a_child() -> None:
    budget = InlineBudget(max_ms=20.0)
    assert budget.inline(0)  # nothing known: built here, and measured
    budget.built_in_child(1, int(4e6))  # 4 MB at the assumed 8 ms per MB: 32 ms expected
    assert budget.expected_ms(1) == 4 * DEFAULT_MS_PER_MB
    assert not budget.inline(1)
    budget.sizes[2] = int(2e6)  # a restored checkpoint of 2 MB: 16 ms
    assert budget.inline(2)


def test_the_rate_follows_the_builds_measured_on_the_loop() -> None:
    budget = InlineBudget(max_ms=20.0)
    budget.built_inline(0, int(2e6), ms=4.0)  # 2 ms per MB measured
    assert budget.ms_per_mb == 0.7 * DEFAULT_MS_PER_MB + 0.3 * 2.0
    for _ in range(30):
        budget.built_inline(0, int(2e6), ms=4.0)
    assert abs(budget.ms_per_mb - 2.0) < 0.01
    budget.built_in_child(1, int(8e6))
    assert budget.inline(1)  # 8 MB at 2 ms per MB: 16 ms
    budget.built_inline(2, 1000, ms=5.0)  # a tiny checkpoint's fixed cost does not move the rate
    assert abs(budget.ms_per_mb - 2.0) < 0.01 and budget.sizes[2] == 1000


def test_zero_sends_every_checkpoint_to_a_child() -> None:
    budget = InlineBudget(max_ms=0.0)
    assert not budget.inline(0)
    budget.built_inline(0, 10, ms=0.1)
    assert not budget.inline(0)
