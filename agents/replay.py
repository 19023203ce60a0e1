"""``kairos replay``: produce real (or simulated) shopper events to the input topics, keyed by user id.

The producing itself is :func:`produce_events`, reused by the demo and the benchmarks. It builds one record batch per
partition and hands it to aiokafka with ``send_batch``: measured against the embedded broker that is several times
faster than one ``send`` per event (see docs/data.md). Partitions are chosen with the Java client's murmur2 rule, so
a user's events land where any Kafka client would put them.

    kairos replay --source online_retail --rate 2000
    kairos replay --source simulated --limit 50000 --max-speed --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kairos.agents.kafka_config import kafka_client_options
from kairos.agents.settings import load_settings
from kairos.agents.topics_admin import ensure_topics
from kairos.engine.datasets import DatasetReport, default_data_dir, load_events
from kairos.engine.simulator import ShopperSimulator, with_malformed
from kairos.schemas.codec import encode
from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent
from kairos.schemas.topics import Topics

#: Events handed to the producer per step: big enough to fill record batches, small enough to keep the progress bar
#: and the rate limiter smooth.
CHUNK_SIZE = 2_000
#: Record batches up to this size (the broker default message.max.bytes is 1 MiB).
MAX_BATCH_BYTES = 512 * 1024
#: A rate-limited run sends in slices of about this length, so 1 000 events/s means 20 events every 20 ms.
RATE_SLICE_S = 0.02
#: ``--source simulated`` without ``--limit``.
DEFAULT_SIMULATED_EVENTS = 20_000

Event = ClickEvent | PurchaseEvent | ImpressionEvent


class TokenBucket:
    """A token bucket: at most ``rate`` tokens per second on average, bursts up to ``burst``.

    Debt is allowed (taking more tokens than are there makes the next wait longer), and time is measured from the
    clock at every call, so the long-run rate is exact whatever the chunk sizes and however late ``sleep`` wakes up.

    >>> clock = iter([0.0, 0.0, 0.5]).__next__
    >>> bucket = TokenBucket(rate=100, burst=10, clock=clock)
    >>> bucket.reserve(10)  # the initial burst
    0.0
    >>> bucket.reserve(60)  # 0.5 s later only `burst` tokens were saved up: 50 owed, 0.5 s to wait
    0.5
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate * 0.1)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def reserve(self, n: int) -> float:
        """Take ``n`` tokens now; returns how long to wait before using them (0 when they were there)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        return max(0.0, -self._tokens / self.rate)

    async def acquire(self, n: int) -> None:
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class ProduceReport:
    """What :func:`produce_events` sent: events per topic, malformed payloads, bytes and time."""

    sent: Counter = field(default_factory=Counter)
    malformed: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def events_per_s(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        topics = ", ".join(f"{topic}={count:,}" for topic, count in sorted(self.sent.items()))
        malformed = f" (of which {self.malformed:,} malformed)" if self.malformed else ""
        return (
            f"sent {self.total:,} records{malformed} in {self.elapsed_s:.1f} s = {self.events_per_s:,.0f}/s, "
            f"{self.bytes / 1e6:.1f} MB [{topics}]"
        )


def topic_for(event: Event | bytes, topics: Topics) -> str:
    """Clicks, purchases and impressions each have their topic; malformed payloads go to the clicks topic."""
    if isinstance(event, ClickEvent | bytes):
        return topics.clicks
    if isinstance(event, PurchaseEvent):
        return topics.purchases
    if isinstance(event, ImpressionEvent):
        return topics.impressions
    raise TypeError(f"cannot produce a {type(event).__name__}")


async def produce_events(
    producer_or_bootstrap: AIOKafkaProducer | str,
    topics: Topics,
    events: Iterable[Event | bytes],
    rate: float | None = None,
    progress: bool = True,
    *,
    total: int | None = None,
    client_options: dict | None = None,
) -> ProduceReport:
    """Produce ``events`` (records, or raw ``bytes`` for dead-letter tests) to their topics, keyed by user id.

    ``producer_or_bootstrap`` is a started producer (left running) or a ``host:port`` list (a producer is made,
    with ``client_options`` for security settings, and stopped). ``rate`` limits events per second (None: as fast as
    the broker takes them). Returns once every record is acknowledged.
    """
    own = isinstance(producer_or_bootstrap, str)
    producer = make_producer(producer_or_bootstrap, client_options) if own else producer_or_bootstrap
    if own:
        await producer.start()
    try:
        with _ProgressBar(progress, total if total is not None else _len_or_none(events)) as bar:
            return await _produce(producer, topics, events, rate, bar)
    finally:
        if own:
            await producer.stop()


def make_producer(bootstrap: str, client_options: dict | None = None) -> AIOKafkaProducer:
    """A producer tuned for bulk replay: big batches, a short linger, acks from all in-sync replicas."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=4 * MAX_BATCH_BYTES,
        request_timeout_ms=30_000,
        **(client_options or {}),
    )


