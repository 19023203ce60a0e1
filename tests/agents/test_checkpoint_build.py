"""A global checkpoint built in slices (engine/checkpoint.py) is the state of the moment it began, byte for byte,
however the stream changes the state between its slices: co-occurrence rows, catalog entries, category maps and the
discovery model's rows and user-kNN lists changed, created and dropped meanwhile, the popularity maps updated, an event count that moved on. No broker: the
worker's pipeline over one partition (the worker end to end is in tests/agents/test_checkpoint_child.py; when the worker runs the slices, below)."""

from __future__ import annotations

import orjson
import pytest
from factories import T0, click, purchase
from test_product_restart import TOPICS, InputLog

from kairos.agents.pipeline import BatchPipeline
from kairos.agents.snapshot import SlicedSnapshot
from kairos.agents.worker import SLICE_AFTER_BATCH_S, IngestWorker
from kairos.engine.checkpoint import CheckpointBuild
from kairos.engine.config import EngineConfig
from kairos.engine.global_model import GlobalModel
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector


def _state(config: EngineConfig) -> tuple[PartitionState, BatchPipeline, InputLog]:
    state = PartitionState(0, config, Selector(config, exploration=False))
    return state, BatchPipeline(TOPICS, {0: state}, 1, config.top_n), InputLog()


def _events(start: int, n: int, items: int = 53, categories: tuple[str, int] = ("c", 5)) -> list:
    out = []
    prefix, n_categories = categories
    for k in range(start, start + n):
        category = f"{prefix}{k % n_categories}"
        item = f"{category}-i{(k * 7) % items}"
        if k % 9 == 0:
            out.append(purchase(user=f"u{k % 13}", items=((item, category, 3.0), (f"{category}-i{k % items}", category, 2.0)),
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
    assert state.selector.model._kept_rows is None  # the snapshot closed with the last piece


@pytest.mark.parametrize("max_items, max_categories", [(50_000, 50_000), (40, 3)])
def test_a_build_is_the_state_it_began_with_while_the_stream_changes_it(max_items, max_categories, monkeypatch):
    """With 40 items and 3 categories at most, the catalog and the category maps overflow while the build runs:
    unpopular items, their rows and small categories go (there popularity halves every minute and the stream
    resumes half an hour later, so the new category outweighs the old ones at once)."""
    monkeypatch.setattr("kairos.engine.checkpoint.ENTRIES_PER_PIECE", 5)  # many pieces, events between them
    monkeypatch.setattr("kairos.engine.global_model.MAX_CATEGORIES", max_categories)
    half_life = 14 * 86_400.0 if max_items == 50_000 else 60.0
    shoppers = 100_000 if max_items == 50_000 else 8  # 13 shoppers: the user-kNN forgets some meanwhile
    config = EngineConfig(top_n=5, max_items=max_items, popularity_half_life_s=half_life, discovery_max_shoppers=shoppers)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 500, items=37))
    expected = state.global_blob()
    then = orjson.loads(expected)["model"]

    build = state.begin_global_checkpoint()
    next_event, applied = (500 if max_items == 50_000 else 2_300), 0
    # new items, new and changed rows; in one new category, which outgrows the old ones when only 3 are kept
    while not build.step(deadline=-1.0):
        _apply(pipeline, log, _events(next_event, 7, items=61) + _events(next_event, 7, categories=("d", 1)))
        next_event, applied = next_event + 7, applied + 14
    assert applied > 50
    assert build.blob == expected

    links_then = orjson.loads(expected)["selection"]["discovery"]["links"]
    links_now = orjson.loads(state.global_blob())["selection"]["discovery"]["links"]
    assert [k for k in links_then if links_now.get(k) != links_then[k]], "no discovery row changed meanwhile"
    assert set(links_now) - set(links_then), "no discovery row was created meanwhile"
    if max_items == 40:
        assert set(links_then) - set(links_now), "no discovery row was dropped meanwhile"
    lines_then = orjson.loads(expected)["selection"]["discovery"]["catalogue"]["siblings"]
    lines_now = orjson.loads(state.global_blob())["selection"]["discovery"]["catalogue"]["siblings"]
    if max_items == 40:  # the catalogue forgets items: every sibling list is rebuilt without them
        assert [k for k in lines_then if lines_now.get(k) != lines_then[k]], "no product line changed meanwhile"
    knn_then = orjson.loads(expected)["selection"]["discovery"]["shoppers"]
    knn_now = orjson.loads(state.global_blob())["selection"]["discovery"]["shoppers"]
    buyers_then, buyers_now = knn_then["buyers"], knn_now["buyers"]
    if max_items == 50_000:  # (with 40 the old items are all forgotten before they are bought again)
        assert [k for k in buyers_then if buyers_now.get(k) != buyers_then[k]], "no item's buyers changed"
    assert set(buyers_now) - set(buyers_then), "no item was bought for the first time meanwhile"
    baskets_then, baskets_now = dict(knn_then["baskets"]), dict(knn_now["baskets"])
    assert [k for k in baskets_then if k in baskets_now and baskets_now[k] != baskets_then[k]], "no basket changed"
    assert [k for k, _ in knn_then["baskets"]] != [k for k, _ in knn_now["baskets"]], "the forgetting order stayed"
    if max_items == 40:
        assert set(buyers_then) - set(buyers_now), "no item's buyers were forgotten meanwhile"
        assert set(baskets_then) - set(baskets_now), "no shopper was forgotten meanwhile"
    discovery = state.selector.recommender.discovery
    assert discovery._kept_links is None and discovery.shoppers._kept_buyers is None  # closed with the last piece
    now = orjson.loads(state.global_blob())["model"]
    assert now["events"] == then["events"] + applied
    for part in ("nb", "cat", "catitems"):  # each keyed part had keys changed that the build had to keep
        assert [k for k in then[part] if now[part].get(k) != then[part][k]], part
    assert set(now["nb"]) - set(then["nb"]) and set(now["cat"]) - set(then["cat"]), "nothing was created meanwhile"
    if max_items == 40:
        assert set(then["nb"]) - set(now["nb"]) and set(then["cat"]) - set(now["cat"]), "no item was dropped"
        assert set(then["catitems"]) - set(now["catitems"]), "no category was dropped meanwhile"


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


