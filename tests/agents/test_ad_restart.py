"""The ad path's state (arm posteriors, pacing spend, frequency caps, requests open for a click) across a restart.

Two views of one contract (docs/state.md, "Ad state across a restart"):

* brokerless, the replay window itself: records between the partition's global checkpoint and its user offsets are
  read again after a crash; a click on a request the checkpoint holds open is credited once, the window's own ad
  requests are not answered again;
* with a real broker and Redis, a worker SIGKILLed and a new one started: the posteriors it restores are the ones
  the first worker learned, and a click on a request the first worker served credits that request's variant.
"""

from __future__ import annotations

import asyncio
import copy
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from factories import T0, click

from kairos.agents.pipeline import BatchPipeline, InputRecord, partition_for
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.ads import AdSelector
from kairos.engine.config import EngineConfig
from kairos.engine.creatives import builtin_inventory
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector
from kairos.engine.store import InMemoryStateStore
from kairos.schemas.ads import ScoredCreative
from kairos.schemas.codec import encode
from kairos.schemas.topics import Topics

from agents_helpers import apoll_until, restart_settings, state_store

TOPICS = Topics()
CONFIG = EngineConfig()
INVENTORY = builtin_inventory()


def _arms(ads: AdSelector) -> dict:
    """creative -> variant -> (alpha, beta, impressions, clicks)."""
    return {c: {v: (a.alpha, a.beta, a.impressions, a.clicks) for v, a in s._arms.items()} for c, s in ads.samplers.items()}


def _clicked(arms: dict, creative_id: str, variant_id: str, times: int = 1) -> dict:
    """``arms`` with ``times`` clicks more on one arm."""
    arms = copy.deepcopy(arms)
    alpha, beta, impressions, clicks = arms[creative_id][variant_id]
    arms[creative_id][variant_id] = (alpha + times, beta, impressions + times, clicks + times)
    return arms


class InputLog:
    """One partition of every input topic, as a list of records with their offsets."""

    def __init__(self) -> None:
        self.records: list[InputRecord] = []
        self.ends: dict[str, int] = {}

    def _append(self, topic: str, user_id: str, value: bytes) -> InputRecord:
        offset = self.ends.get(topic, 0)
        self.ends[topic] = offset + 1
        record = InputRecord(topic, 0, offset, user_id.encode(), value, int(T0 * 1000))
        self.records.append(record)
        return record

    def ad_request(self, request_id: str, user_id: str, ts: float) -> InputRecord:
        request = {"request_id": request_id, "user_id": user_id, "slot": "home_banner", "ts": ts}
        return self._append(TOPICS.ad_requests, user_id, orjson.dumps(request))

    def ad_click(self, decision: dict, ts: float) -> InputRecord:
        event = click(user=decision["user_id"], item=decision["creative_id"], action="click",
                      rec_id=decision["request_id"], ts=ts)  # fmt: skip
        return self._append(TOPICS.clicks, decision["user_id"], encode(event))

    def since(self, offsets: dict[str, int]) -> list[InputRecord]:
        return [r for r in self.records if r.offset >= offsets.get(r.topic, 0)]


def _make_selector() -> Selector:
    return Selector(CONFIG, ads=AdSelector(INVENTORY, reserve_ev=0.0001))


def _decisions(result) -> dict[str, dict]:
    """request id -> the ScoredCreative emitted, validated against the published record."""
    out = [orjson.loads(o.value) for o in result.outputs if o.topic == TOPICS.ad_scores]
    for record in out:
        ScoredCreative.model_validate(record)
    return {record["request_id"]: record for record in out}


def test_ad_feedback_in_the_replay_window_is_applied_once_and_requests_are_not_answered_again():
    store, log = InMemoryStateStore(), InputLog()
    live = PartitionState(0, CONFIG, _make_selector())
    pipeline = BatchPipeline(TOPICS, {0: live}, 1, 5)

    def run(records, checkpoint: bool):
        result = pipeline.process(records)
        commit = live.build_commit(with_global_checkpoint=checkpoint)
        asyncio.run(store.commit(commit))
        live.committed(commit)
        return result

    served = _decisions(run([log.ad_request(f"r{n}", f"u{n}", T0 + n) for n in range(8)], checkpoint=True))
    assert len(served) == 8
    for record in served.values():  # the exchange gets the text of the variant it is told about (item 2)
        variant = next(v for v in INVENTORY.creatives[record["creative_id"]].variants if v.variant_id == record["variant_id"])
        assert record["headline"] == variant.headline
    at_checkpoint = _arms(live.selector.ads)

    # After the checkpoint, committed with the user offsets only: a click on r0 (open in the checkpoint), two more
    # requests, a click on r8 (served after the checkpoint).
    first = run([log.ad_click(served["r0"], T0 + 20), log.ad_request("r8", "u8", T0 + 21),
                 log.ad_request("r9", "u9", T0 + 22)], checkpoint=False)  # fmt: skip
    served |= _decisions(first)
    run([log.ad_click(served["r8"], T0 + 30)], checkpoint=False)
    r0, r8 = served["r0"], served["r8"]
    uninterrupted = _clicked(_clicked(at_checkpoint, r0["creative_id"], r0["variant_id"]), r8["creative_id"], r8["variant_id"])
    assert _arms(live.selector.ads) == uninterrupted

    # The worker crashes; the next owner restores and reads again from the checkpoint's offsets. Twice: a second
    # crash before the next checkpoint replays the same window onto the same checkpoint.
    for _ in range(2):
        restored = PartitionState.restore(0, CONFIG, asyncio.run(store.load(0)), _make_selector)
        replay = BatchPipeline(TOPICS, {0: restored}, 1, 5).process(log.since(restored.resume_offsets()))
        assert _decisions(replay) == {}, "a request answered before the crash was answered again"
        ads = restored.selector.ads
        # r0's click counted once; r8 and r9 were decided after the checkpoint: neither their impressions nor r8's
        # click are in the restored posteriors (the observation is missing whole, not as an unclicked impression).
        assert _arms(ads) == _clicked(at_checkpoint, r0["creative_id"], r0["variant_id"])
        assert list(ads.served) == [f"r{n}" for n in range(1, 8)]

    # A click after the restart on a request served before it credits the variant that request showed.
    r5 = served["r5"]
    after = BatchPipeline(TOPICS, {0: restored}, 1, 5)
    after.process([log.ad_click(r5, T0 + 40)])
    expected = _clicked(_clicked(at_checkpoint, r0["creative_id"], r0["variant_id"]), r5["creative_id"], r5["variant_id"])
    assert _arms(restored.selector.ads) == expected