async def _produce(producer: AIOKafkaProducer, topics: Topics, events, rate, bar) -> ProduceReport:
    report, partitions = ProduceReport(), _PartitionChooser(producer)
    bucket = TokenBucket(rate, burst=max(1.0, rate * RATE_SLICE_S)) if rate else None
    chunk_size = max(1, min(CHUNK_SIZE, int(rate * RATE_SLICE_S))) if rate else CHUNK_SIZE
    in_flight: list[asyncio.Future] = []
    started = time.perf_counter()
    for chunk in _chunks(events, chunk_size):
        if bucket is not None:
            await bucket.acquire(len(chunk))
        previous, in_flight = in_flight, await _send_chunk(producer, topics, chunk, partitions, report)
        await asyncio.gather(*previous)  # one chunk in flight while the next is built: bounded memory, errors surface
        bar(len(chunk))
    await asyncio.gather(*in_flight)
    report.elapsed_s = time.perf_counter() - started
    return report


async def _send_chunk(producer, topics: Topics, chunk: list, partitions, report: ProduceReport) -> list:
    """Group the chunk by (topic, partition) into record batches and submit them; returns their delivery futures."""
    batches: dict[tuple[str, int], object] = {}
    futures = []
    for event in chunk:
        topic = topic_for(event, topics)
        key, value = (None, event) if isinstance(event, bytes) else (event.user_id.encode(), encode(event))
        partition = await partitions.choose(topic, key)
        batch = batches.get((topic, partition))
        if batch is None:
            batch = batches[(topic, partition)] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start another
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a {len(value)}-byte record does not fit in an empty batch")
        report.sent[topic] += 1
        report.bytes += len(value)
        report.malformed += key is None
    for (topic, partition), batch in batches.items():
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


class _PartitionChooser:
    """The default (murmur2) partition of a key, cached per key; keyless records rotate over the partitions."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._by_key: dict[tuple[str, bytes], int] = {}
        self._next_keyless = 0

    async def choose(self, topic: str, key: bytes | None) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(await self._producer.partitions_for(topic) or ())
            if not partitions:
                raise KafkaError(f"topic {topic!r} has no partitions")
        if key is None:
            self._next_keyless += 1
            return partitions[self._next_keyless % len(partitions)]
        chosen = self._by_key.get((topic, key))
        if chosen is None:
            chosen = self._by_key[(topic, key)] = DefaultPartitioner()(key, partitions, partitions)
        return chosen


def _chunks(events: Iterable, size: int) -> Iterator[list]:
    iterator = iter(events)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _len_or_none(events) -> int | None:
    try:
        return len(events)
    except TypeError:
        return None


class _ProgressBar:
    """A rich progress bar on stderr (or nothing); calling the entered object advances it."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._task = self._progress.add_task("replay", total=total, rate="")
        self._started = time.perf_counter()
        self._done = 0

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __call__(self, n: int) -> None:
        self._done += n
        if self._progress is not None:
            rate = self._done / max(time.perf_counter() - self._started, 1e-9)
            self._progress.update(self._task, advance=n, rate=f"{rate:,.0f}/s")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


