"""Operations commands: ``kairos api``, ``kairos dlq replay``, ``kairos bench api``, ``kairos soak``, the
ScoredCreative JSON Schema export, and a minimal worker entry point (``python -m kairos.agents.ops worker``) that
the fault tests run as a subprocess and SIGKILL.

Each command is a function ``(args) -> int``; :func:`register` adds them to the CLI's argparse tree.
"""

from __future__ import annotations

import argparse
import asyncio
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
    await worker.start(counts[settings.topics.clicks])
    task = asyncio.create_task(worker.run())
    await asyncio.wait([asyncio.ensure_future(worker.ready.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    announce("ready")
    await asyncio.wait([asyncio.ensure_future(stop.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    worker.stop()
    await task
    await worker.close()
    await store.close()
    return dict(worker.stats)


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
        _wait_http(f"http://127.0.0.1:{port}/healthz", 20)
        gen = subprocess.run(
            [sys.executable, "-m", "kairos.agents.ops", "loadgen", "--port", str(port), "--rate", str(args.rate),
             "--seconds", str(args.seconds), "--users", str(args.users), "--connections", str(args.connections)],
            capture_output=True, text=True, timeout=args.seconds + 60, check=True,
        )  # fmt: skip
        result = json.loads(gen.stdout.strip().splitlines()[-1])
        result.update(_server_side_latency(port))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        redis.stop()
    print(
        f"GET /v1/users/{{id}}/recommendations at {args.rate}/s for {args.seconds}s, {args.users} users, "
        f"{args.connections} keep-alive connections: p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
        f"p99.9 {result['p999_ms']:.3f} ms  max {result['max_ms']:.3f} ms  {result['requests_per_s']:.0f} req/s  "
        f"errors {result['errors']}  (server-side histogram: p50 {result['server_p50_ms']} ms  p99 {result['server_p99_ms']} ms)"
    )
    print(json.dumps(result))
    return 0


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


async def _one_connection(port: int, schedule, users: int, hot_fraction: float, rng: random.Random, out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for due in schedule:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            known = rng.random() < hot_fraction
            user = f"user-{rng.randrange(users)}" if known else f"new-{rng.randrange(10**9)}"
            request = f"GET /v1/users/{user}/recommendations?n=10 HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            done = time.perf_counter()
            out["latencies"].append((sent, done - sent, due))
            if not head.startswith(b"HTTP/1.1 200"):
                out["errors"] += 1
    finally:
        writer.close()


def loadgen_command(args) -> int:
    """Open-loop load at a fixed rate: request k is due at t0 + k/rate; latency is measured from sending. How
    late requests were sent (client-side queueing) is reported separately as ``late_p99_ms``."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> dict:
        out = {"latencies": [], "errors": 0}
        t0 = time.perf_counter() + 0.2
        total = int(args.rate * args.seconds)
        dues = [t0 + k / args.rate for k in range(total)]
        per_conn = [dues[c :: args.connections] for c in range(args.connections)]
        rng = random.Random(1)
        tasks = [
            _one_connection(args.port, iter(s), args.users, 0.95, random.Random(rng.random()), out) for s in per_conn
        ]
        await asyncio.gather(*tasks)
        return out

    out = asyncio.run(main())
    samples = sorted(out["latencies"])
    warm = samples[0][0] + args.warmup if samples else 0
    lat = sorted(1000 * d for s, d, _ in samples if s >= warm)
    late = sorted(1000 * max(s - due, 0.0) for s, _, due in samples if s >= warm)
    span = samples[-1][0] + samples[-1][1] - warm if samples else 1.0

    def q(values: list[float], p: float) -> float:
        return values[min(int(p * len(values)), len(values) - 1)] if values else float("nan")

    result = {
        "p50_ms": round(q(lat, 0.50), 4), "p99_ms": round(q(lat, 0.99), 4), "p999_ms": round(q(lat, 0.999), 4),
        "max_ms": round(lat[-1], 4) if lat else None, "mean_ms": round(statistics.fmean(lat), 4) if lat else None,
        "requests_per_s": round(len(lat) / span, 1), "requests": len(lat), "errors": out["errors"],
        "late_p99_ms": round(q(late, 0.99), 4), "target_rate": args.rate, "connections": args.connections,
    }  # fmt: skip
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


async def soak(settings: Settings, bootstrap: str, minutes: float, rate: int, users: int, sample_s: float, pids: dict) -> dict:
    """A worker in this process consuming events produced at ``rate``/s for ``minutes``; RSS sampled."""
    from aiokafka import AIOKafkaProducer

    stop = asyncio.Event()
    worker_task = asyncio.create_task(run_worker(settings, stop, announce=lambda line: None))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    rng = random.Random(0)
    samples, produced = [], 0
    started = time.monotonic()
    next_sample = started
    end = started + minutes * 60
    while time.monotonic() < end:
        due = int((time.monotonic() - started) * rate)
        for _ in range(due - produced):
            user = f"u{rng.randrange(users)}"
            event = {"kind": "click", "event_id": f"s{produced}", "user_id": user, "item_id": f"i{rng.randrange(5000)}",
                     "category_id": f"c{rng.randrange(40)}", "action": "view", "ts": time.time()}  # fmt: skip
            await producer.send(settings.topics.clicks, orjson.dumps(event), key=user.encode())
            produced += 1
        if time.monotonic() >= next_sample:
            sample = {"t_s": round(time.monotonic() - started, 1), "produced": produced, "rss_mb": round(rss_mb(), 1)}
            sample.update({f"{name}_rss_mb": round(rss_mb(pid), 1) for name, pid in pids.items()})
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            next_sample += sample_s
        await asyncio.sleep(0.01)
    await producer.flush()
    await producer.stop()
    stop.set()
    stats = await worker_task
    rss = [s["rss_mb"] for s in samples]
    return {
        "minutes": minutes, "rate": rate, "produced": produced, "processed": stats.get("events", 0),
        "rss_mb_start": rss[0], "rss_mb_end": rss[-1], "rss_mb_max": max(rss),
        "rss_mb_growth_second_half": round(rss[-1] - rss[len(rss) // 2], 1), "samples": len(samples),
    }  # fmt: skip


def soak_command(args) -> int:
    from kairos.agents.embedded import embedded_services

    base = load_settings()
    with embedded_services(base.wants_embedded_kafka, base.wants_embedded_redis) as (kafka, redis_url):
        bootstrap = kafka or base.kafka_bootstrap_servers
        settings = base.model_copy(update={"kafka_bootstrap_servers": bootstrap, "redis_url": redis_url or base.redis_url,
                                           "topic_prefix": f"soak{int(time.time())}"})  # fmt: skip
        pids = _embedded_pids()
        result = asyncio.run(soak(settings, bootstrap, args.minutes, args.rate, args.users, args.sample_s, pids))
    print(json.dumps(result))
    return 0


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
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.set_defaults(func=soak_command)

    p = top.add_parser("export-ad-schema", help="write the ad-scores topic's JSON Schema")
    p.add_argument("--out", type=Path, default=Path("schemas/jsonschema"))
    p.set_defaults(func=lambda args: print("\n".join(map(str, export_schemas(args.out)))) or 0)


def _bench_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--rate", type=int, default=1000, help="requests per second (open loop)")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=16)


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
    p.set_defaults(func=loadgen_command)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
