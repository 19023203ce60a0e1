"""A global checkpoint built in slices (engine/checkpoint.py) is the state of the moment it began, byte for byte,
however the stream changes the state between its slices: rows changed, created and dropped meanwhile, the
popularity maps, the catalog and the per-category maps updated, an event count that moved on. No broker: the
worker's pipeline over one partition (the worker end to end is in tests/agents/test_checkpoint_child.py)."""

from __future__ import annotations

import orjson
import pytest
from factories import T0, click, purchase
from test_product_restart import TOPICS, InputLog

from kairos.agents.pipeline import BatchPipeline
from kairos.engine.checkpoint import CheckpointBuild
from kairos.engine.config import EngineConfig
from kairos.engine.global_model import GlobalModel
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector


def _state(config: EngineConfig) -> tuple[PartitionState, BatchPipeline, InputLog]:
    state = PartitionState(0, config, Selector(config, exploration=False))
    return state, BatchPipeline(TOPICS, {0: state}, 1, config.top_n), InputLog()


def _events(start: int, n: int, items: int = 53) -> list:
    out = []
    for k in range(start, start + n):
        item, category = f"c{k % 5}-i{(k * 7) % items}", f"c{k % 5}"
        if k % 9 == 0:
            out.append(purchase(user=f"u{k % 13}", items=((item, category, 3.0), (f"c{k % 5}-i{k % items}", category, 2.0)),
                                ts=T0 + k))  # fmt: skip
        else:
            out.append(click(user=f"u{k % 13}", item=item, category=category, ts=T0 + k))
    return out


def _apply(pipeline: BatchPipeline, log: InputLog, events: list) -> None:
    pipeline.process([log.append(e) for e in events])


def test_a_build_with_nothing_changing_is_the_blob_of_the_moment():
    config = EngineConfig(top_n=5)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 600))
    expected = state.global_blob()

    build = state.begin_global_checkpoint()
    steps = 0
    while not build.step(deadline=-1.0):
        steps += 1
    assert build.blob == expected
    assert steps > 3  # really in pieces: the score maps, the catalog, the per-category maps, the rows
    assert state.selector.model._kept_rows is None  # the row snapshot closed with the last piece


@pytest.mark.parametrize("max_items", [50_000, 40])
def test_a_build_is_the_state_it_began_with_while_the_stream_changes_it(max_items, monkeypatch):
    """With 40 items at most, the catalog overflows while the build runs: unpopular items and their rows go."""
    monkeypatch.setattr("kairos.engine.checkpoint.ROWS_PER_CHUNK", 3)  # many row pieces, events between them
    config = EngineConfig(top_n=5, max_items=max_items)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 500, items=37))
    expected, rows_then = state.global_blob(), orjson.loads(state.global_blob())["model"]["nb"]

    build = state.begin_global_checkpoint()
    next_event, applied = 500, 0
    while not build.step(deadline=-1.0):
        _apply(pipeline, log, _events(next_event, 7, items=61))  # new items, new and changed rows
        next_event, applied = next_event + 7, applied + 7
    assert applied > 50
    assert build.blob == expected

    now = orjson.loads(state.global_blob())["model"]
    assert now["events"] == orjson.loads(expected)["model"]["events"] + applied
    changed = [k for k in rows_then if now["nb"].get(k) != rows_then[k]]
    assert changed, "the stream changed no row the build had to keep"
    assert set(now["nb"]) - set(rows_then), "no row was created meanwhile"
    if max_items == 40:
        assert set(rows_then) - set(now["nb"]), "no row was dropped meanwhile"


def test_the_blob_restores_the_state_it_was_built_from():
    config = EngineConfig(top_n=5)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 300))
    build = state.begin_global_checkpoint()
    while not build.step(deadline=-1.0):
        _apply(pipeline, log, _events(300 + build.pieces, 3))
    restored = PartitionState(0, config, Selector(config, exploration=False))
    data = orjson.loads(build.blob)
    restored.selector.recommender.model = GlobalModel.from_state(data["model"], config)
    assert orjson.dumps(restored.selector.model.to_state()) == orjson.dumps(data["model"])
    assert data["model"]["events"] == 300


def test_an_aborted_build_closes_the_row_snapshot_and_one_build_at_a_time():
    config = EngineConfig(top_n=5)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 100))
    build = state.begin_global_checkpoint()
    with pytest.raises(RuntimeError):
        state.begin_global_checkpoint()  # the model keeps one version of its rows, for one build
    build.step(deadline=-1.0)
    build.abort()
    assert state.selector.model._kept_rows is None
    _apply(pipeline, log, _events(100, 50))  # no copies kept for nobody
    again = state.begin_global_checkpoint()
    while not again.step(deadline=float("inf")):
        pass
    assert again.blob == state.global_blob()


def test_a_step_stops_at_its_deadline_after_one_piece_at_least():
    config = EngineConfig(top_n=5)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 200))
    build: CheckpointBuild = state.begin_global_checkpoint()
    ticks = iter(range(10_000))
    build.step(deadline=2.5, clock=lambda: next(ticks))  # read after each piece: 0, 1, 2, then 3 past the deadline
    assert build.pieces == 4 and not build.done
    build.step(deadline=float("inf"))
    assert build.done and build.blob == state.global_blob()
