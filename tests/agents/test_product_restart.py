"""The product side's state (frequency caps, the feedback join) across a restart, docs/state.md "Product state across
a restart".

* brokerless, the replay window: after a crash the records between the partition checkpoint and the user offsets
  are read again; a shopper's frequency-cap history comes back with their state and is not counted again, a click on
  an impression the checkpoint holds open is learned once, an impression shown inside the window is missing whole;
* with a real broker and Redis, a worker SIGKILLed and a new one started: a shopper capped on items before the kill
  is not recommended them after it, and a click after the restart on an item shown before it joins that impression.
"""

from __future__ import annotations

import asyncio
import copy
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from factories import T0, click, impression

from kairos.agents.pipeline import BatchPipeline, InputRecord, partition_for
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector
from kairos.engine.store import InMemoryStateStore
from kairos.schemas.codec import encode
from kairos.schemas.events import ImpressionEvent, PurchaseEvent
from kairos.schemas.topics import Topics

from agents_helpers import apoll_until, restart_settings, state_store

TOPICS = Topics()
CONFIG = EngineConfig(top_n=5)


class InputLog:
    """One partition of every input topic, as a list of records with their offsets."""

    def __init__(self) -> None:
        self.records: list[InputRecord] = []
        self.ends: dict[str, int] = {}

    def append(self, event) -> InputRecord:
        topic = (
            TOPICS.impressions if isinstance(event, ImpressionEvent)
            else TOPICS.purchases if isinstance(event, PurchaseEvent)
            else TOPICS.clicks
        )  # fmt: skip
        offset = self.ends.get(topic, 0)
        self.ends[topic] = offset + 1
        record = InputRecord(topic, 0, offset, event.user_id.encode(), encode(event), int(T0 * 1000))
        self.records.append(record)
        return record

    def since(self, offsets: dict[str, int]) -> list[InputRecord]:
        return [r for r in self.records if r.offset >= offsets.get(r.topic, 0)]


def _make_selector() -> Selector:
    return Selector(CONFIG, exploration=False, frequency_cap=2, max_per_category=10)


def _recommendations(result) -> dict[str, dict]:
    """user -> the Recommendation emitted for them by this batch."""
    out = (orjson.loads(o.value) for o in result.outputs if o.topic == TOPICS.recommendations)
    return {rec["user_id"]: rec for rec in out}


def _items(rec: dict) -> list[str]:
    return [item["item_id"] for item in rec["items"]]


