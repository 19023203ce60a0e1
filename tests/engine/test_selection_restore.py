"""The product side of the Selector across a save / restore (docs/state.md, "Product state across a restart").

The frequency-cap history is stored with each shopper's state (exact with every commit, read back with the shopper);
the feedback join rides in the partition checkpoint beside the corrector it trains. Real PartitionState, Selector and
in-memory store; the replay window after a crash is covered with the pipeline in tests/agents/test_product_restart.py.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from factories import T0, click, impression

from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector, segment_of
from kairos.engine.state import UserInterest
from kairos.engine.store import InMemoryStateStore, PartitionSnapshot

NOW = T0 + 4000


def _selector(config: EngineConfig) -> Selector:
    return Selector(config, exploration=False, frequency_cap=2, max_per_category=10)


def _partition(config: EngineConfig | None = None) -> PartitionState:
    """A partition whose model knows 5 categories of 20 items, and a shopper of category c1 with one click."""
    config = config or EngineConfig(top_n=5)
    state = PartitionState(0, config, _selector(config))
    rng, background = random.Random(0), {}
    for n in range(3000):
        uid = f"bg{rng.randrange(60)}"
        cat = int(uid[2:]) % 5
        user = background.setdefault(uid, UserInterest.new(uid, config))
        item = f"c{cat}-i{rng.randrange(20)}"
        state.selector.observe(user, click(user=uid, item=item, category=f"c{cat}", ts=T0 + n))
    _apply(state, click(user="shopper", item="c1-i0", category="c1", action="click", ts=NOW - 10))
    return state


def _apply(state: PartitionState, event) -> None:
    """As the pipeline applies an event of the partition's own user (without the Kafka records)."""
    state.selector.observe(state.user(event.user_id), event)
    state.mark_dirty(event.user_id)


def _show(state: PartitionState, ts: float, rec_id: str | None = None):
    """Recommend to the shopper and show them the slate (its impression event applied)."""
    selection = state.selector.select(state.users["shopper"], ts, rec_id=rec_id)
    shown = [item.item_id for item in selection.items]
    _apply(state, impression(user="shopper", items=shown, rec_id=selection.rec_id, ts=ts))
    return selection


def _commit(state: PartitionState, store: InMemoryStateStore, checkpoint: bool = True) -> None:
    commit = state.build_commit(with_global_checkpoint=checkpoint)
    asyncio.run(store.commit(commit))
    state.committed(commit)


def _restore(store: InMemoryStateStore, config: EngineConfig, snapshot: PartitionSnapshot | None = None):
    snapshot = snapshot or asyncio.run(store.load(0))
    return PartitionState.restore(0, config, snapshot, lambda: _selector(config))


def _items(selection) -> list[str]:
    return [item.item_id for item in selection.items]


def test_a_capped_shopper_stays_capped_after_a_restore_and_after_being_read_back():
    state, store = _partition(EngineConfig(top_n=5, max_resident_users=1)), InMemoryStateStore()
    first = _show(state, NOW)
    top = first.items[0].item_id
    _show(state, NOW + 1)  # the same slate again: the cap of 2 per day is reached for all of it
    capped = set(_items(first))
    assert not capped & set(_items(state.selector.select(state.users["shopper"], NOW + 2)))
    _commit(state, store)
    assert "f" in orjson.loads(asyncio.run(store.load(0)).users["shopper"])

    restored = _restore(store, state.config)
    again = restored.selector.select(restored.users["shopper"], NOW + 2)
    assert not capped & set(_items(again)), "a capped item was shown again after the restore"
    assert all(restored.selector.impressions.count("shopper", item, NOW + 2) == 2 for item in capped)

    # what the stored history is worth: the same restore from the shopper's state without it shows them again
    snapshot = asyncio.run(store.load(0))
    blob = orjson.loads(snapshot.users["shopper"])
    del blob["f"]
    snapshot.users["shopper"] = orjson.dumps(blob)
    forgetful = _restore(store, state.config, snapshot)
    assert top in _items(forgetful.selector.select(forgetful.users["shopper"], NOW + 2))

    # a shopper evicted from memory takes their history along and brings it back when read back
    _apply(state, click(user="other", item="c2-i0", category="c2", ts=NOW + 3))
    _commit(state, store, checkpoint=False)
    assert state.evict_resident() == 1 and "shopper" not in state.users
    assert state.selector.impressions.count("shopper", top, NOW + 4) == 0
    state.adopt(asyncio.run(store.load_users(0, state.missing(["shopper"]))))
    assert not capped & set(_items(state.selector.select(state.users["shopper"], NOW + 4)))
    # and a day later the cap has expired: the stored history does not hold it longer than the window
    assert top in _items(state.selector.select(state.users["shopper"], NOW + 86_400 + 2))