# --- end to end: a real broker and Redis, a worker SIGKILLed and restarted ---



async def _read(broker: str, topic: str, partitions: int, count: int, timeout_s: float = 20.0) -> list[dict]:
    """The first ``count`` records of ``topic`` (every partition), decoded."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        values: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(values) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                values.extend(orjson.loads(r.value) for r in records)
        return values
    finally:
        await consumer.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_variant_posteriors_survive_a_worker_killed_and_restarted(make_settings, redis_url, spawn_worker, broker, tmp_path):
    settings = restart_settings(make_settings, redis_url, tmp_path)  # the built-in inventory: 6 creatives, 3 campaigns
    topics = settings.topics
    counts = await ensure_topics(settings, broker)
    store = state_store(settings)
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    ends: dict[tuple[str, int], int] = {}

    async def send(topic: str, user_id: str, value: bytes) -> None:
        meta = await producer.send_and_wait(topic, value, key=user_id.encode())
        ends[(topic, meta.partition)] = max(ends.get((topic, meta.partition), 0), meta.offset + 1)

    async def checkpointed() -> bool:
        """Every record sent is covered by each partition's global checkpoint (written with every commit here)."""
        for (topic, partition), end in ends.items():
            if (await store.load(partition, with_users=False)).global_offsets.get(topic, 0) < end:
                return False
        return True

    async def ad_states() -> dict[int, dict]:
        blobs = [(await store.load(p, with_users=False)).global_blob for p in range(settings.partitions)]
        return {p: orjson.loads(blob)["selection"]["ads"] for p, blob in enumerate(blobs)}

    first = spawn_worker(settings, "first")
    first.wait_ready()
    users = [f"shopper{n}" for n in range(16)]
    for n, user in enumerate(users):
        request = {"request_id": f"r{n}", "user_id": user, "slot": "home_banner", "ts": T0 + n}
        await send(topics.ad_requests, user, orjson.dumps(request))
    decisions = await _read(broker, topics.ad_scores, counts[topics.ad_scores], len(users))
    assert len(decisions) == len(users), f"{len(decisions)} of {len(users)} requests answered"
    assert all(d["headline"] for d in decisions)
    clicked = decisions[::2]
    for d in clicked:
        event = click(user=d["user_id"], item=d["creative_id"], action="click", rec_id=d["request_id"], ts=T0 + 100)
        await send(topics.clicks, d["user_id"], encode(event))
    await apoll_until(checkpointed, 30, "the first worker to checkpoint the clicks")
    before = await ad_states()

    # what the first worker learned: each clicked arm moved by its clicks from the creative's prior, in its partition
    for partition, ads in before.items():
        mine = [d for d in clicked if partition_for(d["user_id"], settings.partitions) == partition]
        for d in mine:
            variant = next(v for v in INVENTORY.creatives[d["creative_id"]].variants if v.variant_id == d["variant_id"])
            n_clicks = sum((o["creative_id"], o["variant_id"]) == (d["creative_id"], d["variant_id"]) for o in mine)
            arm = ads["samplers"][d["creative_id"]]["arms"][d["variant_id"]]
            assert arm == [variant.prior_alpha + n_clicks, variant.prior_beta, n_clicks, n_clicks]
        open_requests = {d["request_id"] for d in decisions if d not in clicked
                         and partition_for(d["user_id"], settings.partitions) == partition}  # fmt: skip
        assert {entry[0] for entry in ads["served"]} == open_requests

    first.kill()
    second = spawn_worker(settings, "second")
    second.wait_ready()
    target = decisions[1]  # served by the first worker, never clicked
    event = click(user=target["user_id"], item=target["creative_id"], action="click", rec_id=target["request_id"],
                  ts=T0 + 200)  # fmt: skip
    await send(topics.clicks, target["user_id"], encode(event))
    await apoll_until(checkpointed, 30, "the restarted worker to checkpoint the click")
    after = await ad_states()

    # the restarted worker holds exactly what the first one learned, plus this one click on the served variant
    partition = partition_for(target["user_id"], settings.partitions)
    expected = copy.deepcopy(before[partition])
    alpha, beta, impressions, clicks = expected["samplers"][target["creative_id"]]["arms"][target["variant_id"]]
    expected["samplers"][target["creative_id"]]["arms"][target["variant_id"]] = [alpha + 1, beta, impressions + 1, clicks + 1]
    expected["served"] = [entry for entry in expected["served"] if entry[0] != target["request_id"]]
    assert after[partition] == expected
    assert after == {**before, partition: expected}
    await producer.stop()
    await store.close()
