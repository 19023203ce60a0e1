"""Global checkpoints built in a forked child (agents/snapshot.py): the blob is the state at the fork, whatever the
parent does meanwhile; a failed child says so instead of handing over a partial blob; a discarded child is killed.
The worker end to end (a child's checkpoint written with its offsets, then a kill and a restart) is in
tests/agents/test_checkpoint_child.py."""

from __future__ import annotations

import asyncio
import os

import orjson
from factories import T0, click
from test_product_restart import TOPICS, InputLog

from kairos.agents.pipeline import BatchPipeline
from kairos.agents.snapshot import CHILD_NICENESS, ChildSnapshot
from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector

CONFIG = EngineConfig(top_n=5)


def _events(start: int, n: int) -> list:
    return [click(user=f"u{k % 7}", item=f"c{k % 3}-i{k % 11}", category=f"c{k % 3}", ts=T0 + k) for k in range(start, start + n)]


def test_the_child_builds_the_state_of_the_fork_while_the_parent_moves_on():
    log = InputLog()
    state = PartitionState(0, CONFIG, Selector(CONFIG, exploration=False))
    pipeline = BatchPipeline(TOPICS, {0: state}, 1, CONFIG.top_n)
    pipeline.process([log.append(e) for e in _events(0, 200)])
    at_fork, offsets = state.global_blob(), dict(state.offsets)

    async def scenario():
        snapshot = ChildSnapshot.start(0, state.global_blob, state.offsets, previous_checkpoint=12.5)
        pipeline.process([log.append(e) for e in _events(200, 200)])  # the parent changes the state meanwhile
        return snapshot, await snapshot.wait()

    snapshot, blob = asyncio.run(scenario())
    assert snapshot.exit_code == 0 and blob == at_fork
    assert snapshot.offsets == offsets == {TOPICS.clicks: 200} and snapshot.previous_checkpoint == 12.5
    assert orjson.loads(blob)["model"]["events"] == 200
    assert orjson.loads(state.global_blob())["model"]["events"] == 400  # the parent's own state went on


def test_a_failed_child_hands_over_nothing():
    def build() -> bytes:
        raise RuntimeError("serialisation failed")

    async def scenario():
        snapshot = ChildSnapshot.start(0, build, {}, 0.0)
        return snapshot, await snapshot.wait()

    snapshot, blob = asyncio.run(scenario())
    assert blob is None and snapshot.exit_code == 1


def test_a_discarded_child_is_killed_and_reaped():
    read, write = os.pipe()

    def build() -> bytes:
        os.read(read, 1)  # blocks: nothing is ever written
        return b"never"

    async def scenario():
        snapshot = ChildSnapshot.start(0, build, {}, 0.0)
        await asyncio.sleep(0.05)
        assert not snapshot.ready
        snapshot.discard()
        return snapshot, await asyncio.wait_for(snapshot.wait(), 10)

    try:
        snapshot, blob = asyncio.run(scenario())
    finally:
        os.close(read)
        os.close(write)
    assert blob is None and snapshot.exit_code == -9
    try:
        os.waitpid(snapshot.pid, os.WNOHANG)
        raise AssertionError("the child was not reaped")
    except ChildProcessError:
        pass


def test_the_child_runs_at_a_lower_priority_than_the_worker():
    """The child serialises in the background: it must not take the CPU from the event loop (or from a broker on
    the same cores) while it runs."""
    parent = os.nice(0)

    async def scenario():
        snapshot = ChildSnapshot.start(0, lambda: str(os.nice(0)).encode(), {}, 0.0)
        return await snapshot.wait()

    blob = asyncio.run(scenario())
    assert blob is not None and int(blob) == min(parent + CHILD_NICENESS, 19)
    assert os.nice(0) == parent  # the worker's own priority is untouched


def test_one_child_builds_several_partitions_and_a_discard_spares_the_others():
    """``start_many``: one fork, each partition's blob at the fork; discarding one view does not kill a child another
    partition still waits for (only the last discard does)."""
    read, write = os.pipe()

    def slow() -> bytes:
        os.read(read, 1)  # blocks until the test writes
        return b"slow"

    async def scenario():
        views = ChildSnapshot.start_many([(0, lambda: b"zero", {"t": 1}, 1.0), (1, lambda: b"", {"t": 2}, 2.0),
                                          (2, slow, {"t": 3}, 3.0)])  # fmt: skip
        assert len({view.pid for view in views}) == 1
        views[0].discard()
        await asyncio.sleep(0.05)
        assert not views[1].ready  # still running: partitions 1 and 2 wait for it
        os.write(write, b"x")
        return views, [await view.wait() for view in views]

    try:
        views, blobs = asyncio.run(scenario())
    finally:
        os.close(read)
        os.close(write)
    assert blobs == [b"zero", b"", b"slow"]
    assert [(v.partition, v.offsets, v.previous_checkpoint) for v in views] == [(0, {"t": 1}, 1.0), (1, {"t": 2}, 2.0), (2, {"t": 3}, 3.0)]
    assert views[2].exit_code == 0