def test_an_impression_shown_before_the_restore_joins_a_click_after_it_once():
    state, store = _partition(), InMemoryStateStore()
    shown = _show(state, NOW, rec_id="shopper.slate-1")
    _commit(state, store)
    restored = _restore(store, state.config)
    assert restored.selector.join.pending == 1
    learned = state.selector.examples_learned
    assert restored.selector.examples_learned == learned

    clicked = shown.items[2].item_id
    segment = shown.segment
    for partition in (state, restored):  # the same events, uninterrupted and after the restore
        _apply(partition, click(user="shopper", item=clicked, category=clicked.split("-")[0], action="click",
                                ts=NOW + 5, rec_id=shown.rec_id, event_id="click-after"))  # fmt: skip
        # a second click on the same shown item (another event id) is no second label
        _apply(partition, click(user="shopper", item=clicked, category=clicked.split("-")[0], action="click",
                                ts=NOW + 6, rec_id=shown.rec_id, event_id="click-again"))  # fmt: skip
    assert restored.selector.examples_learned == state.selector.examples_learned == learned + 1
    weights = restored.selector.corrector._weights
    assert weights[f"is:{clicked}|{segment}"] > 0
    assert weights == state.selector.corrector._weights

    # the window closes: the other items of the slate become skips, once, in both
    for partition in (state, restored):
        _apply(partition, click(user="bg1", item="c1-i1", category="c1", action="click", ts=NOW + 1801,
                                event_id="later"))  # fmt: skip
    assert restored.selector.examples_learned == state.selector.examples_learned == learned + len(shown.items)
    assert restored.selector.join.pending == state.selector.join.pending == 0
    assert restored.selector.corrector._weights == state.selector.corrector._weights
    assert segment == segment_of(restored.users["shopper"], NOW)


def test_a_checkpoint_and_a_user_state_written_before_the_product_state_was_kept_still_load():
    state, store = _partition(), InMemoryStateStore()
    _show(state, NOW)
    _commit(state, store)
    snapshot = asyncio.run(store.load(0))
    checkpoint, user = orjson.loads(snapshot.global_blob), orjson.loads(snapshot.users["shopper"])
    assert "join" in checkpoint["selection"] and "f" in user
    # the new user state still loads where the "f" entry is unknown (a worker of the previous version)
    assert UserInterest.from_state("shopper", user, state.config).version == state.users["shopper"].version

    del checkpoint["selection"]["join"]
    del user["f"]
    old = PartitionSnapshot({"shopper": orjson.dumps(user)}, snapshot.offsets, orjson.dumps(checkpoint),
                            snapshot.global_offsets)  # fmt: skip
    restored = _restore(store, state.config, old)
    assert restored.selector.join.pending == 0 and len(restored.selector.impressions) == 0
    shopper = restored.users["shopper"]
    assert shopper.version == state.users["shopper"].version
    assert restored.selector.select(shopper, NOW + 2).items  # serves as before, with nothing capped
    _show(restored, NOW + 3)  # and keeps the new state from then on
    assert restored.selector.join.pending == 1 and restored.selector.user_state("shopper", NOW + 3)["f"]["n"]


