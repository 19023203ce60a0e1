"""Shared discovery (docs/state.md): every partition's discovery model learns every order, each exactly once.

* brokerless, the pipeline: an applied order is published with the record it came from; another partition learns
  it from that record, the source partition does not learn it twice, a record read again (a reader rewound) or
  published again (a source restarted) is skipped, clicks and returns publish nothing, a malformed record is
  dead-lettered once;
* with a real broker and Redis, a worker SIGKILLed and a new one started: each partition's checkpoint holds the
  other partition's orders once, after the restart too, including a record the source published twice.
"""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from factories import T0, click, purchase

from kairos.agents.pipeline import BatchPipeline, BatchResult, InputRecord, partition_for
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector
from kairos.schemas.codec import encode
from kairos.schemas.events import PurchaseEvent
from kairos.schemas.outputs import DiscoveryOrder
from kairos.schemas.topics import Topics

from agents_helpers import apoll_until, restart_settings, state_store

TOPICS = Topics()
CONFIG = EngineConfig(top_n=5)


def _user_on(partition: int, partitions: int = 2, prefix: str = "u") -> str:
    return next(f"{prefix}{n}" for n in range(1000) if partition_for(f"{prefix}{n}", partitions) == partition)


def _record(event, partition: int, offset: int) -> InputRecord:
    topic = TOPICS.purchases if isinstance(event, PurchaseEvent) else TOPICS.clicks
    return InputRecord(topic, partition, offset, event.user_id.encode(), encode(event), int(T0 * 1000))


def _published(result: BatchResult, start_offset: int = 0) -> list[InputRecord]:
    """The batch's discovery records as a reader gets them back (all on discovery partition 0 here)."""
    values = [out for out in result.outputs if out.topic == TOPICS.discovery]
    return [InputRecord(TOPICS.discovery, 0, start_offset + n, out.key, out.value, 0) for n, out in enumerate(values)]


def test_an_order_reaches_the_other_partition_once_and_its_own_partition_only_once():
    states = {p: PartitionState(p, CONFIG, Selector(CONFIG, exploration=False)) for p in (0, 1)}
    pipeline = BatchPipeline(TOPICS, states, 2, CONFIG.top_n, share_discovery=True)
    buyer = _user_on(0)
    first = pipeline.process([
        _record(purchase(user=buyer, items=[("staple", "c", 1.0)], ts=T0), 0, 0),
        _record(click(user=buyer, item="x", ts=T0 + 1), 0, 0),
        _record(purchase(user=buyer, items=[("found", "c", 1.0), ("staple", "c", 1.0)], ts=T0 + 2), 0, 1),
        _record(purchase(user=buyer, items=[("found", "c", 1.0)], ts=T0 + 3, is_return=True), 0, 2),
    ])  # fmt: skip
    records = _published(first)
    assert len(records) == 2  # the two orders; the click and the return publish nothing
    for record in records:  # the record as documented (schemas/jsonschema/discovery_order.v1.json)
        DiscoveryOrder.model_validate_json(record.value)
    second = orjson.loads(records[1].value)
    assert second["source"] == {"partition": 0, "topic": TOPICS.purchases, "offset": 1}
    assert second["order"]["known"] == ["staple"] and second["order"]["previous"] == ["staple"]

    result = BatchResult()
    assert pipeline.apply_peer_orders(records, result) == {0, 1}  # both read positions moved
    own, other = (states[p].selector.recommender.discovery for p in (0, 1))
    assert result.peer_orders == 2
    assert other.orders == own.orders == {"staple": 2.0, "found": 1.0}
    assert set(other.links["found"]) == {"staple"} and other.discovered_now.get("found", T0 + 3) > 0.99
    assert own.peer_positions == other.peer_positions == {0: 2}

    again = BatchResult()
    pipeline.apply_peer_orders(records, again)  # read again (a reader rewound for a newly owned partition)
    republished = [InputRecord(r.topic, r.partition, r.offset + 2, r.key, r.value, 0) for r in records]
    pipeline.apply_peer_orders(republished, again)  # published again by a source that restarted
    assert again.peer_orders == 0 and other.orders == {"staple": 2.0, "found": 1.0}
    assert other.peer_positions == {0: 4} and other.peer_sources == {f"0:{TOPICS.purchases}": [0, 1]}


