"""The storefront API against a real redis-server and a real (Tansu) broker."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kairos.agents.api import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST, create_app
from kairos.agents.embedded import start_redis
from kairos.agents.redis_store import RedisStateStore
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.store import Commit, ServingRecord
from kairos.schemas.ads import ScoredCreative
from kairos.schemas.keys import RedisKeys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NOW = time.time()


def click(user="u1", event_id="e1", **extra) -> dict:
    return {"kind": "click", "event_id": event_id, "user_id": user, "item_id": "i1", "action": "view", "ts": NOW, **extra}


def rec_payload(user: str, n_items: int = 20) -> bytes:
    items = [{"item_id": f"i{k}", "score": 1.0 / k, "rank": k, "reasons": ["test"]} for k in range(1, n_items + 1)]
    source = {"topic": "t", "partition": 0, "offset": 1, "event_id": "e", "event_ts": NOW}
    return orjson.dumps(
        {"schema_version": 1, "rec_id": f"{user}.3", "user_id": user, "items": items, "model_version": "m1",
         "state_version": 3, "source": source, "produced_at": NOW}  # fmt: skip
    )


async def write_serving(settings, url: str, users: list[str], trending: list[str] | None = None) -> None:
    store = RedisStateStore.from_url(url, RedisKeys(settings.topic_prefix, settings.consumer_group), 3600)
    serving = [ServingRecord(u, NOW, 3, rec_payload(u)) for u in users]
    await store.commit(Commit(partition=0, users={}, deleted=[], offsets={}, serving=serving))
    if trending is not None:
        await store.publish_trending(trending)
    await store.close()


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kairos")


async def test_recommendations_come_from_redis_sliced_to_n(make_settings, redis_url):
    settings = make_settings(redis_url=redis_url)
    await write_serving(settings, redis_url, ["alice"])
    app = create_app(settings)
    async with client(app) as http:
        r = await http.get("/v1/users/alice/recommendations", params={"n": 5, "slot": "pdp"})
    await app.close()
    assert r.status_code == 200
    body = r.json()
    assert body["source"] == "personal" and body["stale"] is False and body["slot"] == "pdp"
    assert [i["item_id"] for i in body["items"]] == ["i1", "i2", "i3", "i4", "i5"]
    assert body["rec_id"] == "alice.3" and r.headers["x-kairos-source"] == "personal"


async def test_unknown_user_gets_trending(make_settings, redis_url):
    settings = make_settings(redis_url=redis_url)
    await write_serving(settings, redis_url, [], trending=["t1", "t2", "t3"])
    app = create_app(settings)
    async with client(app) as http:
        r = await http.get("/v1/users/nobody/recommendations?n=2")
    await app.close()
    assert r.status_code == 200
    assert r.json()["source"] == "trending"
    assert [(i["item_id"], i["rank"]) for i in r.json()["items"]] == [("t1", 1), ("t2", 2)]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users/alice/recommendations?n=0",
        "/v1/users/alice/recommendations?n=201",
        "/v1/users/alice/recommendations?n=ten",
        "/v1/users/alice/recommendations?slot=a%20b",
        "/v1/users/" + "x" * 129 + "/recommendations",
        "/v1/users/a%0Ab/recommendations",
    ],
)
async def test_bad_parameters_are_400_with_a_reason(make_settings, redis_url, path):
    app = create_app(make_settings(redis_url=redis_url))
    async with client(app) as http:
        r = await http.get(path)
    await app.close()
    assert r.status_code == 400 and r.json()["error"].startswith("invalid")


async def test_bearer_token_guards_v1_but_not_health(make_settings, redis_url):
    settings = make_settings(redis_url=redis_url, api_token="s3cret-token")
    await write_serving(settings, redis_url, ["bob"])
    app = create_app(settings)
    async with client(app) as http:
        missing = await http.get("/v1/users/bob/recommendations")
        wrong = await http.get("/v1/users/bob/recommendations", headers={"Authorization": "Bearer nope"})
        right = await http.get("/v1/users/bob/recommendations", headers={"Authorization": "Bearer s3cret-token"})
        health = await http.get("/healthz")
    await app.close()
    assert (missing.status_code, wrong.status_code, right.status_code, health.status_code) == (401, 401, 200, 200)
    assert missing.headers["www-authenticate"].startswith("Bearer")


async def _read_topic(broker: str, topic: str, expected: int, timeout_s: float = 15.0) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_events_are_validated_and_produced_keyed_by_user(make_settings, broker, redis_url):
    settings = make_settings(redis_url=redis_url)
    await ensure_topics(settings, broker)
    app = create_app(settings)
    purchase = {"kind": "purchase", "event_id": "p1", "user_id": "carol", "order_id": "o1", "ts": NOW,
                "lines": [{"item_id": "i9", "quantity": 1, "unit_price": "3.50"}]}  # fmt: skip
    async with client(app) as http:
        one = await http.post("/v1/events", content=orjson.dumps(click("carol", "c1")))
        many = await http.post("/v1/events", content=orjson.dumps([click("dave", "c2"), purchase]))
    await app.close()
    assert one.status_code == 202 and one.json() == {"accepted": 1, "event_ids": ["c1"]}
    assert many.status_code == 202 and many.json()["accepted"] == 2
    clicks = await _read_topic(broker, settings.topics.clicks, 2)
    purchases = await _read_topic(broker, settings.topics.purchases, 1)
    assert sorted((r.key, orjson.loads(r.value)["event_id"]) for r in clicks) == [(b"carol", "c1"), (b"dave", "c2")]
    assert [(r.key, orjson.loads(r.value)["order_id"]) for r in purchases] == [(b"carol", "o1")]


async def test_invalid_events_are_refused_with_reasons_and_nothing_is_produced(make_settings, broker, redis_url):
    settings = make_settings(redis_url=redis_url)
    await ensure_topics(settings, broker)
    app = create_app(settings)
    async with client(app) as http:
        mixed = await http.post("/v1/events", content=orjson.dumps([click("erin", "ok"), click("erin", "ms", ts=NOW * 1000)]))
        garbage = await http.post("/v1/events", content=b"{not json")
        wrong_kind = await http.post("/v1/impressions", content=orjson.dumps(click()))
        too_big = await http.post("/v1/events", content=b" " * (MAX_BODY_BYTES + 1))
        too_many = await http.post("/v1/events", content=orjson.dumps([click()] * (MAX_EVENTS_PER_REQUEST + 1)))
    await app.close()
    assert mixed.status_code == 400
    assert [(e["index"], e["error_class"]) for e in mixed.json()["errors"]] == [(1, "invalid_fields")]
    assert "future" in mixed.json()["errors"][0]["reason"]
    assert garbage.status_code == 400 and garbage.json()["errors"][0]["error_class"] == "not_json"
    assert wrong_kind.status_code == 400 and wrong_kind.json()["errors"][0]["error_class"] == "wrong_topic"
    assert too_big.status_code == 413 and too_many.status_code == 413
    assert await _read_topic(broker, settings.topics.clicks, 1, timeout_s=2.0) == []


async def test_redis_away_answers_from_recent_answers_or_a_clear_503(make_settings, tmp_path):
    redis = start_redis(tmp_path)
    try:
        settings = make_settings(redis_url=redis.address)
        await write_serving(settings, redis.address, ["frank"], trending=["t1"])
        app = create_app(settings)
        async with client(app) as http:
            warm = await http.get("/v1/users/frank/recommendations")
            redis.stop()
            started = time.perf_counter()
            cached = await http.get("/v1/users/frank/recommendations")
            cached_again = await http.get("/v1/users/frank/recommendations")
            elapsed = time.perf_counter() - started
            unknown = await http.get("/v1/users/grace/recommendations")  # trending was never read: nothing to say
            ready = await http.get("/readyz")
        await app.close()
    finally:
        redis.stop()
    assert warm.status_code == 200 and warm.json()["source"] == "personal"
    assert cached.status_code == 200 and cached.json()["stale"] is True and cached.headers["x-kairos-stale"] == "1"
    assert cached.json()["items"] == warm.json()["items"] and cached_again.json()["source"] == "cache"
    assert elapsed < 1.0, "answers while Redis is away must not wait for timeouts one after another"
    assert unknown.status_code == 503 and unknown.headers["retry-after"] == "1"
    assert ready.status_code == 503 and ready.json()["redis"] is False


async def test_readyz_openapi_and_metrics(make_settings, broker, redis_url):
    settings = make_settings(redis_url=redis_url)
    app = create_app(settings)
    async with client(app) as http:
        ready = await http.get("/readyz")
        spec = await http.get("/openapi.json")
        await http.get("/v1/users/x/recommendations")
        prom = await http.get("/metrics")
        wrong_method = await http.delete("/v1/events")
    await app.close()
    assert ready.status_code == 200 and ready.json() == {"redis": True, "kafka": True, "ready": True}
    paths = spec.json()["paths"]
    assert {"/v1/users/{user_id}/recommendations", "/v1/events", "/v1/impressions", "/readyz"} <= set(paths)
    assert "ClickEvent" in spec.json()["components"]["schemas"]
    assert 'kairos_api_requests_total{route="/v1/users/{user_id}/recommendations",status="200"}' in prom.text
    assert wrong_method.status_code == 405


async def test_ad_exchange_reads_scored_creatives_with_confluent_kafka(make_settings, broker):
    """The worker does not emit ScoredCreative records yet: one is produced here with aiokafka, as the engine
    would, and read back by librdkafka (confluent-kafka), the client most ad exchanges use."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from kairos.agents.ops import scored_creative_json_schema

    settings = make_settings()
    await ensure_topics(settings, broker)
    record = ScoredCreative(request_id="r1", user_id="u1", creative_id="c1", campaign_id="k1", variant_id="c1:0",
                            pctr=0.05, bid=1.0, expected_value=0.05, clearing_price=0.6, reserve=0.01, won=True,
                            propensity=0.9, reasons=["auction:won"], produced_at=NOW)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    await producer.send_and_wait(settings.topics.ad_scores, record.model_dump_json().encode(), key=b"u1")
    await producer.stop()

    def consume() -> list:
        # An exchange would subscribe with its group; assigning partitions skips the group join (which Tansu holds
        # for half the session timeout) and reads the same bytes.
        consumer = Consumer({"bootstrap.servers": broker, "group.id": settings.consumer_group + "-exchange",
                             "enable.auto.commit": False})  # fmt: skip
        topic = settings.topics.ad_scores
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got, deadline = [], time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
        consumer.close()
        return got

    messages = await asyncio.to_thread(consume)
    assert len(messages) == 1 and messages[0].key() == b"u1"
    decoded = json.loads(messages[0].value())
    schema = scored_creative_json_schema()
    assert set(schema["required"]) <= set(decoded)
    assert set(decoded) <= set(schema["properties"]), "every field on the wire is documented in the schema"
    assert ScoredCreative.model_validate(decoded) == record
