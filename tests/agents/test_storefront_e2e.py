"""End to end as a storefront sees it: a plain Kafka client (confluent-kafka, not Faust/aiokafka) produces clicks,
purchases and garbage; recommendations are read back from the output topic and from Redis."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from factories import T0, click, purchase

from kairos.agents.runtime import Services, running_worker, wait_for
from kairos.agents.settings import Settings
from kairos.schemas.codec import encode
from kairos.schemas.keys import RedisKeys
from kairos.schemas.outputs import DeadLetter, Recommendation

pytestmark = pytest.mark.integration

MALFORMED = [b"{not json", b'{"kind":"click","user_id":"shopper","ts":1700000000}', b'{"kind":"purchase","event_id":"x",'
             b'"user_id":"shopper","order_id":"o","ts":1700000000,"lines":[{"item_id":"a","quantity":1,"unit_price":-5}]}']  # fmt: skip


def _storefront_events(rng: random.Random):
    """Background shoppers loyal to one category each, then our shopper: carts in c3, then buys two of them."""
    events = []
    for n in range(1500):
        uid = f"bg{rng.randrange(50)}"
        cat = int(uid[2:]) % 5
        events.append(click(user=uid, item=f"c{cat}-i{rng.randrange(15)}", category=f"c{cat}", ts=T0 + n))
    shopper = [click(user="shopper", item=f"c3-i{n}", category="c3", action="add_to_cart", ts=T0 + 2000 + n) for n in range(5)]
    shopper.append(purchase(user="shopper", items=[("c3-i1", "c3", 4.0), ("c3-i2", "c3", 6.0)], ts=T0 + 2100))
    shopper.append(click(user="shopper", item="c3-i4", category="c3", ts=T0 + 2200))
    return events, shopper


def _produce(bootstrap: str, settings: Settings, events, malformed=()):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for event in events:
        topic = settings.topics.purchases if event.kind == "purchase" else settings.topics.clicks
        producer.produce(topic, encode(event), key=event.user_id.encode())
    for raw in malformed:
        producer.produce(settings.topics.clicks, raw, key=b"shopper")
    assert producer.flush(15) == 0


def _consume_all(bootstrap: str, topic: str, at_least: int, timeout_s: float = 30.0) -> list:
    """Everything on the topic: reads until at least ``at_least`` records arrived and then 2 s of silence."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False})
    # assign() rather than subscribe(): a reader needs no group, and Tansu holds JoinGroup for half the session timeout
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    records, deadline, last_seen = [], time.monotonic() + timeout_s, time.monotonic()
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            records.append(msg)
            last_seen = time.monotonic()
        elif len(records) >= at_least and time.monotonic() - last_seen > 2.0:
            break
    consumer.close()
    return records


def test_storefront_round_trip(kafka_broker, redis_server):
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    # No uniformly random slates (epsilon 0): one in twenty recommendations is one by design, and this test reads
    # the ranking of the shopper's latest recommendation (Thompson sampling on the scores stays on).
    settings = Settings(topic_prefix=prefix, consumer_group=f"{prefix}-g", partitions=3, session_timeout_ms=6000,
                        exploration_epsilon=0.0)
    svc = Services(kafka_broker, redis_server, False, False)
    background, shopper = _storefront_events(random.Random(7))

    async def scenario():
        async with running_worker(settings, svc) as worker:
            _produce(kafka_broker, settings, background)
            assert await wait_for(lambda: worker.stats["events"] >= len(background), 60)
            _produce(kafka_broker, settings, shopper[:3], malformed=MALFORMED)
            _produce(kafka_broker, settings, shopper[3:])
            _produce_ad_requests(kafka_broker, settings, 3)
            # every good event is applied (some arrive twice: once direct-or-misrouted, once re-keyed)
            await wait_for(
                lambda: worker.stats["dead_letters"] >= 3 and _shopper_version(worker) == len(shopper) and worker.stats["ads"] >= 3, 60
            )
            return dict(worker.stats), _shopper_version(worker)

    stats, version = asyncio.run(scenario())
    assert version == len(shopper), "good events after malformed ones must keep flowing"
    assert stats["dead_letters"] == 3
    assert stats["rekeyed"] > 0, "librdkafka's default partitioner differs from murmur2: events must be re-keyed"

    recs = [Recommendation.model_validate_json(m.value()) for m in _consume_all(kafka_broker, settings.topics.recommendations, 1)]
    mine = [r for r in recs if r.user_id == "shopper"]
    assert mine, "no recommendation for the shopper on the output topic"
    latest = max(mine, key=lambda r: r.state_version)
    assert latest.state_version == len(shopper)
    top = [item.item_id for item in latest.items]
    assert not {"c3-i1", "c3-i2"} & set(top), f"purchased items recommended: {top}"
    assert sum(item.startswith("c3-") for item in top[:5]) >= 3, f"favourite category not ranked up: {top}"
    assert latest.source.topic.startswith(prefix) and latest.source.event_id in {e.event_id for e in shopper}

    client = redis.Redis.from_url(redis_server)
    stored = client.hgetall(RedisKeys(prefix, settings.consumer_group).serving("shopper"))
    assert orjson.loads(stored[b"rec"])["rec_id"] == latest.rec_id
    assert float(stored[b"ts"]) == max(e.ts for e in shopper)  # the newest event time the state contains
    assert 0 < client.ttl(RedisKeys(prefix, settings.consumer_group).serving("shopper")) <= settings.serving_ttl_s

    letters = [DeadLetter.model_validate_json(m.value()) for m in _consume_all(kafka_broker, settings.topics.dead_letters, 3)]
    assert sorted(letter.error_class for letter in letters) == ["invalid_fields", "not_json", "wrong_topic"]
    assert {letter.raw for letter in letters} == set(MALFORMED)
    assert all(letter.reason and letter.topic == settings.topics.clicks for letter in letters)


def _shopper_version(worker) -> int:
    for state in worker.partitions.values():
        user = state.users.get("shopper")
        if user is not None:
            return user.version
    return 0


def _produce_ad_requests(bootstrap: str, settings: Settings, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for k in range(n):
        request = {"request_id": f"ad-{k}", "user_id": "shopper", "slot": "sidebar", "ts": T0 + 2300 + k}
        producer.produce(settings.topics.ad_requests, orjson.dumps(request), key=b"shopper")
    assert producer.flush(15) == 0


def test_ad_exchange_reads_scored_creatives(kafka_broker, redis_server):
    """An ad exchange sends requests and reads ScoredCreative records with a non-Faust client."""
    from kairos.schemas.ads import ScoredCreative

    prefix = f"ads{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_prefix=prefix, consumer_group=f"{prefix}-g", partitions=2, session_timeout_ms=6000)
    svc = Services(kafka_broker, redis_server, False, False)

    async def scenario():
        async with running_worker(settings, svc) as worker:
            _produce_ad_requests(kafka_broker, settings, 5)
            assert await wait_for(lambda: worker.stats["ads"] >= 5, 60)

    asyncio.run(scenario())
    records = _consume_all(kafka_broker, settings.topics.ad_scores, 5)
    scored = [ScoredCreative.model_validate_json(m.value()) for m in records]
    assert sorted(s.request_id for s in scored) == [f"ad-{k}" for k in range(5)]
    for s in scored:
        assert s.won and 0 < s.pctr < 1 and 0 < s.propensity <= 1
        assert s.reserve <= s.expected_value and s.clearing_price <= s.bid
        assert s.expected_value == pytest.approx(s.pctr * s.bid, rel=1e-3)