def test_the_other_partition_learns_the_products_of_an_order_for_its_catalog_only():
    """What discovery may now recommend in partition 1 has a name (copy), a category and a price there; what
    partition 1 knew of a product from its own shoppers stays; popularity and co-occurrence are not learned."""
    config = EngineConfig(top_n=5, max_items=3)
    states = {p: PartitionState(p, config, Selector(config, exploration=False)) for p in (0, 1)}
    pipeline = BatchPipeline(TOPICS, states, 2, config.top_n, share_discovery=True)
    pipeline.process([_record(click(user=_user_on(1), item="staple", category="own", ts=T0), 1, 0)])
    order = purchase(user=_user_on(0), items=[("found", "c", 2.5), ("staple", "c", 1.0), ("third", "c", 4.0),
                                             ("fourth", "c", 5.0)], ts=T0 + 1)  # fmt: skip
    records = _published(pipeline.process([_record(order, 0, 0)]))
    assert orjson.loads(records[0].value)["order"]["details"][0] == ["found", "c", 2.5]
    pipeline.apply_peer_orders(records, BatchResult())

    model = states[1].selector.model
    found, staple = model.catalog["found"], model.catalog["staple"]
    assert (found.name, found.category_id, found.price) == ("name of found", "c", 2.5)
    assert staple.category_id == "own" and staple.name == "name of staple"  # its own category kept, its name filled
    assert "fourth" not in model.catalog and len(model.catalog) == 3  # full (max_items 3): nothing forgotten for it
    assert model.popular.get("found", T0 + 1) == 0.0 and "found" not in model.neighbours
    assert states[1].selector.recommender.discovery.orders["found"] == 1.0


def test_a_malformed_discovery_record_is_dead_lettered_once_and_skipped():
    states = {p: PartitionState(p, CONFIG, Selector(CONFIG, exploration=False)) for p in (0, 1)}
    pipeline = BatchPipeline(TOPICS, states, 2, CONFIG.top_n, share_discovery=True)
    bad = [
        InputRecord(TOPICS.discovery, 1, 0, b"k", b"{not json", 0),
        InputRecord(TOPICS.discovery, 1, 1, b"k", orjson.dumps({"source": {"partition": 1}, "order": {}}), 0),
        InputRecord(TOPICS.discovery, 3, 0, b"k", b"[]", 0),  # a partition nobody here owns: not ours to report
    ]
    result = BatchResult()
    pipeline.apply_peer_orders(bad, result)
    letters = [orjson.loads(out.value) for out in result.outputs if out.topic == TOPICS.dead_letters]
    assert [(letter["partition"], letter["offset"]) for letter in letters] == [(1, 0), (1, 1)]
    assert {letter["error_class"] for letter in letters} == {"invalid_peer_order"}
    assert "not JSON" in letters[0]["reason"] and "KeyError" in letters[1]["reason"]
    assert states[0].selector.recommender.discovery.peer_positions == {1: 2, 3: 1}
    assert result.peer_orders == 0 and not states[0].selector.recommender.discovery.orders


def test_without_shared_discovery_nothing_is_published():
    states = {0: PartitionState(0, CONFIG, Selector(CONFIG, exploration=False))}
    pipeline = BatchPipeline(TOPICS, states, 1, CONFIG.top_n)
    result = pipeline.process([_record(purchase(user="u", items=[("a", "c", 1.0)], ts=T0), 0, 0)])
    assert result.applied == 1 and not [out for out in result.outputs if out.topic == TOPICS.discovery]


# --- end to end: a real broker and Redis, a worker SIGKILLed and restarted ---


