"""``kairos bench hotpath``: the worker's own cost per event, without a broker or Redis.

The worker's ``BatchPipeline`` over 4 partition states with the worker's selector (the ONNX ranker when the model
directory has one, feedback correction, rules, exploration, copy lookup) is warmed with ``--warm`` real events in
batches of 500, then ``--events`` more are processed in batches of ``--batch`` and each batch is timed. What the
pipeline benchmark calls the worker's share, minus Kafka and Redis. ``KAIROS_RECOMMEND_EVERY_EVENT=true`` ranks every
event (``recs_per_event`` 1); by default a shopper's events in one batch are ranked once, after the last. The last
line printed is one JSON object.

With ``KAIROS_SHARED_DISCOVERY`` (the default) every batch publishes its orders as the worker does, and they are
then applied to the other partitions (``BatchPipeline.apply_peer_orders``) as the worker's discovery reader would,
timed apart (``peer_*``: what the worker spends on them after its batches, outside the event's latency).

``--gap-ms G`` idles G ms (``time.sleep``) before each timed batch, as a worker waits for the next fetch when events
arrive a few milliseconds apart; the idle is not timed. Back to back, an event finds the data and code the previous
one used still in the CPU's caches; after an idle on a shared machine it finds less of them (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from kairos.agents.demo import pick_source
from kairos.agents.pipeline import BatchPipeline, BatchResult, InputRecord, partition_for
from kairos.agents.settings import Settings, load_settings
from kairos.agents.worker import default_selector_factory
from kairos.engine.copywriting import CopyBook
from kairos.engine.partition import PartitionState
from kairos.schemas.codec import encode

PARTITIONS = 4


def records_of(settings: Settings, events: list, first_offset: int) -> list[InputRecord]:
    topics, now_ms = settings.topics, int(time.time() * 1000)
    return [
        InputRecord(topics.purchases if e.kind == "purchase" else topics.clicks, partition_for(e.user_id, PARTITIONS),
                    first_offset + k, e.user_id.encode(), encode(e), now_ms)  # fmt: skip
        for k, e in enumerate(events)
    ]


class PeerOrders:
    """The discovery topic without a broker: a batch's published orders get the offsets the topic would give them
    (per partition, keyed by shopper) and go straight back through ``apply_peer_orders``."""

    def __init__(self, pipeline: BatchPipeline) -> None:
        self.pipeline = pipeline
        self.ends: dict[int, int] = {}

    def apply(self, result) -> int:
        topic = self.pipeline.topics.discovery
        records = []
        for out in result.outputs:
            if out.topic == topic:
                partition = partition_for(out.key.decode(), PARTITIONS)
                offset = self.ends.get(partition, 0)
                self.ends[partition] = offset + 1
                records.append(InputRecord(topic, partition, offset, out.key, out.value, 0))
        if not records:
            return 0
        learned = BatchResult()
        self.pipeline.apply_peer_orders(records, learned)
        return learned.peer_orders


def partitions_engine(
    settings: Settings, copybook: CopyBook | None = None
) -> tuple[dict[int, PartitionState], BatchPipeline, PeerOrders]:
    """The worker's pipeline over :data:`PARTITIONS` partitions, without broker or Redis; the orders of each
    partition's shoppers go to the others as the worker's discovery topic takes them (when shared). With
    ``copybook``, the selectors look copy up in it and the pipeline asks it for copy requests, as the worker's do."""
    config = settings.engine_config()
    make = default_selector_factory(settings, copybook)
    states = {p: PartitionState(p, config, make(config)) for p in range(PARTITIONS)}
    pipeline = BatchPipeline(settings.topics, states, PARTITIONS, config.top_n, settings.recommend_every_event,
                             share_discovery=settings.shared_discovery)  # fmt: skip
    return states, pipeline, PeerOrders(pipeline)


def warm_up(settings: Settings, peers: PeerOrders, events: list, batch: int = 500) -> list[InputRecord]:
    """Apply ``events`` (offsets from 0) in batches of ``batch``, sharing orders after each; returns the records."""
    records = records_of(settings, events, 0)
    for start in range(0, len(records), batch):
        peers.apply(peers.pipeline.process(records[start : start + batch]))
    return records


