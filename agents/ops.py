"""Operations commands: ``kairos api``, ``kairos dlq replay``, ``kairos bench api``, ``kairos soak``, the
ScoredCreative JSON Schema export, and a minimal worker entry point (``python -m kairos.agents.ops worker``) that
the fault tests run as a subprocess and SIGKILL.

Each command is a function ``(args) -> int``; :func:`register` adds them to the CLI's argparse tree.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

import orjson

from kairos.agents.settings import Settings, load_settings
from kairos.schemas.ads import ScoredCreative

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# The ad-exchange feed's schema
# ---------------------------------------------------------------------------------------------------------------


def scored_creative_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of the records on the ad-scores topic (``Settings().topics.ad_scores``).

    >>> scored_creative_json_schema()["properties"]["schema_version"]["const"]
    1
    """
    schema = ScoredCreative.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://kairos.example/schemas/scored-creative.v1.json"
    schema["description"] = (
        "One record per ad request on the ad-scores topic, keyed by user id, JSON (UTF-8). "
        + (ScoredCreative.__doc__ or "").strip().split("\n\n")[0]
    )
    return schema


def export_schemas(out_dir: Path) -> list[Path]:
    """Write the ad-exchange schema to ``out_dir/scored-creative.json`` (the lead's schemas/jsonschema/)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "scored-creative.json"
    path.write_text(json.dumps(scored_creative_json_schema(), indent=2, sort_keys=True) + "\n")
    return [path]


# ---------------------------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------------------------


def api_command(args) -> int:
    """``kairos api``: serve the storefront API (and the dashboard) with the configured Kafka and Redis."""
    from kairos.agents.api import create_app, serve
    from kairos.agents.dashboard import DashboardApp
    from kairos.agents.privacy import install_log_redaction

    settings = load_settings()
    logging.basicConfig(level=settings.log_level)
    install_log_redaction(settings)
    if not settings.redis_url:
        print("KAIROS_REDIS_URL is not set: GET recommendations will answer 503", file=sys.stderr)
    app = create_app(settings)
    if args.scrape:
        app.dashboard = DashboardApp(scrape_urls=args.scrape)
    serve(app, host=args.host, port=args.port or settings.http_port)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Worker entry point (subprocess for fault tests and compose)
# ---------------------------------------------------------------------------------------------------------------


async def run_worker(settings: Settings, stop: asyncio.Event, announce: Callable[[str], None] = print) -> dict:
    """Run one ingest worker until ``stop`` is set; returns its stats. Prints ``ready`` once it owns partitions."""
    from kairos.agents.redis_store import RedisStateStore
    from kairos.agents.topics_admin import ensure_topics
    from kairos.agents.worker import IngestWorker
    from kairos.schemas.keys import RedisKeys

    bootstrap, redis_url = settings.kafka_bootstrap_servers, settings.redis_url
    if not bootstrap or not redis_url:
        raise SystemExit("the worker needs KAIROS_KAFKA_BOOTSTRAP_SERVERS and KAIROS_REDIS_URL")
    counts = await ensure_topics(settings, bootstrap)
    store = RedisStateStore.from_url(redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group), settings.serving_ttl_s)
    worker = IngestWorker(settings, bootstrap, store)
    await worker.start(counts)
    task = asyncio.create_task(worker.run())
    await asyncio.wait([asyncio.ensure_future(worker.ready.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    announce("ready")
    await asyncio.wait([asyncio.ensure_future(stop.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    worker.stop()
    await task
    await worker.close()
    await store.close()
    return dict(worker.stats)


def worker_environment(settings: Settings, log_level: str = "INFO") -> dict[str, str]:
    """The environment of a worker subprocess (``python -m kairos.agents.ops worker`` in the soak and the fault
    tests, ``python -m kairos worker --roles copy`` in ``kairos demo``): this process's without its own
    ``KAIROS_*`` variables, plus what a worker needs from ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}
    env.update(
        KAIROS_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers or "",
        KAIROS_REDIS_URL=settings.redis_url or "",
        KAIROS_TOPIC_PREFIX=settings.topic_prefix,
        KAIROS_CONSUMER_GROUP=settings.consumer_group,
        KAIROS_PARTITIONS=str(settings.partitions),
        KAIROS_SESSION_TIMEOUT_MS=str(settings.session_timeout_ms),
        KAIROS_HEARTBEAT_INTERVAL_MS=str(settings.heartbeat_interval_ms),
        KAIROS_MODEL_DIR=str(settings.model_dir),
        KAIROS_MAX_RESIDENT_USERS_PER_PARTITION=str(settings.max_resident_users_per_partition),
        KAIROS_MAX_ITEMS_PER_PARTITION=str(settings.max_items_per_partition),
        KAIROS_GLOBAL_CHECKPOINT_INTERVAL_S=str(settings.global_checkpoint_interval_s),
        KAIROS_CHECKPOINT_SLICE_MS=str(settings.checkpoint_slice_ms),
        KAIROS_CHECKPOINT_IN_CHILD=str(settings.checkpoint_in_child).lower(),
        KAIROS_CHECKPOINT_INLINE_MAX_MS=str(settings.checkpoint_inline_max_ms),
        KAIROS_RECOMMEND_EVERY_EVENT=str(settings.recommend_every_event).lower(),
        KAIROS_SHARED_DISCOVERY=str(settings.shared_discovery).lower(),
        KAIROS_ONNX_THREADS=str(settings.onnx_threads),
        KAIROS_EXPLORATION_EPSILON=str(settings.exploration_epsilon),
        KAIROS_EXPLORATION_SD=str(settings.exploration_sd),
        KAIROS_EXPLORATION_DRAWS=str(settings.exploration_draws),
        KAIROS_COPY_IN_FLIGHT=str(settings.copy_in_flight),
        KAIROS_COPY_ANSWER_TIMEOUT_S=str(settings.copy_answer_timeout_s),
        KAIROS_COPY_MIN_LOGPROB=str(settings.copy_min_logprob),
        # the hot path's shape: a worker child must rank and fetch as its parent's settings say
        KAIROS_MAX_CANDIDATES=str(settings.max_candidates),
        KAIROS_BATCH_MAX_RECORDS=str(settings.batch_max_records),
        KAIROS_COMMIT_INTERVAL_MS=str(settings.commit_interval_ms),
        KAIROS_FETCH_MAX_WAIT_MS=str(settings.fetch_max_wait_ms),
        KAIROS_KAFKA_SECURITY_PROTOCOL=settings.kafka_security_protocol,
        KAIROS_LOG_LEVEL=log_level,
    )
    optional = {
        "KAIROS_DATA_DIR": settings.data_dir,  # unset: the worker finds the default data directory itself
        "KAIROS_INPUT_PARTITIONS": settings.input_partitions,
        # unset: the child picks its floor itself (it sees a configured broker: pass the floor for an embedded one)
        "KAIROS_FETCH_MIN_WAIT_MS": settings.fetch_min_wait_ms,
        "KAIROS_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "KAIROS_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "KAIROS_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
        "KAIROS_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
    }
    env.update({name: str(value) for name, value in optional.items() if value is not None})
    return env