def test_product_state_in_the_replay_window_is_counted_once_and_a_later_click_still_joins():
    store, log = InMemoryStateStore(), InputLog()
    live = PartitionState(0, CONFIG, _make_selector())
    pipeline = BatchPipeline(TOPICS, {0: live}, 1, CONFIG.top_n)

    def run(events, checkpoint: bool) -> dict[str, dict]:
        result = pipeline.process([log.append(event) for event in events])
        commit = live.build_commit(with_global_checkpoint=checkpoint)
        asyncio.run(store.commit(commit))
        live.committed(commit)
        return _recommendations(result)

    background = [click(user=f"bg{n % 12}", item=f"c{n % 12 % 3}-i{n % 7}", category=f"c{n % 12 % 3}", ts=T0 + n)
                  for n in range(300)]  # fmt: skip
    first = run([*background, click(user="shopper", item="c1-i0", category="c1", ts=T0 + 400)], checkpoint=True)
    s1 = first["shopper"]
    run([impression(user="shopper", items=_items(s1), rec_id=s1["rec_id"], ts=T0 + 401)], checkpoint=True)
    at_checkpoint = copy.deepcopy(live.selector.corrector._weights), live.selector.examples_learned

    # After the checkpoint, committed with the user offsets only: a click on s1 (open in the checkpoint), the slate
    # it brings shown (s2: items in both slates reach the cap of 2), a click on an item only s2 showed.
    clicked = _items(s1)[1]
    s2 = run([click(user="shopper", item=clicked, category=clicked[:2], action="click", ts=T0 + 402,
                    rec_id=s1["rec_id"])], checkpoint=False)["shopper"]  # fmt: skip
    after_click = copy.deepcopy(live.selector.corrector._weights), live.selector.examples_learned
    assert after_click[1] == at_checkpoint[1] + 1
    run([impression(user="shopper", items=_items(s2), rec_id=s2["rec_id"], ts=T0 + 403)], checkpoint=False)
    only_s2 = next(item for item in _items(s2) if item not in _items(s1))
    run([click(user="shopper", item=only_s2, category=only_s2[:2], action="click", ts=T0 + 404, rec_id=s2["rec_id"])],
        checkpoint=False)  # fmt: skip
    assert live.selector.examples_learned == at_checkpoint[1] + 2  # live, the s2 click joined s2
    both = set(_items(s1)) & set(_items(s2))
    assert both, "the two slates share no item: nothing is capped"
    counts = {item: live.selector.impressions.count("shopper", item, T0 + 405) for item in _items(s1) + _items(s2)}

    # The worker crashes; the next owner restores and reads again from the checkpoint's offsets. Twice: a second
    # crash before the next checkpoint replays the same window onto the same checkpoint.
    for _ in range(2):
        restored = PartitionState.restore(0, CONFIG, asyncio.run(store.load(0)), _make_selector)
        replay = BatchPipeline(TOPICS, {0: restored}, 1, CONFIG.top_n).process(log.since(restored.resume_offsets()))
        assert _recommendations(replay) == {} and replay.applied == 0
        selector = restored.selector
        # the frequency caps are the shopper's stored ones: the window's impressions are in them once
        assert {item: selector.impressions.count("shopper", item, T0 + 405) for item in counts} == counts
        assert all(counts[item] == 2 for item in both)
        # the join: s1 with its click, learned once; s2 was shown inside the window, so it and its click are missing
        assert list(selector.join._open) == [s1["rec_id"]]
        assert selector.join._open[s1["rec_id"]].clicked == {clicked}
        assert (selector.corrector._weights, selector.examples_learned) == after_click

    # After the restart the capped items stay out, and a click on an item shown before the crash joins its slate.
    after = BatchPipeline(TOPICS, {0: restored}, 1, CONFIG.top_n)
    other = _items(s1)[3]
    event = click(user="shopper", item=other, category=other[:2], action="click", ts=T0 + 406, rec_id=s1["rec_id"])
    rec = _recommendations(after.process([log.append(event)]))
    assert rec["shopper"]["items"] and not both & set(_items(rec["shopper"]))
    assert restored.selector.examples_learned == after_click[1] + 1
    assert restored.selector.join._open[s1["rec_id"]].clicked == {clicked, other}


# --- end to end: a real broker and Redis, a worker SIGKILLed and restarted ---

FREQUENCY_CAP = 6  # the worker's Selector default: 6 impressions of an item per shopper per day