def test_an_aborted_build_closes_the_snapshot_and_one_build_at_a_time():
    config = EngineConfig(top_n=5)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 100))
    build = state.begin_global_checkpoint()
    with pytest.raises(RuntimeError):
        state.begin_global_checkpoint()  # the model keeps one version of its keyed state, for one build
    build.step(deadline=-1.0)
    build.abort()
    assert state.selector.model._kept_rows is None and state.selector.recommender.discovery._kept_links is None
    _apply(pipeline, log, _events(100, 50))  # no copies kept for nobody
    again = state.begin_global_checkpoint()
    while not again.step(deadline=float("inf")):
        pass
    assert again.blob == state.global_blob()


def test_a_step_stops_before_a_piece_that_would_end_past_its_deadline_after_one_piece_at_least():
    config = EngineConfig(top_n=5)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 200))
    build: CheckpointBuild = state.begin_global_checkpoint()
    ticks = iter(range(10_000))
    # read before the first piece and after each: 0, 1, 2; a third piece, as long as the others, would end at 3
    build.step(deadline=2.5, clock=lambda: next(ticks))
    assert build.pieces == 2 and not build.done
    build.step(deadline=-1.0)  # past already: one piece all the same
    assert build.pieces == 3 and not build.done
    build.step(deadline=float("inf"))
    assert build.done and build.blob == state.global_blob()


def test_the_worker_slices_a_build_in_idle_time_and_after_batches_only_once_it_waited(make_settings):
    """``IngestWorker._advance_snapshots``: a slice whenever the loop finds no records; after a batch only for a
    build open ``SLICE_AFTER_BATCH_S`` already (a worker that is never idle still finishes its checkpoints)."""
    config = EngineConfig(top_n=5)
    state, pipeline, log = _state(config)
    _apply(pipeline, log, _events(0, 300))
    worker = IngestWorker(make_settings(checkpoint_slice_ms=0.01), "127.0.0.1:9", store=None,
                          make_selector=lambda c: Selector(c, exploration=False))  # fmt: skip
    snapshot = SlicedSnapshot(0, state.begin_global_checkpoint(), state.offsets, previous_checkpoint=0.0)
    worker._snapshots[0] = snapshot
    assert worker._building() is snapshot

    worker._advance_snapshots(after_batch=True)
    assert len(worker.checkpoint_slices_ms) == 0  # just begun: its slices wait for idle time
    worker._advance_snapshots()
    assert len(worker.checkpoint_slices_ms) == 1
    snapshot.started -= SLICE_AFTER_BATCH_S
    worker._advance_snapshots(after_batch=True)
    assert len(worker.checkpoint_slices_ms) == 2
    at_begin, moved_on = dict(log.ends), 300
    while not snapshot.ready:
        _apply(pipeline, log, _events(moved_on, 2))
        moved_on += 2
        worker._advance_snapshots()
    assert snapshot.blob is not None and worker._building() is None
    # the offsets the blob reflects are those of the snapshot, not of the state now
    assert snapshot.offsets == at_begin == {TOPICS.clicks: 266, TOPICS.purchases: 34} != state.offsets
    assert orjson.loads(snapshot.blob)["model"]["events"] == 300