def worker_command(args) -> int:
    from kairos.agents.privacy import install_log_redaction

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
    install_log_redaction(settings)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)

    async def main() -> dict:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_worker(settings, stop, announce=lambda line: print(line, flush=True))

    stats = asyncio.run(main())
    print(json.dumps(stats), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Dead-letter replay
# ---------------------------------------------------------------------------------------------------------------

Fix = Callable[[dict], dict | None]


def fix_ms_timestamps(payload: dict) -> dict:
    """Events sent with millisecond timestamps (the most common producer bug) -> seconds."""
    ts = payload.get("ts")
    if isinstance(ts, (int, float)) and ts > 1e11:
        return {**payload, "ts": ts / 1000.0}
    return payload


def fix_drop_unknown_fields(payload: dict) -> dict:
    """Drop top-level fields the event's schema does not know (a producer on a newer, additive version)."""
    from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent

    model = {"click": ClickEvent, "purchase": PurchaseEvent, "impression": ImpressionEvent}.get(payload.get("kind"))
    if model is None:
        return payload
    return {k: v for k, v in payload.items() if k in model.model_fields}


BUILTIN_FIXES: dict[str, Fix] = {"ms-timestamps": fix_ms_timestamps, "drop-unknown-fields": fix_drop_unknown_fields}


def load_fix(spec: str) -> Fix:
    """A built-in fix by name, or ``package.module:function`` taking and returning the event as a dict."""
    if spec in BUILTIN_FIXES:
        return BUILTIN_FIXES[spec]
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"unknown fix {spec!r}: use one of {sorted(BUILTIN_FIXES)} or module:function")
    return getattr(importlib.import_module(module), name)