def add_source_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--data-dir`` and ``--source``, as the benchmarks without a broker take them."""
    parser.add_argument("--data-dir", type=Path, default=None, help="default ../shared/data (else the simulator)")
    parser.add_argument("--source", default=default, choices=["all", "online_retail", "taobao", "simulated"])


def bench_hotpath(
    settings: Settings, data_dir: Path | None, source: str, warm: int, events: int, batch: int, gap_ms: float = 0.0
) -> dict:
    # A copy book as the worker's (no copy agent answers here: every lookup is the template, as in the pipeline
    # benchmark). Before 2026-12-04 (night) there was none, and the copy step was left out of the figures.
    copybook = CopyBook(in_flight=settings.copy_in_flight, answer_timeout_s=settings.copy_answer_timeout_s)
    states, pipeline, peers = partitions_engine(settings, copybook)
    picked = pick_source(data_dir, source, warm + events)
    warm_records = warm_up(settings, peers, picked.events[:warm])
    timed = records_of(settings, picked.events[warm : warm + events], warm)
    batch_ms, peer_ms, recommendations, learned = [], [], 0, 0
    for start in range(0, len(timed), batch):
        if gap_ms > 0:
            time.sleep(gap_ms / 1000.0)
        t0 = time.perf_counter()
        result = pipeline.process(timed[start : start + batch])
        t1 = time.perf_counter()
        learned += peers.apply(result)
        batch_ms.append((t1 - t0) * 1000.0)
        peer_ms.append((time.perf_counter() - t1) * 1000.0)
        recommendations += len(result.source_times_ms)
    times = np.asarray(batch_ms)
    p50, p99 = (np.percentile(times, [50, 99]) if len(times) else (float("nan"), float("nan")))
    peer_times = np.asarray(peer_ms)
    return {
        "ms_per_event": round(float(times.sum()) / max(len(timed), 1), 3),
        "batch_p50_ms": round(float(p50), 2),
        "batch_p99_ms": round(float(p99), 2),
        "batch": batch,
        "gap_ms": gap_ms,
        # Below 1 when a batch held several events of one shopper, ranked once (unless every event is ranked).
        "recs_per_event": round(recommendations / max(len(timed), 1), 3),
        "recommend_every_event": settings.recommend_every_event,
        "warm_events": len(warm_records),
        "events": len(timed),
        "candidates": states[0].config.max_candidates,
        "shared_discovery": settings.shared_discovery,
        # Other partitions' orders learned (one order counts once per partition that learned it) and the time.
        "peer_orders": learned,
        "peer_ms_per_event": round(float(peer_times.sum()) / max(len(timed), 1), 3),
        "peer_p99_ms": round(float(np.percentile(peer_times, 99)), 2) if len(peer_times) else float("nan"),
        "ranker": states[0].selector.model_version,
        "source": picked.label,
    }


def _cmd_bench_hotpath(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(f"bench hotpath: warming with {args.warm} events, then {args.events} in batches of {args.batch}"
          + (f", {args.gap_ms} ms idle before each" if args.gap_ms else ""), file=sys.stderr)  # fmt: skip
    print(json.dumps(bench_hotpath(settings, args.data_dir, args.source, args.warm, args.events, args.batch, args.gap_ms)))
    return 0


def register(groups: dict) -> None:
    """Add ``bench hotpath`` to the CLI."""
    p = groups["bench"].add_parser("hotpath", help="the worker's cost per event without broker or Redis")
    add_source_arguments(p, "taobao")
    p.add_argument("--warm", type=int, default=15_000, help="events applied first, in batches of 500")
    p.add_argument("--events", type=int, default=2_000, help="events timed")
    p.add_argument("--batch", type=int, default=1, help="events per timed batch (1: each event alone)")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="idle before each timed batch (not timed), as between events arriving apart")  # fmt: skip
    p.set_defaults(func=_cmd_bench_hotpath)
