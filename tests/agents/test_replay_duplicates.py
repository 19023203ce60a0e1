"""A redelivered copy of an event inside the replay window is not applied to the global state twice.

Live, the second copy of an event (a producer retry, a storefront sending twice) is skipped because its shopper
has applied it. After a crash the records between the partition checkpoint and the user offsets are replayed into
the global state only, and the shopper's stored state then holds the event whichever copy is read: the replay
must apply exactly the copy that was applied live (the record it came from is stored with the event id), or the
popularity, co-visits, online ranker and discovery counts drift from what the uninterrupted worker holds.
Brokerless (pure logic); the restart with a real broker and Redis is in test_product_restart.py.
"""

from __future__ import annotations

import asyncio

import orjson
from factories import T0, click, purchase
from test_product_restart import TOPICS, InputLog

from kairos.agents.pipeline import BatchPipeline, InputRecord
from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector
from kairos.engine.state import UserInterest
from kairos.engine.store import InMemoryStateStore

CONFIG = EngineConfig(top_n=5)


def _selector() -> Selector:
    return Selector(CONFIG, exploration=False)


def _global(state: PartitionState) -> dict:
    """What the global checkpoint holds that the replay rebuilds exactly: the global model's popularity, trends,
    category tops, catalogue and event count, and the selection state (corrector, feedback join, discovery, ads).
    Not compared (docs/state.md, "The replay window"): the co-visit rows, which the replay links to the shopper's
    recent items at the window's end rather than those before each event, and the online River ranker, which
    learns from the pool a shopper acted from and is not replayed."""
    blob = orjson.loads(state.global_blob())
    model = {key: value for key, value in blob["model"].items() if key != "nb"}
    return {"model": model, "selection": blob["selection"]}


def test_a_copy_of_an_event_in_the_replay_window_is_replayed_once():
    store, log = InMemoryStateStore(), InputLog()
    live = PartitionState(0, CONFIG, _selector())
    pipeline = BatchPipeline(TOPICS, {0: live}, 1, CONFIG.top_n)

    def run(events, checkpoint: bool):
        result = pipeline.process([log.append(event) for event in events])
        commit = live.build_commit(with_global_checkpoint=checkpoint)
        asyncio.run(store.commit(commit))
        live.committed(commit)
        return result

    background = [click(user=f"bg{n % 9}", item=f"c{n % 3}-i{n % 7}", category=f"c{n % 3}", ts=T0 + n)
                  for n in range(120)]  # fmt: skip
    straddling = click(user="shopper", item="c1-i2", category="c1", action="add_to_cart", ts=T0 + 200)
    run([*background, straddling], checkpoint=True)

    # After the checkpoint: the straddling event again (its first copy is in the checkpoint), then an event and its
    # copy both inside the window, with other events between them. Committed with the user offsets only.
    twice = click(user="shopper", item="c2-i4", category="c2", action="add_to_cart", ts=T0 + 202)
    window = [
        straddling,
        click(user="bg1", item="c1-i2", category="c1", ts=T0 + 201),
        twice,
        click(user="shopper", item="c0-i1", category="c0", ts=T0 + 203),
        twice,
        click(user="bg2", item="c2-i4", category="c2", action="add_to_cart", ts=T0 + 204),
    ]
    result = run(window, checkpoint=False)
    assert result.duplicates == 2 and result.applied == 4  # live: each copy skipped
    expected = _global(live)

    # Crash and restore, twice (a second crash before the next checkpoint replays the same window again).
    for _ in range(2):
        restored = PartitionState.restore(0, CONFIG, asyncio.run(store.load(0)), _selector)
        replayed = BatchPipeline(TOPICS, {0: restored}, 1, CONFIG.top_n).process(log.since(restored.resume_offsets()))
        assert replayed.applied == 0 and replayed.duplicates == 2
        assert _global(restored) == expected


def test_the_applied_record_is_stored_with_the_event_id():
    user = UserInterest.new("u", CONFIG)
    event = purchase(user="u", ts=T0)
    user.apply(event, source=17 * 8 + 1)
    assert user.applied_source(event.event_id) == 17 * 8 + 1
    restored = UserInterest.from_state("u", orjson.loads(orjson.dumps(user.to_state())), CONFIG)
    assert restored.applied_source(event.event_id) == 17 * 8 + 1
    assert restored.applied_source("never seen") is None
    # a state written before sources were stored: the event is known, its record is not
    old = user.to_state()
    del old["so"]
    assert UserInterest.from_state("u", old, CONFIG).applied_source(event.event_id) == -1


def test_the_same_offset_in_another_topic_is_another_record():
    pipeline = BatchPipeline(TOPICS, {}, 1, CONFIG.top_n)
    clicks, rekeyed = (InputRecord(topic, 0, 42, b"u", b"", 0) for topic in (TOPICS.clicks, TOPICS.rekeyed))
    assert pipeline.record_source(clicks) != pipeline.record_source(rekeyed)
    assert pipeline.record_source(clicks) // 8 == pipeline.record_source(rekeyed) // 8 == 42


def test_the_same_offset_in_another_input_partition_of_the_state_is_another_record():
    """Input topics with more partitions than states (agents/assignor.py): partitions 1, 5 and 9 of one topic all
    feed state 1, and their offsets are counted separately, so the record an event was applied from must say which.
    The number does not depend on how many input partitions the topic has, and the one numbered like the state
    keeps the number stored before input partitions were decoupled."""
    pipeline = BatchPipeline(TOPICS, {}, 4, CONFIG.top_n)
    own = InputRecord(TOPICS.clicks, 1, 42, b"u", b"", 0)
    others = [InputRecord(TOPICS.clicks, 1, 42, b"u", b"", 0, p) for p in (5, 9)]
    sources = {pipeline.record_source(r) for r in (own, *others)}
    assert len(sources) == 3
    assert pipeline.record_source(own) == 42 * 8 + 0
    # the first form stays under the flag bit for any offset a partition reaches (2^45 records and more)
    huge = InputRecord(TOPICS.clicks, 1, 2**45, b"u", b"", 0)
    assert pipeline.record_source(huge) < 2**62 <= min(pipeline.record_source(r) for r in others)
    assert (own.stream, others[0].stream) == (TOPICS.clicks, f"{TOPICS.clicks}#5")
    assert (own.kafka_partition, others[0].kafka_partition) == (1, 5)