def test_a_slate_served_before_the_restore_joins_its_impression_with_the_logits_it_was_served_with():
    state, store = _partition(), InMemoryStateStore()
    older = state.selector.select(state.users["shopper"], NOW, rec_id="shopper.slate-a")
    served = state.selector.select(state.users["shopper"], NOW + 1, rec_id="shopper.slate-b")
    _commit(state, store, checkpoint=False)  # the slates are stored with the shopper, not in the checkpoint
    restored = _restore(store, state.config)
    for selection in (older, served):  # both shown after the restart (the storefront had the older one first)
        for partition in (state, restored):
            _apply(partition, impression(user="shopper", items=_items(selection), rec_id=selection.rec_id, ts=NOW + 2,
                                         event_id=f"shown-{selection.rec_id}"))  # fmt: skip
        live = state.selector.join._open[selection.rec_id].impression
        again = restored.selector.join._open[selection.rec_id].impression
        assert again.segment == live.segment == selection.segment != "all"
        assert again.randomized == live.randomized
        assert again.logits == pytest.approx(live.logits, abs=1e-4) and any(x != 0.0 for x in again.logits)
    # only the last SERVED_PER_USER slates are kept: a third pushes the first out of the stored state
    state.selector.select(state.users["shopper"], NOW + 3, rec_id="shopper.slate-c")
    stored = state.selector.user_state("shopper", NOW + 3)["v"]
    assert [slate[0] for slate in stored] == ["shopper.slate-b", "shopper.slate-c"]
    # a state written before slates were kept: impressions of its slates join with neutral logits, as before
    assert restored.selector.load_user_state("old", {}) is None and "old" not in restored.selector._served_by_user


def test_a_shopper_read_back_after_eviction_keeps_their_slates_stored():
    state, store = _partition(), InMemoryStateStore()
    state.selector.select(state.users["shopper"], NOW, rec_id="shopper.slate-a")
    _commit(state, store, checkpoint=False)
    state.selector.forget_user("shopper")  # evicted from memory: what was stored comes back with them
    assert "v" not in state.selector.user_state("shopper", NOW)
    state.selector.load_user_state("shopper", orjson.loads(asyncio.run(store.load_users(0, ["shopper"]))["shopper"]))
    assert [slate[0] for slate in state.selector.user_state("shopper", NOW)["v"]] == ["shopper.slate-a"]


def test_what_exploration_knows_about_each_shown_item_survives_a_restore():
    """The corrector's information per item x segment (how narrow Thompson sampling draws the item's score) is
    checkpointed with its weights; a checkpoint written without it loads with every item back at the prior."""
    state, store = _partition(), InMemoryStateStore()
    shown = _show(state, NOW, rec_id="shopper.slate-1")
    clicked = shown.items[1].item_id
    _apply(state, click(user="shopper", item=clicked, category=clicked.split("-")[0], action="click", ts=NOW + 5,
                        rec_id=shown.rec_id, event_id="click-after"))  # fmt: skip
    _apply(state, click(user="bg1", item="c1-i1", category="c1", action="click", ts=NOW + 1801, event_id="later"))
    items, segment = _items(shown), shown.segment
    prior = state.selector.exploration_sd
    learned = state.selector.corrector.uncertainty(items, segment, prior)
    assert (learned < prior).all()  # every shown item was labelled: a click or a skip
    _commit(state, store)

    restored = _restore(store, state.config)
    assert restored.selector.corrector.uncertainty(items, segment, prior).tolist() == learned.tolist()

    snapshot = asyncio.run(store.load(0))
    checkpoint = orjson.loads(snapshot.global_blob)
    del checkpoint["selection"]["information"]
    snapshot.global_blob = orjson.dumps(checkpoint)
    older = _restore(store, state.config, snapshot)
    assert older.selector.corrector.uncertainty(items, segment, prior).tolist() == [prior] * len(items)
    assert older.selector.corrector._weights == restored.selector.corrector._weights
