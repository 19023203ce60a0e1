"""Shared wiring for the commands that run the pipeline: services (embedded or configured), a worker, the copy
agent as a child process, and monitors that read the recommendations topic the way a storefront would (measuring
event -> output latency) and the copies topic (which copy the generator wrote).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from kairos.agents.copy_feed import CopyFeed
from kairos.agents.embedded import embedded_services, log_tail
from kairos.agents.kafka_config import kafka_client_options, stop_reader
from kairos.agents.redis_store import RedisStateStore
from kairos.agents.settings import Settings
from kairos.agents.topics_admin import ensure_topics
from kairos.agents.worker import IngestWorker
from kairos.engine.copywriting import CopyBook
from kairos.schemas.keys import RedisKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    bootstrap: str
    redis_url: str
    embedded_kafka: bool
    embedded_redis: bool


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[Services]:
    """The configured Kafka and Redis, or embedded ones for whatever is not configured."""
    want_kafka, want_redis = settings.wants_embedded_kafka, settings.wants_embedded_redis
    with embedded_services(kafka=want_kafka, redis=want_redis) as (kafka, redis_url):
        yield Services(
            bootstrap=kafka or settings.kafka_bootstrap_servers or "",
            redis_url=redis_url or settings.redis_url or "",
            embedded_kafka=want_kafka,
            embedded_redis=want_redis,
        )


def make_store(settings: Settings, redis_url: str) -> RedisStateStore:
    return RedisStateStore.from_url(redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group), settings.serving_ttl_s)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, svc: Services, ready_timeout_s: float = 60.0) -> AsyncIterator[IngestWorker]:
    """Create topics, start a worker, wait until it owns partitions; stop and commit on exit."""
    counts = await ensure_topics(settings, svc.bootstrap)
    store = make_store(settings, svc.redis_url)
    worker = IngestWorker(settings, svc.bootstrap, store)
    await worker.start(counts)
    task = asyncio.create_task(worker.run(), name="ingest-worker")
    try:
        await asyncio.wait_for(worker.ready.wait(), ready_timeout_s)
        yield worker
    finally:
        worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10.0)
        await worker.close()
        await store.close()


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, svc: Services, ready_timeout_s: float = 60.0, web_port: int | None = None, roles=None
):
    """The Faust application (ingest service, and the copy agent unless ``roles`` leaves it out) started in this
    event loop; yields the app once its ingest worker owns partitions. ``app.ingest_worker`` has the live counters."""
    import faust

    from kairos.agents.app import ROLES, create_app

    app = create_app(settings, svc.bootstrap, svc.redis_url, web_port=web_port, roles=roles or ROLES)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
    task = asyncio.ensure_future(worker.start())
    try:
        ok = await wait_for(lambda: getattr(app, "ingest_worker", None) is not None and app.ingest_worker.ready.is_set() or task.done(), ready_timeout_s)
        if not ok or task.done():
            raise RuntimeError("the Kairos Faust app did not become ready")
        yield app
    finally:
        await worker.stop()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10.0)


class CopyAgentProcess:
    """``python -m kairos worker --roles copy`` as a child process on ``svc``'s broker and Redis: text generation
    in its own process, off the hot path's GIL (``kairos demo``; in production it is its own deployment).

    Its stdout and stderr go to ``log_path``; it writes ``log_path`` with the suffix ``.ready`` (a JSON line: pid,
    copy writer, copy-requests partitions) once its ``write_copy`` agent has its partitions. It runs at
    ``niceness`` (the hot path wins the CPU when both want it: copy is never waited for) and gets SIGTERM if this
    process dies without stopping it (Linux). :meth:`stop` always ends it: SIGTERM, then SIGKILL after a timeout.
    ``env``: the child's whole environment (default :func:`copy_agent_environment`).
    """

    def __init__(self, settings: Settings, svc: Services, log_path: Path, niceness: int = 10,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.log_path = Path(log_path)
        self.ready_path = self.log_path.with_suffix(".ready")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ready_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "kairos", "worker", "--roles", "copy", "--beside-hot-path",
                "--ready-file", str(self.ready_path)]  # fmt: skip
        with open(self.log_path, "wb") as log_file:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                argv, env=env or copy_agent_environment(settings, svc), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, preexec_fn=_child_setup(niceness),
            )  # fmt: skip
        self.started = time.monotonic()

    @classmethod
    async def start(cls, settings: Settings, svc: Services, log_path: Path, **options) -> "CopyAgentProcess":
        """Create the topics first, then the child: a copy agent that subscribed before copy-requests existed got
        it created with 4 partitions on the embedded broker, whatever ``settings.partitions`` said."""
        await ensure_topics(settings, svc.bootstrap)
        return cls(settings, svc, log_path, **options)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_ready(self, timeout_s: float) -> dict:
        """The child's ready line once written; RuntimeError saying why if it exits first or is not ready within
        ``timeout_s`` of its start (:meth:`log_tail` has its own words)."""
        while time.monotonic() < self.started + timeout_s:
            if self.ready_path.exists():
                return orjson.loads(self.ready_path.read_bytes())
            if self.process.poll() is not None:
                raise RuntimeError(f"it exited with status {self.process.returncode}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"not ready {timeout_s:.0f} s after its start")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (Faust leaves the group and commits), SIGKILL if still running after ``timeout_s``; returns the
        exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            try:
                self.process.wait(timeout_s)
                log.info("the copy agent (pid %d) stopped %.1f s after SIGTERM", self.pid, time.monotonic() - asked)
            except subprocess.TimeoutExpired:
                log.warning("the copy agent (pid %d) did not stop in %.0f s: killed", self.pid, timeout_s)
                self.process.kill()
                self.process.wait(timeout_s)
        self.ready_path.unlink(missing_ok=True)
        return self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)


def copy_agent_environment(settings: Settings, svc: Services) -> dict[str, str]:
    """``worker_environment`` on ``svc``'s broker and Redis (embedded ones included: the child must not start its
    own), with absolute model and data directories."""
    from kairos.agents.ops import worker_environment

    data_dir = settings.resolved_data_dir()
    pointed = settings.model_copy(update={
        "kafka_bootstrap_servers": svc.bootstrap, "redis_url": svc.redis_url, "model_dir": settings.model_dir.resolve(),
        "data_dir": data_dir.resolve() if data_dir is not None else None,
    })  # fmt: skip
    return worker_environment(pointed, log_level=settings.log_level)


def _child_setup(niceness: int):
    """A ``preexec_fn``: the child runs at ``niceness`` (set before it starts any thread: Linux nices per thread)
    and gets SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), so a demo killed with SIGKILL leaves no
    copy agent behind. libc is loaded before the fork."""
    libc = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1

    def setup() -> None:
        os.nice(niceness)
        if libc is not None:
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return setup


class CopySourceMonitor(CopyFeed):
    """Reads the copies topic from the start, as every worker's copy feed does, and keeps what ``kairos demo``
    reports: records per source (``generated`` / ``template``) and which (item, text) pairs the generator wrote,
    so a recommended item's copy can be told apart (a recommendation carries the text, not where it came from)."""

    #: Generated (item, text) pairs remembered at most; the oldest go first (a long demo run stays bounded, and a
    #: recommendation shows recent copy).
    MAX_GENERATED = 100_000

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        super().__init__(settings, bootstrap, CopyBook())
        self.sources: Counter = Counter()
        self.generated: dict[tuple[str, str], None] = {}  # an insertion-ordered set

    def _apply(self, value: bytes | None) -> None:
        try:
            data = orjson.loads(value or b"")
            source, kind = str(data["source"]), data.get("kind", "product")
            self.sources[f"{kind}:{source}"] += 1
            if source == "generated" and kind == "product":
                pair = (str(data["item_id"]), str(data["text"]))
                self.generated.pop(pair, None)  # re-inserted as the newest
                self.generated[pair] = None
                if len(self.generated) > self.MAX_GENERATED:
                    del self.generated[next(iter(self.generated))]
            self.received += 1
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed copy record: %s", exc)

    def is_generated(self, item_id: str, text: str | None) -> bool:
        return text is not None and (item_id, text) in self.generated