def _apply_fixes(raw: bytes, fixes: list[Fix]) -> bytes:
    if not fixes:
        return raw
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw  # nothing a dict-level fix can do; re-validation reports it again
    for fix in fixes:
        if not isinstance(payload, dict):
            return raw
        payload = fix(payload)
        if payload is None:
            return b""
    return orjson.dumps(payload)


async def read_dead_letters(settings: Settings, bootstrap: str, idle_timeout_s: float = 3.0) -> list[dict]:
    """Every dead letter currently on the topic, read without a consumer group (replay must not move offsets).

    The end is detected from fetch high watermarks, not ListOffsets (wrong on the embedded broker, see
    docs/operations.md): done when every partition's position reached its high watermark, or after
    ``idle_timeout_s`` without records.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from kairos.agents.kafka_config import kafka_client_options

    topic = settings.topics.dead_letters
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", **kafka_client_options(settings))  # fmt: skip
    await consumer.start()
    letters: list[dict] = []
    try:
        await consumer.topics()  # fetches metadata, so partitions_for_topic knows the topic
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_timeout_s:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                letters += [orjson.loads(r.value) for r in batch]
                idle_since = time.monotonic()
            if await _at_high_watermarks(consumer, partitions):
                break
    finally:
        await consumer.stop()
    return letters


async def _at_high_watermarks(consumer, partitions) -> bool:
    for tp in partitions:
        mark = consumer.highwater(tp)
        if mark is None or await consumer.position(tp) < mark:
            return False
    return True


async def replay_dead_letters(
    settings: Settings,
    bootstrap: str,
    fixes: list[Fix] | None = None,
    error_classes: set[str] | None = None,
    dry_run: bool = False,
) -> dict:
    """Re-validate (after ``fixes``) the dead letters and produce the now-valid events to their original topic,
    keyed by user id. Still-invalid letters stay where they are (re-dead-lettering them would loop)."""
    import base64

    from aiokafka import AIOKafkaProducer

    from kairos.agents.kafka_config import producer_options
    from kairos.engine import metrics
    from kairos.schemas.codec import InvalidEvent, decode_event, encode

    letters = await read_dead_letters(settings, bootstrap)
    kinds = {settings.topics.clicks: {"click"}, settings.topics.purchases: {"purchase"}, settings.topics.impressions: {"impression"}}
    counts = {"read": len(letters), "replayed": 0, "still_invalid": 0, "skipped": 0}
    reasons: dict[str, int] = {}
    out: list[tuple[str, bytes, bytes, list]] = []
    for letter in letters:
        if error_classes and letter["error_class"] not in error_classes:
            counts["skipped"] += 1
            continue
        raw = _apply_fixes(base64.b64decode(letter.get("raw", "")), fixes or [])
        try:
            event = decode_event(raw, expected_kinds=frozenset(kinds.get(letter["topic"], {"click", "purchase", "impression"})))
        except InvalidEvent as exc:
            counts["still_invalid"] += 1
            reasons[exc.error_class] = reasons.get(exc.error_class, 0) + 1
            continue
        origin = f"{letter['topic']}/{letter['partition']}/{letter['offset']}".encode()
        out.append((letter["topic"], event.user_id.encode(), encode(event), [("kairos-replayed-from", origin)]))
    if out and not dry_run:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_options(settings))
        await producer.start()
        try:
            futures = [await producer.send(t, v, key=k, headers=h) for t, k, v, h in out]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
    counts["replayed"] = 0 if dry_run else len(out)
    counts["would_replay"] = len(out)
    metrics.DLQ_REPLAYED.labels("replayed").inc(counts["replayed"])
    metrics.DLQ_REPLAYED.labels("still_invalid").inc(counts["still_invalid"])
    return {**counts, "still_invalid_by_class": reasons, "dry_run": dry_run}


def dlq_replay_command(args) -> int:
    settings = load_settings()
    if not settings.kafka_bootstrap_servers:
        raise SystemExit("kairos dlq replay needs KAIROS_KAFKA_BOOTSTRAP_SERVERS")
    fixes = [load_fix(spec) for spec in args.fix or []]
    classes = set(args.error_class) if args.error_class else None
    result = asyncio.run(replay_dead_letters(settings, settings.kafka_bootstrap_servers, fixes, classes, args.dry_run))
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# kairos bench api
# ---------------------------------------------------------------------------------------------------------------


def _bench_payload(user: str, rng: random.Random, n_items: int = 10) -> bytes:
    items = [
        {"item_id": f"item-{rng.randrange(50_000)}", "score": round(1.0 - k / 20, 4), "rank": k, "reasons": ["category:home"]}
        for k in range(1, n_items + 1)
    ]
    source = {"topic": "kairos.clicks", "partition": 0, "offset": 1, "event_id": "e", "event_ts": 1.7e9}
    return orjson.dumps(
        {"schema_version": 1, "rec_id": f"{user}.1", "user_id": user, "items": items, "model_version": "bench",
         "state_version": 1, "source": source, "produced_at": 1.7e9}  # fmt: skip
    )


async def fill_serving(redis_url: str, settings: Settings, users: int, seed: int = 0) -> None:
    """Write ``users`` serving records (10 items each) and a trending list, pipelined in chunks."""
    import redis.asyncio as aioredis

    from kairos.schemas.keys import RedisKeys

    keys = RedisKeys(settings.topic_prefix, settings.consumer_group)
    rng = random.Random(seed)
    client = aioredis.Redis.from_url(redis_url)
    for start in range(0, users, 5000):
        async with client.pipeline(transaction=False) as pipe:
            for k in range(start, min(start + 5000, users)):
                user = f"user-{k}"
                pipe.hset(keys.serving(user), mapping={"ts": 1.7e9, "seq": 1, "rec": _bench_payload(user, rng)})
            await pipe.execute()
    await client.set(keys.trending(), orjson.dumps([f"item-{k}" for k in range(50)]))
    await client.aclose()


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


def bench_api_command(args) -> int:
    """Embedded redis with ``--users`` users -> API server process -> load generator process; last line JSON."""
    from kairos.agents.embedded import free_port, start_redis

    placement = _bench_placement() if args.pin else None
    workdir = Path(tempfile.mkdtemp(prefix="kairos-bench-api-"))
    redis = start_redis(workdir)
    settings = Settings(redis_url=redis.address, topic_prefix="bench")
    server = None
    try:
        t0 = time.perf_counter()
        asyncio.run(fill_serving(redis.address, settings, args.users))
        print(f"filled {args.users} users in {time.perf_counter() - t0:.1f}s", flush=True)
        port = free_port()
        env = {**os.environ, "KAIROS_REDIS_URL": redis.address, "KAIROS_TOPIC_PREFIX": "bench"}
        env.pop("KAIROS_API_TOKEN", None)
        env.pop("KAIROS_KAFKA_BOOTSTRAP_SERVERS", None)
        server = subprocess.Popen([sys.executable, "-m", "kairos.agents.ops", "serve-api", "--port", str(port)], env=env)
        _place_bench_processes(args, placement, server.pid, redis.process.pid)
        _wait_http(f"http://127.0.0.1:{port}/healthz", 20)
        gen = subprocess.run(
            [sys.executable, "-m", "kairos.agents.ops", "loadgen", "--port", str(port), "--rate", str(args.rate),
             "--seconds", str(args.seconds), "--users", str(args.users), "--connections", str(args.connections),
             *(["--cpu", str(placement["client"])] if placement else []), *(["--realtime"] if args.realtime else [])],
            capture_output=True, text=True, timeout=args.seconds + 60, check=True,
        )  # fmt: skip
        result = json.loads(gen.stdout.strip().splitlines()[-1])
        result.update(_server_side_latency(port))
        result.update(pinned=bool(placement), realtime=args.realtime)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        redis.stop()
    print(
        f"GET /v1/users/{{id}}/recommendations at {args.rate}/s for {args.seconds}s, {args.users} users, "
        f"{args.connections} keep-alive connections: p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
        f"p99.9 {result['p999_ms']:.3f} ms  max {result['max_ms']:.3f} ms  {result['requests_per_s']:.0f} req/s  "
        f"errors {result['errors']}\n  client lateness (due -> sent): p50 {result['late_p50_ms']:.3f} ms  "
        f"p99 {result['late_p99_ms']:.3f} ms  p99.9 {result['late_p999_ms']:.3f} ms;  from due: "
        f"p99 {result['from_due_p99_ms']:.3f} ms  (server-side histogram: p50 {result['server_p50_ms']} ms  "
        f"p99 {result['server_p99_ms']} ms)"
    )
    print(json.dumps(result))
    return 0


def _bench_placement() -> dict | None:
    """``--pin``: the API alone on the last allowed CPU, redis-server and the load generator on the first (per
    request the API does most of the work; redis answers an HGET in microseconds)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print(f"--pin ignored: only CPU {cpus} available", file=sys.stderr)
        return None
    return {"api": cpus[-1], "redis": cpus[0], "client": cpus[0]}