@pytest.mark.integration
@pytest.mark.timeout(150)
async def test_every_partition_learns_every_order_once_across_a_worker_restart(
    make_settings, redis_url, spawn_worker, broker, tmp_path
):
    settings = restart_settings(make_settings, redis_url, tmp_path)
    topics = settings.topics
    counts = await ensure_topics(settings, broker)
    assert counts[topics.discovery] == settings.partitions
    store = state_store(settings)
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    buyers = {p: _user_on(p, settings.partitions, prefix="shopper-") for p in (0, 1)}

    async def order(partition: int, items: list[str], ts: float) -> None:
        event = purchase(user=buyers[partition], items=[(i, "c", 1.0) for i in items], ts=ts)
        await producer.send_and_wait(topics.purchases, encode(event), key=event.user_id.encode())

    async def discovery(partition: int) -> dict:
        blob = (await store.load(partition, with_users=False)).global_blob
        return orjson.loads(blob)["selection"]["discovery"] if blob else {}

    async def both_know(expected: dict[str, float]):
        states = [await discovery(p) for p in (0, 1)]
        return states if all(state.get("orders") == expected for state in states) else None

    try:
        first = spawn_worker(settings, "first")
        first.wait_ready()
        await order(0, ["a0", "b0"], T0)
        await order(1, ["a1"], T0 + 1)
        await order(1, ["b1", "a0"], T0 + 2)
        learned = {"a0": 2.0, "b0": 1.0, "a1": 1.0, "b1": 1.0}
        zero, one = await apoll_until(lambda: both_know(learned), 40, "both checkpoints to hold every order")
        assert zero["peer_sources"] == {f"1:{topics.purchases}": [0, 1]} and one["peer_sources"] == {f"0:{topics.purchases}": [0]}
        first.kill()

        # What a source that restarted from its checkpoint does: publish an order it had published already.
        reader = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        await reader.start()
        try:
            tp = TopicPartition(topics.discovery, partition_for(buyers[1], settings.partitions))
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            published = [r for batch in (await reader.getmany(timeout_ms=5000)).values() for r in batch]
        finally:
            await reader.stop()
        assert published, "the orders of partition 1's shopper are on the discovery topic"
        await producer.send_and_wait(topics.discovery, published[0].value, key=published[0].key, partition=tp.partition)

        second = spawn_worker(settings, "second")
        second.wait_ready()
        await order(0, ["c0"], T0 + 3)
        after = {**learned, "c0": 1.0}
        zero, one = await apoll_until(lambda: both_know(after), 40, "both checkpoints to hold the order after the restart")
        assert one["peer_sources"] == {f"0:{topics.purchases}": [0, 1]}  # partition 0's two orders
        assert zero["peer_positions"] == [[0, 2], [1, 3]]  # every record read, the re-published one included
    finally:
        await producer.stop()
        await store.close()


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_worker_learns_each_other_partitions_order_once_and_reports_its_discovery_lag(
    make_settings, redis_url, broker
):
    """In process, one worker owning both partitions: every order is learned by the one partition that did not
    apply it (no more, no less), and ``kairos_consumer_lag`` for the discovery topic comes down to 0."""
    from prometheus_client import REGISTRY
    from test_faults import store_for, worker_in_process

    settings = make_settings(redis_url=redis_url, partitions=2, commit_interval_ms=0)
    topics = settings.topics
    store = store_for(settings)
    async with worker_in_process(settings, broker, store) as (worker, _task, producer):
        orders = 0
        for n in range(24):
            user = f"buyer{n % 6}"
            event = purchase(user=user, items=[(f"i{n % 5}", "c", 1.0), (f"j{n % 3}", "c", 1.0)], ts=T0 + n)
            await producer.send_and_wait(topics.purchases, encode(event), key=user.encode())
            orders += 1

        async def all_learned() -> bool:
            return worker.stats["peer_orders"] >= orders

        await apoll_until(all_learned, 30, "the worker to learn every order in the other partition")

        def discovery_lag() -> list[float | None]:
            return [REGISTRY.get_sample_value("kairos_consumer_lag", {"topic": topics.discovery, "partition": str(p)})
                    for p in range(2)]  # fmt: skip

        async def caught_up() -> bool:
            return discovery_lag() == [0.0, 0.0]

        await apoll_until(caught_up, 10, "the discovery lag to be reported as 0")
        assert worker.stats["peer_orders"] == orders
        models = [worker.partitions[p].selector.recommender.discovery for p in (0, 1)]
        assert models[0].orders == models[1].orders and sum(models[0].orders.values()) == 2 * orders
    await store.close()