#: Records the recommendation monitor takes per read.
MONITOR_MAX_RECORDS = 5000


@dataclass
class RecommendationMonitor:
    """Consumes the recommendations topic; keeps latencies (output append time - source ingest time) and the
    latest example recommendations."""

    settings: Settings
    bootstrap: str
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=200_000))
    examples: dict = field(default_factory=dict)
    received: int = 0
    #: Only recommendations of events ingested after this (epoch s) count: on Tansu ``seek_to_end`` lands inside
    #: the last batch (its ListOffsets bug, ../shared/notes/broker.md), so older records can still be read.
    since: float = 0.0
    #: How long the broker may hold the monitor's fetch. Latencies are taken from the recommendations' timestamps,
    #: so a long wait delays only the count, and on the embedded broker each fetch scans the whole recommendations
    #: log: at 20 ms the monitor alone cost the broker a sizeable share of a core that the worker shares.
    fetch_max_wait_ms: int = 250
    #: Seconds between the monitor's reads (0: read again at once). The embedded broker answers a fetch as soon as
    #: it finds data, so with recommendations flowing a long wait alone does not make fetches rare; a monitor
    #: that only counts (the benchmark) reads once a second, and aiokafka fetches nothing more meanwhile (one fetch
    #: in flight, then it waits for its records to be taken).
    poll_interval_s: float = 0.0
    #: With a copy source (``kairos demo``; none in the benchmark): (item, copy text) of every recommended item
    #: counted in ``copies``, and the latest recommendations with generated copy in their top 5 kept.
    copy_source: CopySourceMonitor | None = None
    copies: Counter = field(default_factory=Counter)
    with_generated_copy: deque = field(default_factory=lambda: deque(maxlen=5))
    _task: asyncio.Task | None = None
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.settings.topics.recommendations,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            **kafka_client_options(self.settings),
        )
        await self._consumer.start()
        await self._consumer.seek_to_end()
        self.since = time.time()
        self._task = asyncio.create_task(self._run(), name="rec-monitor")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=MONITOR_MAX_RECORDS)
            for records in batches.values():
                for record in records:
                    self._observe(record)
            if self.poll_interval_s > 0 and sum(map(len, batches.values())) < MONITOR_MAX_RECORDS:
                await asyncio.sleep(self.poll_interval_s)  # (a full read: more is waiting, read on)

    def _observe(self, record) -> None:
        rec = orjson.loads(record.value)
        ingested = rec["source"].get("ingested_at")
        if not ingested or ingested < self.since:
            return
        self.latencies_ms.append(record.timestamp - ingested * 1000.0)
        self.received += 1
        if self.copy_source is not None:
            pairs = [(item["item_id"], item.get("copy")) for item in rec["items"]]
            self.copies.update(pairs)
            if any(self.copy_source.is_generated(item, text) for item, text in pairs[:5]):
                self.with_generated_copy.append(rec)
        if rec["items"]:
            self.examples[rec["user_id"]] = rec
            if len(self.examples) > 50:
                self.examples.pop(next(iter(self.examples)))

    def percentiles(self, last: int | None = None) -> tuple[float, float]:
        values = list(self.latencies_ms)[-last:] if last else list(self.latencies_ms)
        if not values:
            return float("nan"), float("nan")
        p50, p99 = np.percentile(np.asarray(values), [50, 99])
        return float(p50), float(p99)

    async def stop(self) -> None:
        await stop_reader(self._task, self._consumer)


async def wait_for(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return predicate()
