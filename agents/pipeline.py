"""One consumed batch through the engine, as named steps; no Kafka client in here, so it is testable brokerless.

    records (topic, partition, offset, key, value, timestamp)
      -> decode + validate          bad -> DeadLetter (reason)           # (partition, event) | DeadLetter
      -> route                      not on its user's partition -> rekey # (partition, event)
      -> apply to user state        (global-only below the user checkpoint after a restart)
      -> recommend once per touched user (after its last event of the batch), or with ``every_event`` once per
         event: the batch is cut before an event whose user was already touched in it
      -> Outputs: recommendations, dead letters, re-keyed events, serving records, and (shared discovery) each
         applied order's discovery facts for the other partitions

``apply_peer_orders``: records of the discovery topic (other partitions' orders) into the owned partitions'
discovery models, each at most once (read positions and source offsets in the partitions' checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
from aiokafka.partitioner import murmur2

from kairos.engine import metrics
from kairos.engine.discovery import OrderFacts
from kairos.engine.partition import PartitionState
from kairos.engine.store import ServingRecord
from kairos.schemas.codec import InvalidEvent, decode_ad_request, decode_event
from kairos.schemas.events import ImpressionEvent
from kairos.schemas.topics import Topics


#: ``record_source`` of a record from another input partition of its state than the one numbered like it: a flag
#: bit, and up to 2^14 input partitions per state (offsets up to 2^45 keep the number under 2^63).
_OTHER_INPUT = 1 << 62
_WHICH_BITS = 14


def partition_for(user_id: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key, made positive): the partition a Java, aiokafka or
    librdkafka-with-murmur2 producer puts a record keyed by ``user_id`` on."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class InputRecord:
    topic: str
    #: The state partition the record feeds (``input_partition % state partitions``, agents/assignor.py).
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    #: The Kafka partition it was read from, when the input topics have more partitions than there are states
    #: (None: the same as ``partition``).
    input_partition: int | None = None

    @property
    def kafka_partition(self) -> int:
        return self.partition if self.input_partition is None else self.input_partition

    @property
    def stream(self) -> str:
        """The key of this record's offsets in its state: the topic, or "topic#input partition" for the input
        partitions of a state partition other than the one numbered like it (state saved with as many input
        partitions as states stays readable)."""
        return stream_key(self.topic, self.partition, self.kafka_partition)


def stream_key(topic: str, state_partition: int, input_partition: int) -> str:
    """Where a state partition keeps the offsets of one input partition (``InputRecord.stream``)."""
    return topic if input_partition == state_partition else f"{topic}#{input_partition}"


@dataclass(slots=True)
class OutputRecord:
    topic: str
    key: bytes
    value: bytes


@dataclass(slots=True)
class BatchResult:
    outputs: list[OutputRecord] = field(default_factory=list)
    touched_partitions: set[int] = field(default_factory=set)
    #: Append time of the oldest event each recommendation covers (for the latency histogram).
    source_times_ms: list[int] = field(default_factory=list)
    applied: int = 0
    dead_letters: int = 0
    rekeyed: int = 0
    duplicates: int = 0
    ad_decisions: int = 0
    #: Other partitions' orders learned by an owned partition (``apply_peer_orders``; one order counts once per
    #: owned partition that learned it).
    peer_orders: int = 0


def _kinds_by_topic(topics: Topics) -> dict[str, frozenset[str] | None]:
    return {
        topics.clicks: frozenset({"click"}),
        topics.purchases: frozenset({"purchase"}),
        topics.impressions: frozenset({"impression"}),
        topics.rekeyed: None,
        topics.ad_requests: None,
    }


@dataclass
class _Touched:
    topic: str
    #: The Kafka partition of the record (``InputRecord.kafka_partition``).
    partition: int
    offset: int
    event_id: str
    event_ts: float
    first_timestamp_ms: int


class BatchPipeline:
    """Applies consumed records to the partition states it is given and collects everything to emit."""

    def __init__(
        self,
        topics: Topics,
        partitions: dict[int, PartitionState],
        n_partitions: int,
        top_n: int,
        every_event: bool = False,
        share_discovery: bool = False,
    ) -> None:
        self.topics = topics
        self.partitions = partitions
        self.n_partitions = n_partitions
        self.top_n = top_n
        self._kinds = _kinds_by_topic(topics)
        #: 0 clicks, 1 purchases, 2 impressions, 3 re-keyed, 4 ad requests (``record_source``).
        self._topic_codes = {topic: code for code, topic in enumerate(self._kinds)}
        self.clock: Callable[[], float] = time.time
        #: False (the default): a shopper with several events in one consumed batch is ranked once, after the last
        #: of them (the earlier recommendations would be superseded before anyone read them). True: every event
        #: gets its own recommendation, computed on the state right after it (``KAIROS_RECOMMEND_EVERY_EVENT``);
        #: the users touched so far are ranked, in one ranker call, before a user's second event is applied.
        self.every_event = every_event
        #: Publish each applied order's discovery facts on the discovery topic (shared discovery; the worker sets
        #: it from ``KAIROS_SHARED_DISCOVERY`` when there is more than one partition).
        self.share_discovery = share_discovery
        self._flush_s = 0.0

    def process(self, records: Iterable[InputRecord]) -> BatchResult:
        result = BatchResult()
        touched: dict[tuple[int, str], _Touched] = {}
        self._flush_s = 0.0
        t0 = time.perf_counter()
        for record in records:
            self._apply_record(record, result, touched)
        t1 = time.perf_counter()
        metrics.STEP_LATENCY.labels("state").observe(t1 - t0 - self._flush_s)
        self._recommend_touched(touched, result)
        self._request_copy(result)
        return result

    def _recommend_touched(self, touched: dict[tuple[int, str], _Touched], result: BatchResult) -> None:
        by_partition: dict[int, list[tuple[str, _Touched]]] = {}
        for (partition, user_id), origin in touched.items():
            by_partition.setdefault(partition, []).append((user_id, origin))
        for partition, users in by_partition.items():
            self._recommend_many(self.partitions[partition], users, result)

    def _flush_before(self, key: tuple[int, str], touched: dict[tuple[int, str], _Touched], result: BatchResult) -> None:
        """Every-event mode: ``key``'s user is about to change again, so everyone touched so far is ranked now."""
        if self.every_event and key in touched:
            t0 = time.perf_counter()
            self._recommend_touched(touched, result)
            touched.clear()
            self._flush_s += time.perf_counter() - t0

    def _recommend_many(self, state: PartitionState, users: list[tuple[str, _Touched]], result: BatchResult) -> None:
        """Every touched user of the partition: candidates and features each, then ONE ranker call for all of
        them (the micro-batch of this consumed batch), then correction / rules / exploration each."""
        selector = state.selector
        prepared = [selector.prepare(state.users[user_id], origin.event_ts) for user_id, origin in users]
        t0 = time.perf_counter()
        fallbacks = selector.recommender.ranker_failures
        scores = selector.recommender.score_many([features for _, features in prepared])
        metrics.STEP_LATENCY.labels("rank").observe(time.perf_counter() - t0)
        metrics.RANKER_FALLBACKS.inc(selector.recommender.ranker_failures - fallbacks)
        for (user_id, origin), (pool, _), user_scores in zip(users, prepared, scores):
            self._recommend(state, user_id, origin, result, pool, user_scores)

    def _request_copy(self, result: BatchResult) -> None:
        """The copy requests the copy book lets out now (the most missed keys, as places in its window free up) go
        to the copy agent, keyed by item so one writer handles an item; the book's counts go to the metrics."""
        for state in self.partitions.values():
            copybook = state.selector.copybook
            if copybook is None:
                continue
            for request in copybook.take_requests():
                value = orjson.dumps(request.to_json())
                result.outputs.append(OutputRecord(self.topics.copy_requests, request.item_id.encode(), value))
            hits, misses = copybook.take_counts()
            if hits:
                metrics.CACHE_LOOKUPS.labels("copy", "hit").inc(hits)
            if misses:
                metrics.CACHE_LOOKUPS.labels("copy", "miss").inc(misses)
            metrics.COPY_REQUESTS.labels("pending").set(copybook.pending)
            metrics.COPY_REQUESTS.labels("outstanding").set(copybook.outstanding)
            break  # the copy book is shared by every partition of the worker

    def _apply_record(self, record: InputRecord, result: BatchResult, touched: dict) -> None:
        state = self.partitions.get(record.partition)
        if state is None:
            return  # partition revoked while the batch was in flight; its new owner will read it
        result.touched_partitions.add(record.partition)
        state.offsets[record.stream] = record.offset + 1
        if record.topic == self.topics.ad_requests:
            self._decide_ad(state, record, result)
            return
        try:
            event = decode_event(record.value, expected_kinds=self._kinds.get(record.topic))
        except InvalidEvent as exc:
            self._dead_letter(record, exc.error_class, exc.reason, result)
            return
        home = partition_for(event.user_id, self.n_partitions)
        if home != record.partition or record.key != event.user_id.encode():
            # Applied only from a record keyed by its user: the worker reads evicted users back by record key.
            self._rekey(record, event.user_id, result)
            return
        self._apply_event(state, record, event, result, touched)

    def _apply_event(self, state: PartitionState, record: InputRecord, event, result: BatchResult, touched) -> None:
        selector = state.selector
        user_checkpoint = state.replay_until.get(record.stream, 0)
        if record.offset < user_checkpoint:
            # Replaying after a restart: the user states already contain this event, the global model may not.
            if record.offset >= state.global_offsets.get(record.stream, 0):
                self._replay_global(state, record, event, result)
            return
        user = state.user(event.user_id)
        if user.has_applied(event.event_id):
            result.duplicates += 1
            metrics.EVENTS_DUPLICATE.inc()
            return
        key = (record.partition, event.user_id)
        self._flush_before(key, touched, result)
        facts = selector.recommender.discovery.event_facts(user, event) if self.share_discovery else None
        selector.observe(user, event, self.record_source(record))
        if facts is not None:
            self._publish_order(record, facts, result)
        state.mark_dirty(user.user_id)
        result.applied += 1
        metrics.EVENTS_APPLIED.labels(event.kind).inc()
        if isinstance(event, ImpressionEvent):
            return  # an impression changes what we know, not what to show next
        origin = touched.get(key)
        first_ms = origin.first_timestamp_ms if origin else record.timestamp_ms
        touched[key] = _Touched(record.topic, record.kafka_partition, record.offset, event.event_id, event.ts, first_ms)

    def _publish_order(self, record: InputRecord, facts: OrderFacts, result: BatchResult) -> None:
        """The order for the other partitions, keyed by the shopper (so on the discovery partition numbered like
        the source when the topic has as many partitions), with the record it was applied from: a source that
        restarts publishes its uncommitted orders again, and readers skip what they learned (``learn_peer``)."""
        value = {
            "schema_version": 1,
            "source": {"partition": record.kafka_partition, "topic": record.topic, "offset": record.offset},
            "order": facts.to_json(),
        }
        result.outputs.append(OutputRecord(self.topics.discovery, facts.user_id.encode(), orjson.dumps(value)))

    def apply_peer_orders(self, records: Iterable[InputRecord], result: BatchResult) -> set[int]:
        """Discovery-topic records into every owned partition's discovery model, except the source partition's own
        (it learned the order when it applied it). Each owned partition keeps its next offset per discovery
        partition (``PurchaseGraph.peer_positions``) and skips records below it, so a reader rewound for a newly
        owned partition does not feed the others twice; ``learn_peer`` drops a source's re-publications. A
        malformed record is dead-lettered once, by the owner of the partition numbered like it. Returns the owned
        partitions whose discovery state moved (their checkpoint holds the positions)."""
        moved: set[int] = set()
        for record in records:
            decoded = _decode_peer_order(record)
            if isinstance(decoded, str):
                metrics.PEER_ORDERS.labels("invalid").inc()
                if record.partition in self.partitions:
                    self._dead_letter(record, "invalid_peer_order", decoded, result)
            for partition, state in self.partitions.items():
                discovery = state.selector.recommender.discovery
                if record.offset < discovery.peer_positions.get(record.partition, 0):
                    continue
                discovery.peer_positions[record.partition] = record.offset + 1
                moved.add(partition)
                if isinstance(decoded, str) or decoded[0] % self.n_partitions == partition:
                    continue  # the source's own state partition
                source_partition, source, offset, facts = decoded
                if state.selector.recommender.learn_peer_order(facts, source, offset):
                    result.peer_orders += 1
                    metrics.PEER_ORDERS.labels("learned").inc()
                else:
                    metrics.PEER_ORDERS.labels("duplicate").inc()
        return moved

    def record_source(self, record: InputRecord) -> int:
        """The record an event is applied from, as one integer kept with its id in the user's state: offset x 8 +
        the input topic's code (the same event id can reach two topics, e.g. directly and re-keyed). From another
        input partition of the state than the one numbered like it (agents/assignor.py), which one is in it too,
        above a flag bit: ``_OTHER_INPUT | (offset x 2^14 + which) x 8 + code``, so the number does not depend on
        how many input partitions the topic has (it may grow) and never equals one of the first form."""
        code = self._topic_codes.get(record.topic, 7)
        which = record.kafka_partition // self.n_partitions
        if which == 0:
            return record.offset * 8 + code
        return _OTHER_INPUT | (((record.offset << _WHICH_BITS) | which) << 3) | code

    def _replay_global(self, state: PartitionState, record: InputRecord, event, result: BatchResult) -> None:
        """Into the global state only, if this record is the copy of the event that was applied live: a copy
        skipped live as a duplicate (a producer retry, inside the window or after a copy the checkpoint holds) is
        skipped again. An id the shopper's state no longer lists (more than 64 events ago) or stored without its
        source is replayed, as before sources were kept."""
        user = state.user(event.user_id)
        applied_from = user.applied_source(event.event_id)
        if applied_from is not None and applied_from >= 0 and applied_from != self.record_source(record):
            result.duplicates += 1
            metrics.EVENTS_DUPLICATE.inc()
            return
        state.selector.observe_global_only(user, event)

    def _recommend(self, state: PartitionState, user_id: str, origin: _Touched, result: BatchResult, pool, scores) -> None:
        user = state.users[user_id]
        selector = state.selector
        selection = selector.finish(user, pool, scores, now=origin.event_ts, n=self.top_n)
        _observe_timings(selector)
        catalog = selector.model.catalog
        payload = orjson.dumps(
            {
                "schema_version": 1,
                "rec_id": selection.rec_id,
                "user_id": user_id,
                "items": [_ranked_item(rank, item, catalog.get(item.item_id)) for rank, item in enumerate(selection.items, 1)],
                "model_version": selector.model_version,
                "state_version": user.version,
                "source": {
                    "topic": origin.topic,
                    "partition": origin.partition,
                    "offset": origin.offset,
                    "event_id": origin.event_id,
                    "event_ts": origin.event_ts,
                    "ingested_at": origin.first_timestamp_ms / 1000.0,
                },
                "produced_at": self.clock(),
            }
        )
        result.outputs.append(OutputRecord(self.topics.recommendations, user_id.encode(), payload))
        # Serving order is by the newest event time the state contains (events of one user may arrive out of
        # order across topics), then by state version.
        state.pending_serving[user_id] = ServingRecord(user_id, user.last_ts, user.version, payload)
        result.source_times_ms.append(origin.first_timestamp_ms)

    def _decide_ad(self, state: PartitionState, record: InputRecord, result: BatchResult) -> None:
        """Ad requests are answered at once (no coalescing: every request needs its own creative). A request not
        keyed to its user's partition is still answered, as for an unknown user."""
        try:
            request = decode_ad_request(record.value)
        except InvalidEvent as exc:
            self._dead_letter(record, exc.error_class, exc.reason, result)
            return
        if record.offset < state.replay_until.get(record.stream, 0):
            return  # answered before the restart
        t0 = time.perf_counter()
        decision = state.selector.decide_ad(request.request_id, state.users.get(request.user_id), request.ts)
        metrics.STEP_LATENCY.labels("auction").observe(time.perf_counter() - t0)
        if decision is None:
            return
        scored = {
            "schema_version": 1, "request_id": decision.request_id, "user_id": request.user_id,
            "creative_id": decision.creative_id, "campaign_id": decision.campaign_id, "variant_id": decision.variant_id,
            "headline": decision.headline, "pctr": round(decision.pctr, 6), "bid": decision.bid,
            "expected_value": round(decision.expected_value, 6),
            "clearing_price": round(min(decision.clearing_price, decision.bid), 6), "reserve": decision.reserve,
            "won": decision.won, "propensity": round(decision.propensity, 6), "reasons": list(decision.reasons),
            "produced_at": self.clock(),
        }  # fmt: skip
        result.outputs.append(OutputRecord(self.topics.ad_scores, request.user_id.encode(), orjson.dumps(scored)))
        result.ad_decisions += 1

    def _dead_letter(self, record: InputRecord, error_class: str, reason: str, result: BatchResult) -> None:
        letter = {
            "schema_version": 1,
            "topic": record.topic,
            "partition": record.kafka_partition,
            "offset": record.offset,
            "raw": record.value or b"",
            "error_class": error_class,
            "reason": reason,
            "failed_at": self.clock(),
            "attempts": 1,
        }
        if record.key is not None:
            letter["key"] = record.key
        value = orjson.dumps(letter, default=_b64)
        result.outputs.append(OutputRecord(self.topics.dead_letters, record.key or b"", value))
        result.dead_letters += 1
        metrics.DEAD_LETTERS.labels(error_class).inc()

    def _rekey(self, record: InputRecord, user_id: str, result: BatchResult) -> None:
        if record.topic == self.topics.rekeyed:
            # Only happens if the partition count changed under us: refuse loudly rather than loop forever.
            self._dead_letter(record, "misrouted", "re-keyed event still not on its user's partition", result)
            return
        result.outputs.append(OutputRecord(self.topics.rekeyed, user_id.encode(), record.value or b""))
        result.rekeyed += 1
        metrics.EVENTS_REKEYED.inc()