def _place_bench_processes(args, placement: dict | None, api_pid: int, redis_pid: int) -> None:
    if placement:
        pin_process(api_pid, placement["api"])
        pin_process(redis_pid, placement["redis"])
        print(f"pinned: API on CPU {placement['api']}, redis-server and load generator on CPU {placement['redis']}")
    if args.realtime:
        for pid in (api_pid, redis_pid):
            make_realtime(pid)
        print(f"SCHED_FIFO priority {REALTIME_PRIORITY}: API, redis-server and load generator")


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` (threads already started keep their own mask) to ``cpu``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


#: ``--realtime``: a low real-time priority, above every normal (SCHED_OTHER) process, below kernel threads.
REALTIME_PRIORITY = 10


def make_realtime(pid: int) -> None:
    """SCHED_FIFO for every thread of ``pid`` (0 = this process): it runs as soon as it is woken, ahead of other
    jobs on a shared machine. Needs root or CAP_SYS_NICE; the kernel's real-time throttling still leaves other
    processes 5% of each CPU if it spins."""
    pid = pid or os.getpid()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except PermissionError:
        raise SystemExit("--realtime needs root or CAP_SYS_NICE (SCHED_FIFO)") from None


def _server_side_latency(port: int) -> dict:
    """p50/p99 of the server's own request histogram (ASGI app time, without HTTP parsing or the network)."""
    from prometheus_client.parser import text_string_to_metric_families

    from kairos.agents.dashboard import quantile

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    series = {
        float(s.labels["le"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "kairos_api_request_seconds_bucket" and s.labels.get("route") == "/v1/users/{user_id}/recommendations"
    }
    p50, p99 = quantile(0.5, series), quantile(0.99, series)
    return {"server_p50_ms": round(p50 * 1000, 4) if p50 else None, "server_p99_ms": round(p99 * 1000, 4) if p99 else None}


def _bench_requests(count: int, users: int, hot_fraction: float = 0.95, seed: int = 1) -> list[bytes]:
    """Request bytes built before the clock starts (95% known users, 5% cold start): the client formats nothing
    while it is timing."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        user = f"user-{rng.randrange(users)}" if rng.random() < hot_fraction else f"new-{rng.randrange(10**9)}"
        requests.append(f"GET /v1/users/{user}/recommendations?n=10 HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    return requests


class _OpenLoopLoad:
    """Shared state of the load generator's connections: idle ones, requests waiting for a free one, samples.

    A sample is ``(due, sent, answered, ok)`` in ``time.perf_counter()`` seconds.
    """

    def __init__(self) -> None:
        self.idle: deque[_BenchConnection] = deque()
        self.waiting: deque[tuple[bytes, float]] = deque()
        self.samples: list[tuple[float, float, float, bool]] = []
        self.lost = 0

    def submit(self, request: bytes, due: float) -> None:
        if self.idle:
            self.idle.popleft().send(request, due)
        else:  # every connection busy: sent when one frees up, and the lateness shows it
            self.waiting.append((request, due))

    def done(self, connection: _BenchConnection) -> None:
        if self.waiting:
            connection.send(*self.waiting.popleft())
        else:
            self.idle.append(connection)


class _BenchConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: writes pre-built requests, reads only the status line and
    Content-Length of each answer; the receive time is taken first thing in the callback."""

    def __init__(self, load: _OpenLoopLoad) -> None:
        self.load = load
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.due = self.sent = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.load.idle.append(self)

    def send(self, request: bytes, due: float) -> None:
        self.due, self.sent = due, time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        answered = time.perf_counter()
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        size = end + 4 + (int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0)
        if len(self.buffer) < size:
            return
        del self.buffer[:size]
        self.load.samples.append((self.due, self.sent, answered, head.startswith(b"http/1.1 200")))
        self.load.done(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost += 1


async def open_loop_load(port: int, requests: list[bytes], rate: float, seconds: float, connections: int) -> _OpenLoopLoad:
    """Send ``requests`` (cycled) at a steady ``rate``: request k is due at t0 + k/rate whatever the answers do
    (open loop), on ``connections`` keep-alive connections opened before t0."""
    loop = asyncio.get_running_loop()
    load = _OpenLoopLoad()
    transports = [(await loop.create_connection(lambda: _BenchConnection(load), "127.0.0.1", port))[0]
                  for _ in range(connections)]  # fmt: skip
    total = int(rate * seconds)
    t0 = time.perf_counter() + 0.05
    for k in range(total):
        due = t0 + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        load.submit(requests[k % len(requests)], due)
    deadline = time.perf_counter() + 10.0
    while len(load.samples) < total and time.perf_counter() < deadline and load.lost == 0:
        await asyncio.sleep(0.005)
    for transport in transports:
        transport.close()
    return load


def _quantile(values: list[float], p: float) -> float:
    return round(values[min(int(p * len(values)), len(values) - 1)], 4) if values else float("nan")


def summarize_load(load: _OpenLoopLoad, total: int, warmup_s: float) -> dict:
    """Latency (sent -> last body byte), lateness (due -> sent: the client's own delay) and latency counted from
    the due time (what a shopper arriving at that moment would wait), after ``warmup_s`` seconds."""
    start = min((s[0] for s in load.samples), default=0.0) + warmup_s
    kept = [s for s in load.samples if s[0] >= start]
    latency = sorted(1000 * (answered - sent) for _, sent, answered, _ in kept)
    late = sorted(1000 * max(sent - due, 0.0) for due, sent, _, _ in kept)
    from_due = sorted(1000 * (answered - due) for due, _, answered, _ in kept)
    span = max(s[2] for s in kept) - start if kept else 1.0
    answered_after_warmup = sum(1 for s in load.samples if s[0] >= start)
    errors = sum(1 for s in kept if not s[3]) + (total - len(load.samples))
    return {
        "p50_ms": _quantile(latency, 0.50), "p99_ms": _quantile(latency, 0.99), "p999_ms": _quantile(latency, 0.999),
        "max_ms": round(latency[-1], 4) if latency else None,
        "mean_ms": round(statistics.fmean(latency), 4) if latency else None,
        "requests_per_s": round(answered_after_warmup / span, 1), "requests": len(kept), "errors": errors,
        "late_p50_ms": _quantile(late, 0.50), "late_p99_ms": _quantile(late, 0.99), "late_p999_ms": _quantile(late, 0.999),
        "late_max_ms": round(late[-1], 4) if late else None,
        "from_due_p99_ms": _quantile(from_due, 0.99), "from_due_p999_ms": _quantile(from_due, 0.999),
    }  # fmt: skip


def loadgen_command(args) -> int:
    """The load generator process of ``kairos bench api`` (last line JSON).

    Lean on purpose, so that it measures the API and not itself: requests pre-built, one asyncio Protocol per
    connection that parses only Content-Length, no garbage collection while timing. It runs on the standard
    asyncio loop: its timers never fire early (epoll waits are rounded up to the millisecond, so a request is
    sent 0-1 ms after it is due, reported as lateness), whereas uvloop's millisecond timers can fire up to 1 ms
    early, which would make the rate bursty.
    """
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    total = int(args.rate * args.seconds)
    requests = _bench_requests(min(total, 200_000), args.users)
    if args.realtime:
        make_realtime(0)
    gc.collect()
    gc.disable()
    try:
        load = asyncio.run(open_loop_load(args.port, requests, args.rate, args.seconds, args.connections))
    finally:
        gc.enable()
    result = summarize_load(load, total, args.warmup)
    result.update(target_rate=args.rate, connections=args.connections)
    print(json.dumps(result))
    return 0


def serve_api_command(args) -> int:
    from kairos.agents.api import create_app, serve

    serve(create_app(load_settings()), port=args.port)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# kairos soak
# ---------------------------------------------------------------------------------------------------------------


def rss_mb(pid: int | None = None) -> float:
    """Resident set size from /proc (Linux), in MiB."""
    with open(f"/proc/{pid or 'self'}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _embedded_pids() -> dict:
    """PIDs of this process's children that are the embedded broker / redis (their RSS is reported too)."""
    out = {}
    try:
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    except OSError:
        return out
    for pid in children:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if "tansu" in name:
            out["broker"] = int(pid)
        elif "redis" in name:
            out["redis"] = int(pid)
    return out


# ---------------------------------------------------------------------------------------------------------------
# CLI registration
# ---------------------------------------------------------------------------------------------------------------


def _group(groups: dict, top, name: str, help_text: str):
    if name not in groups:
        groups[name] = top.add_parser(name, help=help_text).add_subparsers(dest=f"{name}_command", required=True)
    return groups[name]


def register(subparsers_by_group: dict, top_level_subparsers) -> None:
    """Add ``api``, ``dlq replay``, ``bench api``, ``soak`` (and ``export-ad-schema``) to the CLI."""
    top = top_level_subparsers
    p = top.add_parser("api", help="serve the storefront HTTP API and the live dashboard")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=None, help="default: KAIROS_HTTP_PORT")
    p.add_argument("--scrape", action="append", help="a worker's /metrics URL for the dashboard (repeatable)")
    p.set_defaults(func=api_command)

    dlq = _group(subparsers_by_group, top, "dlq", "dead-letter tools")
    p = dlq.add_parser("replay", help="re-validate dead letters (optionally fixed) and re-inject the valid ones")
    p.add_argument("--fix", action="append", help=f"{sorted(BUILTIN_FIXES)} or module:function (repeatable)")
    p.add_argument("--error-class", action="append", help="only letters of this error class (repeatable)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=dlq_replay_command)

    bench = _group(subparsers_by_group, top, "bench", "benchmarks")
    p = bench.add_parser("api", help="GET recommendations latency at a fixed rate on loopback")
    _bench_api_args(p)
    p.set_defaults(func=bench_api_command)

    p = top.add_parser("soak", help="fixed-rate load for minutes with RSS sampled (a benchmark, not a test)")
    from kairos.agents import soak

    soak.add_arguments(p)

    p = top.add_parser("export-ad-schema", help="write the ad-scores topic's JSON Schema")
    p.add_argument("--out", type=Path, default=Path("schemas/jsonschema"))
    p.set_defaults(func=lambda args: print("\n".join(map(str, export_schemas(args.out)))) or 0)


def _bench_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--rate", type=int, default=1000, help="requests per second (open loop)")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--pin", action="store_true", help="API on one CPU, redis-server + load generator on another")
    p.add_argument("--realtime", action="store_true",
                   help="SCHED_FIFO for the API, redis-server and load generator (root): shows the latency without other jobs' interference")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m kairos.agents.ops``: the same commands plus internal ones (worker, serve-api, loadgen)."""
    parser = argparse.ArgumentParser(prog="python -m kairos.agents.ops")
    top = parser.add_subparsers(dest="command", required=True)
    register({}, top)
    p = top.add_parser("worker", help="one ingest worker from KAIROS_* (fault tests, docker-compose)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.set_defaults(func=worker_command)
    p = top.add_parser("serve-api")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(func=serve_api_command)
    p = top.add_parser("loadgen")
    _bench_api_args(p)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--cpu", type=int, default=None, help="pin the load generator to this CPU")
    p.set_defaults(func=loadgen_command)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
