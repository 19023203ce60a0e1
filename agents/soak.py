"""``kairos soak``: a fixed-rate load for minutes against one ingest worker, with its memory sampled over time.

A benchmark, not a test. The worker is its own process (``python -m kairos.agents.ops worker``, as deployed, ONNX
models included when the model directory has them), so its RSS is the worker's alone; this process produces
clicks of ``--users`` random shoppers on ``--items`` items at ``--rate`` per second. Every ``--sample-s`` one JSON
line: events produced, the worker's RSS, the embedded broker's and Redis's RSS, and the worker's own counters
scraped from its /metrics (events consumed, lag, users in memory, users dropped from memory, users read back from
Redis). The last line is the summary JSON. The memory bounds it exercises are
described in docs/operations.md ("Memory").
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from kairos.agents.settings import Settings, load_settings


def _scrape(port: int) -> dict:
    """The worker's own counters from its /metrics (memory bounds at work, events consumed, lag)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    except OSError:
        return {}

    def total(name: str, **labels: str) -> float:
        family = families.get(name)
        if family is None:
            return 0.0
        return sum(s.value for s in family.samples if s.name in (name, name + "_total")
                   and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip

    return {
        "consumed": int(total("kairos_events_in")),
        "lag": int(total("kairos_consumer_lag")),
        "users_in_memory": int(total("kairos_users_in_memory")),
        "users_dropped_from_memory": int(total("kairos_users_evicted", why="memory_bound")),
        "users_read_back": int(total("kairos_users_loaded")),
    }


async def soak(settings: Settings, bootstrap: str, *, minutes: float, rate: int, users: int, items: int,
               sample_s: float, linger_ms: int, pids: dict) -> dict:  # fmt: skip
    from aiokafka import AIOKafkaProducer

    from kairos.agents.embedded import free_port
    from kairos.agents.ops import rss_mb, worker_environment
    from kairos.agents.topics_admin import ensure_topics

    await ensure_topics(settings, bootstrap)
    metrics_port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "kairos.agents.ops", "worker", "--metrics-port", str(metrics_port)],
        env=worker_environment(settings, log_level="WARNING"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ready = await asyncio.to_thread(worker.stdout.readline)
    if ready.strip() != b"ready":
        worker.kill()
        raise RuntimeError(f"the soak's worker did not start (said {ready!r})")
    # A storefront's producer batches for a few ms, as real producers do (and Tansu's fetch cost grows with the
    # number of batches per partition: docs/operations.md).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    await producer.start()
    rng = random.Random(0)
    samples: list[dict] = []
    produced = 0
    started = time.monotonic()
    next_sample = started
    end = started + minutes * 60
    while time.monotonic() < end:
        due = int((time.monotonic() - started) * rate)
        for _ in range(due - produced):
            user = f"u{rng.randrange(users)}"
            event = {"kind": "click", "event_id": f"s{produced}", "user_id": user, "item_id": f"i{rng.randrange(items)}",
                     "category_id": f"c{rng.randrange(40)}", "action": "view", "ts": time.time()}  # fmt: skip
            await producer.send(settings.topics.clicks, orjson.dumps(event), key=user.encode())
            produced += 1
        if time.monotonic() >= next_sample:
            sample = {"t_s": round(time.monotonic() - started, 1), "produced": produced,
                      "worker_rss_mb": round(rss_mb(worker.pid), 1)}  # fmt: skip
            sample.update({f"{name}_rss_mb": round(rss_mb(pid), 1) for name, pid in pids.items()})
            sample.update(await asyncio.to_thread(_scrape, metrics_port))
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            next_sample += sample_s
        await asyncio.sleep(0.01)
    await producer.flush()
    await producer.stop()
    final = await asyncio.to_thread(_scrape, metrics_port)
    worker.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(worker.communicate, timeout=60)
    stats = orjson.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    rss = [s["worker_rss_mb"] for s in samples]
    half = len(rss) // 2
    return {
        "minutes": minutes, "rate": rate, "users": users, "items": items, "produced": produced,
        "processed": stats.get("events", final.get("consumed", 0)), "lag_at_end": final.get("lag"),
        "worker_rss_mb_start": rss[0], "worker_rss_mb_end": rss[-1], "worker_rss_mb_max": max(rss),
        "worker_rss_mb_max_first_half": max(rss[: half + 1]), "worker_rss_mb_max_second_half": max(rss[half:]),
        "worker_rss_mb_growth_second_half": round(rss[-1] - rss[half], 1),
        "max_resident_users_per_partition": settings.max_resident_users_per_partition,
        "max_items_per_partition": settings.max_items_per_partition, "samples": len(samples),
        "users_dropped_from_memory": final.get("users_dropped_from_memory"), "users_read_back": final.get("users_read_back"),
    }  # fmt: skip


def soak_command(args) -> int:
    from kairos.agents.embedded import embedded_services
    from kairos.agents.ops import _embedded_pids

    base = load_settings()
    with embedded_services(base.wants_embedded_kafka, base.wants_embedded_redis) as (kafka, redis_url):
        bootstrap = kafka or base.kafka_bootstrap_servers
        # The worker child sees the broker as configured; on the embedded one it keeps the embedded fetch floor.
        floor = base.fetch_wait_bounds()[0] if kafka else base.fetch_min_wait_ms
        settings = base.model_copy(update={"kafka_bootstrap_servers": bootstrap, "redis_url": redis_url or base.redis_url,
                                           "topic_prefix": f"soak{int(time.time())}", "fetch_min_wait_ms": floor})  # fmt: skip
        result = asyncio.run(
            soak(settings, bootstrap, minutes=args.minutes, rate=args.rate, users=args.users, items=args.items,
                 sample_s=args.sample_s, linger_ms=args.linger_ms, pids=_embedded_pids())  # fmt: skip
        )
    print(json.dumps(result))
    return 0


def add_arguments(p) -> None:
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=300, help="events per second (fixed)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument("--linger-ms", type=int, default=20, help="the load producer's batching delay")
    p.set_defaults(func=soak_command)