def _decode_peer_order(record: InputRecord) -> tuple[int, str, int, OrderFacts] | str:
    """(source partition, "partition:topic" of the source, source offset, facts), or why the record is invalid."""
    try:
        data = orjson.loads(record.value or b"")
        source = data["source"]
        partition, topic, offset = int(source["partition"]), str(source["topic"]), int(source["offset"])
        return partition, f"{partition}:{topic}", offset, OrderFacts.from_json(data["order"])
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"not a discovery record: {type(exc).__name__}: {exc}"


def _observe_timings(selector) -> None:
    timings = selector.last_timings
    if timings is not None:
        metrics.STEP_LATENCY.labels("retrieval").observe(timings.retrieve)
        metrics.STEP_LATENCY.labels("features").observe(timings.features)
        metrics.STEP_LATENCY.labels("correction").observe(selector.correction_s)
        metrics.STEP_LATENCY.labels("rules").observe(timings.rules)


def _ranked_item(rank: int, item, info) -> dict:
    out = {
        "item_id": item.item_id,
        "score": round(item.score, 6),
        "rank": rank,
        "reasons": list(item.reasons[:8]),
        "propensity": round(item.propensity, 6),
    }
    if info is not None and info.name:
        out["name"] = info.name
    if item.copy:
        out["copy"] = item.copy
    return out


def _b64(value):
    import base64

    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(type(value))