class Recommendations:
    """Reads the recommendations topic (every partition) and finds the one an event led to."""

    def __init__(self, broker: str, topic: str, partitions: int) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=100)
        self.topic, self.partitions = topic, partitions
        self.by_event: dict[str, dict] = {}

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign([TopicPartition(self.topic, p) for p in range(self.partitions)])
        await self.consumer.seek_to_beginning()

    async def after(self, event_id: str, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while event_id not in self.by_event and time.monotonic() < deadline:
            for records in (await self.consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    rec = orjson.loads(record.value)
                    self.by_event[rec["source"]["event_id"]] = rec
        assert event_id in self.by_event, f"no recommendation after event {event_id}"
        return self.by_event[event_id]

    async def stop(self) -> None:
        await self.consumer.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_frequency_caps_and_open_impressions_survive_a_worker_killed_and_restarted(
    make_settings, redis_url, spawn_worker, broker, tmp_path
):
    settings = restart_settings(make_settings, redis_url, tmp_path)
    topics = settings.topics
    counts = await ensure_topics(settings, broker)
    store = state_store(settings)
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    recommendations = Recommendations(broker, topics.recommendations, counts[topics.recommendations])
    await recommendations.start()
    ends: dict[tuple[str, int], int] = {}
    shopper = "shopper-1"
    partition = partition_for(shopper, settings.partitions)

    async def send(event) -> None:
        topic = topics.impressions if isinstance(event, ImpressionEvent) else topics.clicks
        meta = await producer.send_and_wait(topic, encode(event), key=event.user_id.encode())
        ends[(topic, meta.partition)] = max(ends.get((topic, meta.partition), 0), meta.offset + 1)

    async def committed() -> bool:
        """Every record sent is in the user offsets and the checkpoint (written with every commit here)."""
        for (topic, p), end in ends.items():
            snapshot = await store.load(p, with_users=False)
            if min(snapshot.offsets.get(topic, 0), snapshot.global_offsets.get(topic, 0)) < end:
                return False
        return True

    async def selection_state() -> dict:
        return orjson.loads((await store.load(partition, with_users=False)).global_blob)["selection"]

    try:
        first = spawn_worker(settings, "first")
        first.wait_ready()
        for n in range(240):  # background shoppers: 3 categories of 12 items
            await send(click(user=f"bg{n % 24}", item=f"c{n % 3}-i{n // 3 % 12}", category=f"c{n % 3}", ts=T0 + n))
        await send(click(user=shopper, item="c1-i0", category="c1", ts=T0 + 300, event_id="view-1"))
        slate = await recommendations.after("view-1")
        shown = [item["item_id"] for item in slate["items"]]
        for n in range(FREQUENCY_CAP):  # the storefront shows the slate 6 times: every item of it reaches the cap
            await send(impression(user=shopper, items=shown, rec_id=slate["rec_id"], ts=T0 + 301 + n))
        await send(click(user=shopper, item="c1-i1", category="c1", ts=T0 + 310, event_id="view-2"))
        capped_live = await recommendations.after("view-2")
        assert capped_live["items"] and not set(shown) & {i["item_id"] for i in capped_live["items"]}
        await apoll_until(committed, 30, "the first worker to commit the impressions")
        before = await selection_state()
        stored = orjson.loads((await store.load_users(partition, [shopper]))[shopper])
        assert sorted(stored["f"]["k"]) == sorted(shown) and set(stored["f"]["n"]) == {FREQUENCY_CAP}
        assert before["join"]["rec"].count(slate["rec_id"]) == 1

        first.kill()
        second = spawn_worker(settings, "second")
        second.wait_ready()
        target = shown[-1]  # shown before the kill, never clicked
        await send(click(user=shopper, item=target, category=target[:2], action="click", ts=T0 + 320,
                         rec_id=slate["rec_id"], event_id="click-after-restart"))  # fmt: skip
        after_restart = await recommendations.after("click-after-restart")
        await apoll_until(committed, 30, "the restarted worker to commit the click")
        after = await selection_state()

        # the restarted worker keeps the shopper's caps: nothing of the 6-times-shown slate is recommended again
        assert after_restart["items"] and not set(shown) & {i["item_id"] for i in after_restart["items"]}
        # and the click joined the slate shown before the kill: one example learned, for that item in that segment
        index = after["join"]["rec"].index(slate["rec_id"])
        segment = after["join"]["segment"][index]
        assert after["join"]["clicked"] == {slate["rec_id"]: [target]}
        assert after["examples"] == before["examples"] + 1
        assert after["corrector"][f"is:{target}|{segment}"] > before["corrector"].get(f"is:{target}|{segment}", 0.0)
    finally:
        await recommendations.stop()
        await producer.stop()
        await store.close()