# --------------------------------------------------------------------------------------------------------------------
# The command


def add_replay_parser(subparsers) -> None:
    """Register ``kairos replay`` on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "replay",
        help="produce data-set (or simulated) events to the input topics",
        description="Replay real shopper events (Online Retail, Taobao) or SIMULATED ones to the clicks / purchases "
        "topics, as JSON keyed by user id. Needs a running broker (KAIROS_KAFKA_BOOTSTRAP_SERVERS or --bootstrap).",
    )
    parser.add_argument("--data-dir", type=Path, help="data sets directory (default: ../shared/data if it exists)")
    parser.add_argument("--source", choices=["online_retail", "taobao", "all", "simulated"], default="all")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=_positive_float, metavar="EVENTS_PER_S", help="events per second")
    speed.add_argument("--max-speed", action="store_true", help="as fast as the broker takes them (the default)")
    parser.add_argument("--limit", type=_positive_int, help="stop after N events")
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="overrides KAIROS_KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topic-prefix", help="overrides KAIROS_TOPIC_PREFIX")
    parser.add_argument("--malformed-fraction", type=_fraction, default=0.0,
                        help="slip in this fraction of malformed payloads, for the dead-letter path (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_replay)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def run_replay(args: argparse.Namespace) -> int:
    """The ``replay`` command: exit status 0 on success, 2 on a usage or configuration error, 1 on a broker error."""
    settings = load_settings(**({"topic_prefix": args.topic_prefix} if args.topic_prefix else {}))
    bootstrap = args.bootstrap or settings.kafka_bootstrap_servers
    if not bootstrap:
        print("kairos replay: no Kafka broker configured: set KAIROS_KAFKA_BOOTSTRAP_SERVERS (or --bootstrap) "
              "or use `kairos demo`, which starts an embedded broker", file=sys.stderr)
        return 2
    try:
        events, origin = replay_events(args.source, args.data_dir, args.limit, args.seed)
    except FileNotFoundError as exc:
        print(f"kairos replay: {exc}", file=sys.stderr)
        return 2
    print(origin)
    if args.malformed_fraction:
        events = list(with_malformed(events, args.malformed_fraction, seed=args.seed))
    options = kafka_client_options(settings)
    try:
        topics = settings.topics
        asyncio.run(ensure_topics(settings, bootstrap))  # missing topics created, co-partitioning checked
        report = asyncio.run(produce_events(bootstrap, topics, events, rate=args.rate, progress=not args.no_progress,
                                            client_options=options))
    except (KafkaConnectionError, KafkaError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
        print(f"kairos replay: broker {bootstrap} failed: {exc!r}", file=sys.stderr)
        return 1
    print(f"replay done: {report.summary()}")
    return 0


def replay_events(source: str, data_dir: Path | None, limit: int | None, seed: int = 0) -> tuple[list, str]:
    """The events to replay and one line saying where they come from (SIMULATED said plainly)."""
    data_dir = data_dir or default_data_dir()
    if source != "simulated" and data_dir is not None:
        report = DatasetReport()
        events = load_events(data_dir, source, limit=limit, report=report)
        return events, f"REAL data from {data_dir} ({source}): {report.summary()}"
    n = limit or DEFAULT_SIMULATED_EVENTS
    simulator = ShopperSimulator(seed=seed, data_dir=data_dir)
    why = "as asked" if source == "simulated" else f"no data directory found (source {source} needs ../shared/data)"
    return list(simulator.events(n)), f"SIMULATED data ({why}): {n:,} events from ShopperSimulator(seed={seed})"
