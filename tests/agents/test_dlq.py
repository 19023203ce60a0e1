"""Bad input against a running worker subprocess: hypothesis-generated malformed events all land in the
dead-letter topic with a reason and the worker stays up; ``kairos dlq replay`` re-injects fixed dead letters."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from kairos.agents.ops import fix_ms_timestamps, replay_dead_letters
from kairos.agents.pipeline import partition_for
from kairos.agents.redis_store import RedisStateStore
from kairos.agents.topics_admin import ensure_topics
from kairos.schemas.codec import ERROR_CLASSES, InvalidEvent, decode_event
from kairos.schemas.events import MAX_EVENT_BYTES
from kairos.schemas.keys import RedisKeys

from agents_helpers import apoll_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

NOW = time.time() - 60
VALID_CLICK = {"kind": "click", "event_id": "e", "user_id": "u", "item_id": "i", "action": "view", "ts": NOW}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated_click(draw) -> bytes:
    """A valid click with one field removed, replaced by an arbitrary JSON value, or an unknown field added."""
    event = dict(VALID_CLICK)
    how = draw(st.sampled_from(["drop", "replace", "extra"]))
    name = draw(st.sampled_from(sorted(event)))
    if how == "drop":
        event.pop(name)
    elif how == "replace":
        event[name] = draw(json_values)
    else:
        event[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in event))] = draw(json_values)
    return json.dumps(event).encode()


def _invalid(raw: bytes) -> bool:
    try:
        decode_event(raw, expected_kinds=frozenset({"click"}))
    except InvalidEvent:
        return True
    return False


malformed = st.one_of(
    st.binary(max_size=200),
    # The standard library serialises integers of any size (orjson refuses > 64 bits): producers can send them too.
    json_values.map(lambda value: json.dumps(value).encode()),
    mutated_click(),
    st.just(orjson.dumps({**VALID_CLICK, "kind": "purchase"})),
    st.just(orjson.dumps({**VALID_CLICK, "ts": NOW * 1000})),
    st.just(b"x" * (MAX_EVENT_BYTES + 1)),
).filter(_invalid)


async def _dead_letters(broker: str, topic: str) -> dict[bytes, dict]:
    """key -> dead letter, everything on the topic now (fetch high watermarks, not ListOffsets: see broker notes)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata, so partitions_for_topic knows the topic
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        found: dict[bytes, dict] = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                found.update((r.key, orjson.loads(r.value)) for r in batch)
            marks = [consumer.highwater(tp) for tp in parts]
            if None not in marks and all([await consumer.position(tp) >= m for tp, m in zip(parts, marks)]):
                break
        return found
    finally:
        await consumer.stop()


def test_fuzzed_events_all_land_in_the_dead_letter_topic_and_the_worker_stays_up(make_settings, redis_url, spawn_worker, broker):
    settings = make_settings(redis_url=redis_url, partitions=2)
    asyncio.run(ensure_topics(settings, broker))
    worker = spawn_worker(settings, "fuzz")
    worker.wait_ready()
    batch_no = iter(range(10**6))
    total = {"sent": 0}

    @given(batch=st.lists(malformed, min_size=10, max_size=40))
    @hsettings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def every_malformed_event_is_dead_lettered(batch: list[bytes]) -> None:
        tag = next(batch_no)
        keys = [f"fuzz-{tag}-{k}".encode() for k in range(len(batch))]

        async def run() -> dict:
            producer = AIOKafkaProducer(bootstrap_servers=broker, max_request_size=4 * 1024 * 1024)
            await producer.start()
            await asyncio.gather(*[await producer.send(settings.topics.clicks, raw, key=key) for key, raw in zip(keys, batch)])
            await producer.stop()

            async def all_there() -> dict | None:
                found = await _dead_letters(broker, settings.topics.dead_letters)
                return found if all(k in found for k in keys) else None

            return await apoll_until(all_there, 30, "every malformed event in the dead-letter topic", 0.3)

        found = asyncio.run(run())
        total["sent"] += len(batch)
        for key, raw in zip(keys, batch):
            letter = found[key]
            assert letter["error_class"] in ERROR_CLASSES and letter["reason"]
            assert letter["topic"] == settings.topics.clicks
            assert base64.b64decode(letter["raw"]) == raw
        assert worker.process.poll() is None, f"the worker died:\n{worker.log_tail()}"

    every_malformed_event_is_dead_lettered()
    assert total["sent"] >= 60
    # Still up and still applying valid events after all that.
    user = "after-fuzz"
    good = orjson.dumps({**VALID_CLICK, "event_id": "good-1", "user_id": user})

    async def valid_event_applied() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        await producer.send_and_wait(settings.topics.clicks, good, key=user.encode())
        await producer.stop()
        store = RedisStateStore.from_url(redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group), 3600)

        async def applied() -> bool:
            return user in (await store.load(partition_for(user, 2))).users

        await apoll_until(applied, 20, "a valid event to be applied after the fuzzing")
        await store.close()

    asyncio.run(valid_event_applied())
    assert worker.process.poll() is None


async def test_dlq_replay_reinjects_fixed_dead_letters(make_settings, redis_url, spawn_worker, broker):
    settings = make_settings(redis_url=redis_url, partitions=2)
    await ensure_topics(settings, broker)
    worker = spawn_worker(settings, "replay")
    await asyncio.to_thread(worker.wait_ready)
    users = [f"ms-user-{k}" for k in range(12)]
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    for k, user in enumerate(users):  # milliseconds instead of seconds: dead-lettered, fixable
        event = {**VALID_CLICK, "event_id": f"ms-{k}", "user_id": user, "ts": NOW * 1000}
        await producer.send(settings.topics.clicks, orjson.dumps(event), key=user.encode())
    await producer.send(settings.topics.clicks, b"{broken", key=b"unfixable")
    await producer.flush()
    await producer.stop()

    async def letters_arrived() -> dict | None:
        found = await _dead_letters(broker, settings.topics.dead_letters)
        return found if len(found) == len(users) + 1 else None

    await apoll_until(letters_arrived, 30, "the dead letters")

    dry = await replay_dead_letters(settings, broker, [fix_ms_timestamps], dry_run=True)
    assert dry["would_replay"] == len(users) and dry["replayed"] == 0
    result = await replay_dead_letters(settings, broker, [fix_ms_timestamps])
    assert result["replayed"] == len(users)
    assert result["still_invalid"] == 1 and result["still_invalid_by_class"] == {"not_json": 1}
    unfixed = await replay_dead_letters(settings, broker, error_classes={"not_json"}, dry_run=True)
    assert unfixed["skipped"] == len(users) and unfixed["would_replay"] == 0

    store = RedisStateStore.from_url(redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group), 3600)

    async def all_applied() -> bool:
        for user in users:
            blob = (await store.load(partition_for(user, 2))).users.get(user)
            if blob is None or orjson.loads(blob)["n"][2] != 1:
                return False
        return True

    await apoll_until(all_applied, 30, "the replayed events to be applied once each")
    await store.close()
