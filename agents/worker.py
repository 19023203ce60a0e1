"""The ingest worker: a consumer-group member that owns input partitions and their state.

Loop: poll a batch -> ``BatchPipeline.process`` -> produce outputs and wait for the broker's acks -> commit each
touched partition's state + offsets + serving records atomically to the store -> (periodically) commit Kafka
offsets for lag dashboards. On assignment a partition's state is loaded from the store and the consumer seeks to
the offsets saved with it; on revocation pending state is committed first. Why not Faust's stream or changelog
recovery for this path: docs/state.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import replace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from redis.exceptions import RedisError

from kairos.agents import memory
from kairos.agents.fetch_wait import FetchWait, FetchWaitTuner
from kairos.agents.kafka_config import consumer_options, kafka_client_options, producer_options, stop_reader, topic_partitions
from kairos.agents.outputs import KafkaOutputs
from kairos.agents.pipeline import BatchPipeline, BatchResult, InputRecord, stream_key
from kairos.agents.settings import Settings
from kairos.agents.snapshot import ChildSnapshot, InlineBudget, SlicedSnapshot, fork_available
from kairos.agents.topics_admin import input_counts
from kairos.engine import metrics
from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.ads import AdSelector
from kairos.engine.copywriting import CopyBook
from kairos.engine.creatives import load_inventory
from kairos.engine.item_vectors import ItemVectors
from kairos.engine.selection import Selector
from kairos.engine.store import StateStore

log = logging.getLogger(__name__)

KAFKA_COMMIT_INTERVAL_S = 2.0
TRENDING_PUBLISH_INTERVAL_S = 10.0
STORE_EXPIRY_INTERVAL_S = 60.0
MEMORY_TRIM_INTERVAL_S = 30.0
#: How long a poll waits when nothing is left to write. ``getmany`` returns as soon as a fetch brings records, so
#: this only sets how often an idle loop wakes: at the 5 ms batch wait an idle worker kept 11-20% of a core busy.
IDLE_POLL_MS = 100
#: A checkpoint built in slices gets them when no records wait; once it has been open this long (a worker that is
#: never idle), also one after every batch.
SLICE_AFTER_BATCH_S = 0.5
#: Other partitions' orders (shared discovery) applied per loop turn, after the batch or in an idle turn: each is
#: learned once per owned partition (0.1-0.3 ms each), so a long backlog of them is spread over many turns instead
#: of holding the hot path for one.
PEER_ORDERS_PER_TURN = 16
#: An idle turn goes on reading them until none are left or this much time was spent (s).
PEER_ORDERS_IDLE_BUDGET_S = 0.01
#: The discovery reader's fetch wait: its orders are not latency-critical, and each fetch costs the broker.
PEER_FETCH_WAIT_MS = 200


def load_ranker(settings: Settings):
    """The ONNX ranker from the model directory (one session shared by the worker's partitions), or None: then
    the online River / heuristic champion ranks (the documented fallback)."""
    try:
        from kairos.models.ranker import OnnxRanker
        from kairos.models.session import SessionOptions

        ranker = OnnxRanker.from_dir(settings.model_dir, options=SessionOptions(intra_op_threads=settings.onnx_threads))
    except Exception as exc:  # noqa: BLE001 - no model (or a broken one) means the fallback ranker, not a dead worker
        log.warning("no ONNX ranker in %s (%s): ranking with the online River/heuristic ranker", settings.model_dir, exc)
        return None
    log.info("ranking with ONNX %s@%s on %s", ranker.name, ranker.version, ranker.provider)
    return ranker


def default_selector_factory(settings: Settings, copybook: CopyBook | None = None) -> Callable[[EngineConfig], Selector]:
    """Selectors with the ad inventory (Upworthy creatives when the data directory has them, else the built-in
    synthetic set; each partition paces 1/partitions of every campaign's budget) and the worker's copy book."""
    inventory = load_inventory(settings.resolved_data_dir())
    share = 1.0 / settings.partitions
    ranker = load_ranker(settings)
    item_vectors = load_item_vectors(settings)

    def make(config: EngineConfig) -> Selector:
        ads = AdSelector(inventory, budget_share=share, copybook=copybook)
        return Selector(config, ranker=ranker, ads=ads, copybook=copybook, item_vectors=item_vectors,
                        epsilon=settings.exploration_epsilon, exploration_sd=settings.exploration_sd,
                        exploration_draws=settings.exploration_draws)  # fmt: skip

    make.item_vectors = item_vectors  # the worker embeds queued item texts in the background
    return make


def load_item_vectors(settings: Settings) -> ItemVectors | None:
    """Item-text embeddings for the ``similar_text`` candidate source, or None without an embedder model."""
    try:
        from kairos.models.embedder import OnnxEmbedder
        from kairos.models.session import SessionOptions

        embedder = OnnxEmbedder.from_dir(settings.model_dir, options=SessionOptions(intra_op_threads=1))
    except Exception as exc:  # noqa: BLE001 - no embedder means no content-based candidates, nothing worse
        log.warning("no ONNX embedder in %s (%s): no similar_text candidates", settings.model_dir, exc)
        return None
    return ItemVectors(embedder)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: "IngestWorker") -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.worker.release({self.worker.state_of(tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.worker.acquire(assigned)


class IngestWorker:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        store: StateStore,
        make_selector: Callable[[EngineConfig], Selector] | None = None,
        on_batch: Callable[["IngestWorker", int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store
        self.config = settings.engine_config()
        self.make_selector = make_selector or default_selector_factory(settings)
        self.item_vectors = getattr(self.make_selector, "item_vectors", None)
        self.on_batch = on_batch
        self.partitions: dict[int, PartitionState] = {}
        self.n_partitions = settings.partitions
        self.pipeline = BatchPipeline(
            settings.topics, self.partitions, self.n_partitions, self.config.top_n, settings.recommend_every_event
        )
        self.consumer: AIOKafkaConsumer | None = None
        #: Shared discovery: reads every partition of the discovery topic (no group; ``_apply_peer_orders``).
        self.peer_consumer: AIOKafkaConsumer | None = None
        self.fetch_wait: FetchWaitTuner | None = None
        self.producer: AIOKafkaProducer | None = None
        self.outputs: KafkaOutputs | None = None
        self.stats = {
            "events": 0, "recommendations": 0, "dead_letters": 0, "rekeyed": 0, "duplicates": 0, "ads": 0,
            "peer_orders": 0,
        }  # fmt: skip
        self._last_trending = 0.0
        self.redis_healthy = True
        self._stopping = asyncio.Event()
        self._last_checkpoint: dict[int, float] = {}
        #: The event loop's stall for each checkpoint taken (ms; the benchmark reports them).
        self.checkpoint_stalls_ms: deque[float] = deque(maxlen=10_000)
        #: Children forked to build checkpoints (the other stalls are checkpoints built on the loop).
        self.checkpoint_forks = 0
        #: Global checkpoints being built, in slices on the loop or in forked children, by partition
        #: (agents/snapshot.py).
        self._snapshots: dict[int, ChildSnapshot | SlicedSnapshot] = {}
        #: Checkpoints built in slices while no records wait (the default); False after a build failed: whole builds.
        self.checkpoint_sliced = settings.checkpoint_slice_ms > 0 and settings.global_checkpoint_interval_s > 0
        #: How long each slice of those builds held the loop (ms; the benchmark reports them).
        self.checkpoint_slices_ms: deque[float] = deque(maxlen=10_000)
        self._last_idle_tick = 0.0
        self.checkpoint_in_child = (
            settings.checkpoint_in_child and fork_available() and settings.global_checkpoint_interval_s > 0
        )
        #: Checkpoints expected to be quick are built on the loop even so (agents/snapshot.py).
        self.inline_budget = InlineBudget(settings.checkpoint_inline_max_ms)
        #: The last batch's outputs + commit, written while the next batch is processed (``_finalize``).
        self._finalizing: asyncio.Task | None = None
        self._last_kafka_commit = 0.0
        #: Partitions whose state changed since their last commit, and when the last due commit was built
        #: (``commit_interval_ms``); the counts of batches not yet written wait with them (``stats`` counts what is
        #: written).
        self._uncommitted: set[int] = set()
        self._last_state_commit = 0.0
        self._uncounted: Counter[str] = Counter()
        self._last_store_expiry = 0.0
        self._last_trim = time.monotonic()
        #: Full garbage collections kept short: survivors frozen every 5 s, one full sweep every 15 min.
        self.collector = memory.CollectorPolicy()
        self.ready = asyncio.Event()
        #: Per batch: (consume delay of its oldest record, ms; batch start -> recommendations handed to the
        #: producer, ms): the split of the end-to-end latency that `kairos bench pipeline` reports.
        self.batch_timings: deque[tuple[float, float]] = deque(maxlen=100_000)
        #: perf_counter() when the first batch started (throughput is measured from there).
        self.first_batch_at: float | None = None

    # --- lifecycle ---

    async def start(self, counts: Mapping[str, int]) -> None:
        """``counts``: topic -> partition count (``ensure_topics``). Each input topic's is a multiple of the state
        partitions (``settings.partitions``): input partition ``p`` feeds state partition ``p % partitions``."""
        inputs = input_counts(self.settings, counts)
        memory.fix_mmap_threshold()  # RSS must not keep the peak of one large batch (agents/memory.py)
        memory.watch_collector_pauses()
        self.n_partitions = self.pipeline.n_partitions = self.settings.partitions
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **producer_options(self.settings))
        await self.producer.start()
        self.outputs = KafkaOutputs(self.producer)
        floor, ceiling = self.settings.fetch_wait_bounds()
        options = {**consumer_options(self.settings, inputs.values()), "fetch_max_wait_ms": floor}
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, **options)
        await self.consumer.start()
        self.fetch_wait = FetchWaitTuner(self.consumer, FetchWait(floor, ceiling))
        self.pipeline.share_discovery = self.settings.shared_discovery and self.n_partitions > 1
        if self.pipeline.share_discovery:
            await self._start_peer_reader()
        self.consumer.subscribe(list(self.settings.topics.inputs()), listener=_Rebalance(self))

    def state_of(self, tp: TopicPartition) -> int:
        """The state partition input partition ``tp`` feeds (agents/assignor.py)."""
        return tp.partition % self.n_partitions

    def input_record(self, tp: TopicPartition, record) -> InputRecord:
        """A consumed input record, with the state partition it feeds."""
        state = self.state_of(tp)
        return InputRecord(tp.topic, state, record.offset, record.key, record.value, record.timestamp,
                           None if state == tp.partition else tp.partition)  # fmt: skip

    def stream_of(self, tp: TopicPartition) -> str:
        """The key of ``tp``'s offsets in its state (``InputRecord.stream``)."""
        return stream_key(tp.topic, self.state_of(tp), tp.partition)

    async def _start_peer_reader(self) -> None:
        """The discovery topic's reader: every partition assigned (each owned partition learns every other one's
        orders), paused until partitions are owned and it is placed at their positions (``_seek_peer_orders``)."""
        topic = self.settings.topics.discovery
        self.peer_consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=PEER_FETCH_WAIT_MS, **kafka_client_options(self.settings),
        )  # fmt: skip
        await self.peer_consumer.start()
        ids = await topic_partitions(self.peer_consumer, topic)
        if not ids:
            raise RuntimeError(f"shared discovery: topic {topic} not found (KAIROS_SHARED_DISCOVERY=false to run without)")
        assigned = [TopicPartition(topic, p) for p in sorted(ids)]
        self.peer_consumer.assign(assigned)
        self.peer_consumer.pause(*assigned)

    async def run(self) -> None:
        assert self.consumer is not None
        embedding = asyncio.create_task(self.embed_items(), name="embed-items")
        try:
            await self._loop()
        finally:
            embedding.cancel()

    async def _loop(self) -> None:
        assert self.consumer is not None
        while not self._stopping.is_set():
            # While a checkpoint is built in slices, the loop does not wait for records: it looks for them and,
            # when there are none, builds a slice, so the build fills the time the worker would spend waiting.
            building = self._building() is not None
            batches = await self.consumer.getmany(
                timeout_ms=0 if building else self._poll_timeout_ms(), max_records=self.settings.batch_max_records
            )
            if self.fetch_wait is not None and (batches or not building):
                await self.fetch_wait.after_poll(bool(batches))
            if batches:
                await self._handle(batches)
                await self._apply_peer_orders()
            elif building and time.monotonic() - self._last_idle_tick < self.settings.batch_max_wait_ms / 1000.0:
                self._advance_snapshots()
                await asyncio.sleep(0)  # the fetcher's turn: a response that came meanwhile is read now
            else:
                await self._idle_tick()

    def _poll_timeout_ms(self) -> int:
        """The batch wait while something waits to be written (a commit in flight, state changed meanwhile, Redis
        down), so the idle tick writes it soon; otherwise :data:`IDLE_POLL_MS`."""
        writing = self._finalizing is not None and not self._finalizing.done()
        pending = self._uncommitted or any(state.has_pending for state in self.partitions.values())
        if writing or not self.redis_healthy or pending:
            return max(self.settings.batch_max_wait_ms, 1)
        return IDLE_POLL_MS

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Commit what is pending, then leave the group (so the partitions move at once, not after a timeout)."""
        await self.release(set(self.partitions))
        if self.consumer is not None:
            await self.consumer.stop()
        await stop_reader(None, self.peer_consumer)
        if self.producer is not None:
            await self.producer.stop()

    # --- partitions ---

    async def acquire(self, assigned: list[TopicPartition]) -> None:
        """Restore the newly owned partitions' states, then seek every assigned partition to its resume offsets.
        The assigned partitions stay paused until then: aiokafka starts fetching them while this listener still
        awaits the store, and a batch it returned would be applied and then read again after the seek (events
        a shopper's duplicate window no longer lists would be applied twice)."""
        assert self.consumer is not None
        self.consumer.pause(*assigned)
        if self.peer_consumer is not None:
            # The discovery reader too: a state restored here must not learn newer records before the reader is
            # placed at its (older) position, or it would skip the ones in between.
            self.peer_consumer.pause(*self.peer_consumer.assignment())
        try:
            await self._restore_and_seek(assigned)
        finally:
            self.consumer.resume(*[tp for tp in assigned if tp in self.consumer.assignment()])
            self._seek_peer_orders()

    async def _restore_and_seek(self, assigned: list[TopicPartition]) -> None:
        assert self.consumer is not None
        new = sorted({self.state_of(tp) for tp in assigned} - set(self.partitions))
        for n, partition in enumerate(new):
            snapshot = await self.store.load(partition, with_users=False)  # users are read when they return
            state = PartitionState.restore(partition, self.config, snapshot, lambda: self.make_selector(self.config))
            self.inline_budget.sizes[partition] = len(snapshot.global_blob or b"")
            self.partitions[partition] = state
            # Staggered: the partitions' global checkpoints (each a serialisation of the partition's model) fall
            # in different batches instead of all in one.
            interval = self.settings.global_checkpoint_interval_s
            self._last_checkpoint[partition] = time.monotonic() - interval * n / len(new)
        resume = {p: self.partitions[p].resume_offsets() for p in self.partitions}
        for tp in assigned:
            offset = resume.get(self.state_of(tp), {}).get(self.stream_of(tp))
            if offset is not None:
                self.consumer.seek(tp, offset)
            else:
                await self.consumer.seek_to_beginning(tp)
        metrics.PARTITIONS_OWNED.set(len(self.partitions))
        log.info("owning partitions %s", sorted(self.partitions))
        self.ready.set()

    def _seek_peer_orders(self) -> None:
        """Place the discovery reader at the oldest position any owned partition needs (each skips what it has
        learned: ``BatchPipeline.apply_peer_orders``); paused while nothing is owned."""
        consumer = self.peer_consumer
        if consumer is None:
            return
        assigned = list(consumer.assignment())
        if not self.partitions:
            consumer.pause(*assigned)
            return
        for tp in assigned:
            consumer.seek(tp, self._oldest_peer_position(tp.partition))
        consumer.resume(*assigned)

    def _oldest_peer_position(self, discovery_partition: int) -> int:
        """The next discovery record of ``discovery_partition`` that the owned partition furthest behind needs."""
        states = self.partitions.values()
        return min(state.selector.recommender.discovery.peer_positions.get(discovery_partition, 0) for state in states)

    async def _apply_peer_orders(self) -> bool:
        """Up to :data:`PEER_ORDERS_PER_TURN` of the other partitions' orders into the owned partitions' discovery
        models. The partitions they moved are committed with the next due commit, and their global checkpoint,
        which holds the read positions, follows as for any change."""
        consumer = self.peer_consumer
        if consumer is None or not self.partitions:
            return False
        batches = await consumer.getmany(timeout_ms=0, max_records=PEER_ORDERS_PER_TURN)
        if not batches:
            return False
        records = [
            InputRecord(tp.topic, tp.partition, r.offset, r.key, r.value, r.timestamp)
            for tp, batch in batches.items()
            for r in batch
        ]
        result = BatchResult()
        t0 = time.perf_counter()
        self._uncommitted |= self.pipeline.apply_peer_orders(records, result)
        metrics.STEP_LATENCY.labels("peer_orders").observe(time.perf_counter() - t0)
        self.stats["peer_orders"] += result.peer_orders
        if result.outputs:  # dead letters of malformed records: acked before going on, as rare as they should be
            assert self.outputs is not None
            for out in result.outputs:
                self.outputs.add(out.topic, out.key, out.value)
            await asyncio.gather(*await self.outputs.enqueue(self.outputs.take()))
            self.stats["dead_letters"] += result.dead_letters
        return True

    def _report_peer_lag(self) -> None:
        """The discovery reader's lag per discovery partition, as the input topics' (``kairos_consumer_lag``): the
        records the owned partition furthest behind has still to learn (0 when it is not shared)."""
        consumer = self.peer_consumer
        if consumer is None or not self.partitions:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                behind = highwater - self._oldest_peer_position(tp.partition)
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(behind, 0))

    async def release(self, partitions: set[int]) -> None:
        owned = [p for p in partitions if p in self.partitions]
        for partition in owned:
            await self._commit_partition(partition, force_checkpoint=True)  # discards a child's checkpoint
        for partition in owned:
            del self.partitions[partition]
        self._uncommitted.difference_update(owned)
        if not self._uncommitted:
            self._count_written()
        if not self.partitions and self.peer_consumer is not None:
            self.peer_consumer.pause(*self.peer_consumer.assignment())
        metrics.PARTITIONS_OWNED.set(len(self.partitions))

    # --- the loop body ---

    async def _handle(self, batches: dict) -> None:
        assert self.outputs is not None
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()
        started_ms = time.time() * 1000.0
        records = [self.input_record(tp, r) for tp, batch in batches.items() for r in batch]
        # How long the oldest record of the batch waited before the worker had it (broker append -> fetched):
        # the broker's and the consumer's share of the event -> recommendation latency.
        consume_delay_ms = max(started_ms - min(r.timestamp_ms for r in records), 0.0) if records else 0.0
        metrics.CONSUME_DELAY.observe(consume_delay_ms / 1000.0)
        for tp, batch in batches.items():
            metrics.EVENTS_IN.labels(tp.topic).inc(len(batch))
        metrics.BATCH_SIZE.observe(len(records))
        # Evicted here, never while a batch waits on Redis: a user dropped between "is this user in memory?" and
        # the batch's processing would be rebuilt from nothing.
        self._evict_resident()
        await self._load_returning_users(records)
        result = self.pipeline.process(records)  # runs while the previous batch's outputs and commit are in flight
        for out in result.outputs:
            self.outputs.add(out.topic, out.key, out.value)
        # Handed to the producer now, in batch order (stamped now); acknowledged in the background.
        sent = await self.outputs.enqueue(self.outputs.take())
        # Let the producer's sender put them on the wire before anything else holds the loop (a commit with a
        # global checkpoint, the next batch: getmany returns without suspending when records are buffered).
        for _ in range(3):
            await asyncio.sleep(0)
        self.batch_timings.append((consume_delay_ms, time.time() * 1000.0 - started_ms))
        # The state to commit is built now, before the next batch changes it (a later change leaves the user dirty).
        # A partition whose checkpoint child is done commits now even if untouched: the child's checkpoints are
        # written as soon as they are built, and the next child (one at a time) is not held up.
        ready = {p for p, snapshot in self._snapshots.items() if snapshot.ready}
        due, covers_all = self._due_commits(result.touched_partitions, ready)
        commits = [c for c in (self._prepare_commit(p) for p in sorted(due)) if c is not None]
        await self._settle()  # one batch in flight at most: its outputs, then its commit, in order
        self._finalizing = asyncio.create_task(self._finalize(sent, result, len(records), commits, covers_all))
        self._advance_snapshots(after_batch=True)
        await self._maybe_commit_kafka()
        await self._maybe_publish_trending()
        self._maybe_trim()
        if self.on_batch is not None:
            self.on_batch(self, len(records))

    def _building(self) -> SlicedSnapshot | None:
        """The checkpoint being built in slices, if one is (one at a time)."""
        for snapshot in self._snapshots.values():
            if isinstance(snapshot, SlicedSnapshot) and not snapshot.ready:
                return snapshot
        return None

    def _advance_snapshots(self, after_batch: bool = False) -> None:
        """One slice of the checkpoint being built in slices, if one is: when no records wait (``_loop``), and in
        the idle tick; after a batch only once the build has waited ``SLICE_AFTER_BATCH_S`` for idle time (a
        worker that is never idle still finishes its checkpoints, a slice per batch)."""
        snapshot = self._building()
        if snapshot is None or (after_batch and time.monotonic() - snapshot.started < SLICE_AFTER_BATCH_S):
            return
        self.checkpoint_slices_ms.append(snapshot.advance(self.settings.checkpoint_slice_ms))
        metrics.STEP_LATENCY.labels("checkpoint_slice").observe(self.checkpoint_slices_ms[-1] / 1000.0)

    def _due_commits(self, touched: set[int], ready: set[int]) -> tuple[set[int], bool]:
        """The partitions to commit after this batch, and whether that covers every change so far: every changed
        partition once ``commit_interval_ms`` has passed since the last such commit, else only those whose
        checkpoint child is done (its checkpoint is written at once)."""
        self._uncommitted |= touched
        now = time.monotonic()
        if self._commit_due(now):
            self._last_state_commit = now
            due, self._uncommitted = self._uncommitted | ready, set()
            return due, True
        self._uncommitted -= ready
        return ready, False

    def _commit_due(self, now: float) -> bool:
        """Has ``commit_interval_ms`` passed since the last commit of every changed partition?"""
        return now - self._last_state_commit >= self.settings.commit_interval_ms / 1000.0

    async def _load_returning_users(self, records: list[InputRecord]) -> None:
        """Read back the states of this batch's users that are not in memory (one HMGET per partition, all
        partitions in one round trip). The pipeline applies events only from records keyed by their user
        (others are re-keyed first), so the record keys name every user the batch touches. A user must never be
        rebuilt from nothing while the store holds their state: while the store is away this waits and retries
        (the batch stays unacknowledged) instead of going on without them."""
        wanted: dict[int, set[str]] = {}
        for record in records:
            state = self.partitions.get(record.partition)
            if state is not None and record.key:
                wanted.setdefault(record.partition, set()).add(record.key.decode("utf-8", "replace"))
        missing = {p: self.partitions[p].missing(ids) for p, ids in wanted.items()}
        missing = {p: ids for p, ids in missing.items() if ids}
        if not missing:
            return
        delay = 0.05
        while True:
            try:
                found = await asyncio.gather(*(self.store.load_users(p, ids) for p, ids in missing.items()))
                break
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if self.redis_healthy:
                    log.warning("state store unavailable, waiting to read returning users: %s", exc)
                self.redis_healthy = False
                metrics.SERVING_STALE.set(1)
                if self._stopping.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        for partition, blobs in zip(missing, found):
            self.partitions[partition].adopt(blobs)
            metrics.USERS_LOADED.inc(len(blobs))

    def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim >= MEMORY_TRIM_INTERVAL_S:
            self._last_trim = now
            memory.trim()
        self.collector.tick()

    async def _expire_stored_users(self) -> None:
        """Forget users idle past the expiry that are not in memory (those in memory expire in ``_idle_tick``)."""
        now = time.monotonic()
        if now - self._last_store_expiry < STORE_EXPIRY_INTERVAL_S or not self.redis_healthy:
            return
        self._last_store_expiry = now
        for partition, state in list(self.partitions.items()):
            if not state.latest_ts:
                continue
            idle_before = state.latest_ts - self.config.idle_expiry_s
            try:
                expired = await self.store.expire_users(partition, idle_before, keep=state.users.keys())
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.debug("stored users not expired: %s", exc)
                return
            metrics.USERS_EVICTED.labels("expired_in_store").inc(len(expired))

    def _count(self, n_records: int, result) -> None:
        """Add a batch to the counts waiting for the commit that writes its state (the counts only, not the batch:
        its outputs are not kept alive meanwhile)."""
        pending = self._uncounted
        pending["events"] += n_records
        pending["recommendations"] += len(result.source_times_ms)
        pending["dead_letters"] += result.dead_letters
        pending["rekeyed"] += result.rekeyed
        pending["duplicates"] += result.duplicates
        pending["ads"] += result.ad_decisions

    def _count_written(self) -> None:
        for key, n in self._uncounted.items():
            self.stats[key] += n
        metrics.RECOMMENDATIONS.inc(self._uncounted["recommendations"])
        self._uncounted = Counter()

    async def _finalize(self, sent: list[asyncio.Future], result, n_records: int, commits: list, covers_all: bool) -> None:
        """A processed batch's I/O, in the background while the next batch is processed: its outputs are acked
        before the state that produced them is committed; the commits of all due partitions go in one Redis round
        trip (each is its own MULTI). ``covers_all``: the commits hold every change so far (``_due_commits``)."""
        t0 = time.perf_counter()
        await asyncio.gather(*sent)
        now_ms = time.time() * 1000.0
        for source_ms in result.source_times_ms:
            metrics.EVENT_TO_REC.observe(max(now_ms - source_ms, 0.0) / 1000.0)
        metrics.STEP_LATENCY.labels("emit").observe(time.perf_counter() - t0)
        await asyncio.gather(*(self._write_commit(*prepared) for prepared in commits))
        metrics.USERS_IN_MEMORY.set(sum(len(s.users) for s in self.partitions.values()))
        # Counted once its state was written (or the write tried: Redis may be away), as the tests and the
        # benchmarks read it: a batch whose state waits for a later commit is counted with that one.
        self._count(n_records, result)
        if covers_all:
            self._count_written()

    def _evict_resident(self) -> None:
        for state in self.partitions.values():
            metrics.USERS_EVICTED.labels("memory_bound").inc(state.evict_resident())

    async def _settle(self) -> None:
        """Wait for the batch in flight (re-raising its failure: a batch whose outputs were not acked must not be
        followed by a commit of later state)."""
        finalizing, self._finalizing = self._finalizing, None
        if finalizing is not None:
            await finalizing

    async def _commit_partition(self, partition: int, force_checkpoint: bool = False) -> None:
        await self._settle()
        self._uncommitted.discard(partition)
        prepared = self._prepare_commit(partition, force_checkpoint)
        if prepared is not None:
            await self._write_commit(*prepared)

    def _prepare_commit(self, partition: int, force_checkpoint: bool = False):
        """The partition's commit of what changed, and its global checkpoint when one is due or ready: begun here
        and built in slices while no records wait (``checkpoint_slice_ms``), or built in a forked child
        (agents/snapshot.py) when the settings allow, either carried by the first commit after it is done; built
        here, holding the event loop, when forced (a release), after a sliced build failed, without fork, after a
        child failed, or when it is expected to take less than ``checkpoint_inline_max_ms`` (``InlineBudget``).
        Returns (partition, commit, when the checkpoint before this one was taken) or None."""
        state = self.partitions.get(partition)
        if state is None:
            return None
        now = time.monotonic()
        previous = self._last_checkpoint.get(partition, 0.0)
        snapshot = self._snapshots.get(partition)
        if snapshot is not None and (force_checkpoint or snapshot.ready):
            del self._snapshots[partition]
            blob = None if force_checkpoint else snapshot.blob
            if blob is not None:
                self.inline_budget.built_in_child(partition, len(blob))
                commit = replace(state.build_commit(with_global_checkpoint=False), global_checkpoint=(blob, snapshot.offsets))
                return partition, commit, snapshot.previous_checkpoint
            self._drop_snapshot(snapshot, failed=not force_checkpoint)
            previous, snapshot = snapshot.previous_checkpoint, None
        due = force_checkpoint or now - previous > self.settings.global_checkpoint_interval_s
        if due and snapshot is not None:
            due = False  # one is being built
        t0 = time.perf_counter()
        if due and self.checkpoint_sliced and not force_checkpoint:
            commit = state.build_commit(with_global_checkpoint=False)
            if self._snapshots:  # one build at a time (its slices, its kept rows): due again next batch
                return partition, commit, previous
            self._snapshots[partition] = SlicedSnapshot(partition, state.begin_global_checkpoint(), state.offsets, previous)
            self._last_checkpoint[partition] = now
            self._checkpoint_stall(t0)  # the snapshot's atomic part
            return partition, commit, previous
        if due and self.checkpoint_in_child and not force_checkpoint and not self.inline_budget.inline(partition):
            if self._snapshots:  # one child at a time (each one's copied pages cost memory): due again next batch
                return partition, state.build_commit(with_global_checkpoint=False), previous
            commit = state.build_commit(with_global_checkpoint=False)
            self._start_snapshots(partition, now)
            self._checkpoint_stall(t0)
            return partition, commit, previous
        if due:  # taken now, so the next batch's commit (built before this one is confirmed) has none
            self._last_checkpoint[partition] = now
        commit = state.build_commit(with_global_checkpoint=due)
        if due:  # built on the event loop: nothing else ran meanwhile (docs/performance.md)
            stall_ms = self._checkpoint_stall(t0)
            size = len(commit.global_checkpoint[0])
            self.inline_budget.built_inline(partition, size, stall_ms)
            log.info("partition %d: global checkpoint of %.2f MB built in place in %.1f ms", partition, size / 1e6, stall_ms)
        return partition, commit, previous

    def _start_snapshots(self, due: int, now: float) -> None:
        """One forked child for the checkpoints of ``due`` and of every other owned partition whose last one is at
        least half an interval old: the fork and the copy-on-write of the pages the loop touches while the child
        lives (a burst of late events, docs/performance.md) then come once per interval, not once per partition.
        The partitions fall into step after the first interval."""
        half = self.settings.global_checkpoint_interval_s / 2
        group = [p for p in sorted(self.partitions) if p == due or now - self._last_checkpoint.get(p, 0.0) >= half]
        wanted = [(p, self.partitions[p].global_blob, self.partitions[p].offsets, self._last_checkpoint.get(p, 0.0))
                  for p in group]  # fmt: skip
        self.checkpoint_forks += 1
        for partition, snapshot in zip(group, ChildSnapshot.start_many(wanted)):
            self._snapshots[partition] = snapshot
            self._last_checkpoint[partition] = now

    def _drop_snapshot(self, snapshot: ChildSnapshot, failed: bool) -> None:
        """Not written: superseded by a checkpoint forced now (a release; a child still running is killed unless
        another partition's checkpoint is built in it too), or its child failed, after which checkpoints are built
        in-process."""
        snapshot.discard()
        if failed and isinstance(snapshot, SlicedSnapshot):
            log.warning("checkpoint of partition %d failed in slices (%s): checkpoints are built whole from now on",
                        snapshot.partition, snapshot.exit_code)  # fmt: skip
            self.checkpoint_sliced = False
        elif failed:
            log.warning("checkpoint child of partition %d exited with %s: checkpoints are built in-process from now on",
                        snapshot.partition, snapshot.exit_code)  # fmt: skip
            self.checkpoint_in_child = False

    def _checkpoint_stall(self, started: float) -> float:
        """How long taking a checkpoint held the event loop (the fork, or the whole build in-process), ms."""
        seconds = time.perf_counter() - started
        metrics.STEP_LATENCY.labels("checkpoint").observe(seconds)
        self.checkpoint_stalls_ms.append(seconds * 1000.0)
        return seconds * 1000.0

    async def _write_commit(self, partition: int, commit, previous_checkpoint: float) -> None:
        state = self.partitions.get(partition)
        if state is None:
            return  # revoked meanwhile (release() settles first, so this is a late straggler): nothing to write
        t0 = time.perf_counter()
        try:
            await self.store.commit(commit)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            # Keep consuming: the state stays dirty in memory and is written when Redis is back.
            if commit.global_checkpoint is not None:
                self._last_checkpoint[partition] = previous_checkpoint  # the checkpoint is due again
            if self.redis_healthy:
                log.warning("state store unavailable, serving state is stale: %s", exc)
            self.redis_healthy = False
            metrics.SERVING_STALE.set(1)
            return
        metrics.REDIS_WRITE.observe(time.perf_counter() - t0)
        metrics.STEP_LATENCY.labels("commit").observe(time.perf_counter() - t0)
        state.committed(commit)
        if not self.redis_healthy:
            log.info("state store reachable again; pending state written")
            self.redis_healthy = True
            metrics.SERVING_STALE.set(0)

    async def embed_items(self) -> None:
        """Background: embed the item texts the hot path queued (in a thread: onnxruntime releases the GIL)."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set() and self.item_vectors is not None:
            embedded = await loop.run_in_executor(None, self.item_vectors.embed_pending)
            if not embedded:
                await asyncio.sleep(0.5)

    async def _idle_tick(self) -> None:
        self._last_idle_tick = time.monotonic()
        await self._settle()
        deadline = time.perf_counter() + PEER_ORDERS_IDLE_BUDGET_S
        while await self._apply_peer_orders() and time.perf_counter() < deadline:
            pass
        # Changes wait for ``commit_interval_ms`` here too: a stream with gaps longer than the poll wait between its
        # batches would otherwise commit after nearly every batch.
        now = time.monotonic()
        due = self._commit_due(now)
        for partition, state in list(self.partitions.items()):
            state.expire_idle(now=state.latest_ts)
            snapshot = self._snapshots.get(partition)
            changed = partition in self._uncommitted or state.has_pending
            if (changed and due) or not self.redis_healthy or (snapshot is not None and snapshot.ready):
                await self._commit_partition(partition)
        self._advance_snapshots()
        if due:
            self._last_state_commit = now
        self._uncommitted &= set(self.partitions)  # revoked meanwhile: their new owner reads them
        if not self._uncommitted:
            self._count_written()
        self._evict_resident()
        metrics.USERS_IN_MEMORY.set(sum(len(s.users) for s in self.partitions.values()))
        await self._expire_stored_users()
        self._maybe_trim()
        await self._maybe_commit_kafka()
        await self._maybe_publish_trending()

    async def _maybe_publish_trending(self) -> None:
        """The cold-start answer of the storefront API: trending items over the partitions this worker owns."""
        now = time.monotonic()
        if now - self._last_trending < TRENDING_PUBLISH_INTERVAL_S or not self.partitions or not self.redis_healthy:
            return
        self._last_trending = now
        scores: dict[str, float] = {}
        for state in self.partitions.values():
            model = state.selector.model
            latest = state.latest_ts
            if not latest:
                continue  # nothing applied since the restart and no clock saved yet
            for item, score in model.trend.top(50, latest):
                scores[item] = scores.get(item, 0.0) + score
        top = sorted(scores, key=scores.__getitem__, reverse=True)[:50]
        try:
            await self.store.publish_trending(top)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.debug("trending not published: %s", exc)

    async def _maybe_commit_kafka(self) -> None:
        """Kafka's committed offsets are for lag dashboards and tooling only: the store's offsets are the truth."""
        assert self.consumer is not None
        now = time.monotonic()
        if now - self._last_kafka_commit < KAFKA_COMMIT_INTERVAL_S:
            return
        self._last_kafka_commit = now
        offsets = {}
        for tp in self.consumer.assignment():
            state = self.partitions.get(self.state_of(tp))
            stream = self.stream_of(tp)
            if state is not None and stream in state.offsets:
                offsets[tp] = state.offsets[stream]
                highwater = self.consumer.highwater(tp)
                if highwater is not None:
                    metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(highwater - offsets[tp], 0))
        self._report_peer_lag()
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - a failed advisory commit must not stop the worker
                log.debug("kafka offset commit failed: %s", exc)
