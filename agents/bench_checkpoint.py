"""``kairos bench checkpoint``: what a global checkpoint built in slices costs the worker's event loop.

No broker, no Redis: the worker's pipeline over 4 partitions (``kairos bench hotpath``'s, the other partitions'
orders shared as the worker shares them) takes ``--events`` events of a source, then each partition's global
checkpoint is built as the worker builds it (``PartitionState.begin_global_checkpoint``, then
``SlicedSnapshot.advance`` slices of ``checkpoint_slice_ms``), ``--repeats`` times. The loop is held for the
*snapshot* (the build's start: what must be taken at once) and then for each *slice*; the last slice closes the
snapshot. Each build is compared with ``global_blob`` (the whole checkpoint encoded at once, also
timed): they must be equal byte for byte.

Last line: one JSON object, ``snapshot_ms`` / ``slice_ms`` / ``last_slice_ms`` (p50 and max over every build),
``at_once_ms``, ``blob_mb`` per partition, and ``at_once_parts_ms``: what the snapshot still takes at once on
partition 0 (the selection state without the maps built in pieces, and its largest parts, each timed with
``orjson.dumps`` alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from kairos.agents.bench_hotpath import PARTITIONS, add_source_arguments, partitions_engine, warm_up
from kairos.agents.demo import pick_source
from kairos.agents.settings import Settings, load_settings
from kairos.agents.snapshot import SlicedSnapshot
from kairos.engine.partition import PartitionState


def _stats(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 2), "max": round(float(max(values)), 2)}


def _timed_ms(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000.0, out


def _at_once_parts(state: PartitionState) -> dict[str, float]:
    """What the selection state holds besides the maps built in pieces, each part's ``orjson.dumps`` time, ms."""
    to_state_ms, selection = _timed_ms(lambda: state.selector.to_state(discovery_in_pieces=True))
    parts: dict[str, float] = {"selection state (to_state)": to_state_ms}
    for name, value in selection.items():
        if name == "discovery":
            for sub, sub_value in value.items():
                if sub_value is not None:  # None: built in pieces
                    parts[f"discovery.{sub}"] = _timed_ms(lambda v=sub_value: orjson.dumps(v))[0]
        else:
            parts[name] = _timed_ms(lambda v=value: orjson.dumps(v))[0]
    return {k: round(v, 2) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:8]}


def bench_checkpoint(settings: Settings, data_dir: Path | None, source: str, events: int, repeats: int) -> dict:
    states, _, peers = partitions_engine(settings)
    picked = pick_source(data_dir, source, events)
    applied = warm_up(settings, peers, picked.events[:events])

    snapshots, slices, last_slices, at_once, counts, sizes, equal = [], [], [], [], [], {}, True
    for _ in range(repeats):
        for partition, state in states.items():
            whole_ms, whole = _timed_ms(state.global_blob)
            at_once.append(whole_ms)
            sizes[partition] = round(len(whole) / 1e6, 2)
            snapshot_ms, build = _timed_ms(state.begin_global_checkpoint)
            sliced = SlicedSnapshot(partition, build, state.offsets, 0.0)
            held = []
            while not sliced.ready:
                held.append(sliced.advance(settings.checkpoint_slice_ms))
            if sliced.error is not None:
                raise RuntimeError(f"partition {partition}'s build failed: {sliced.exit_code}")
            equal = equal and sliced.blob == whole
            snapshots.append(snapshot_ms)
            slices += held[:-1]
            last_slices.append(held[-1])
            counts.append(len(held))
    return {
        "snapshot_ms": _stats(snapshots),
        "slice_ms": _stats(slices),
        "last_slice_ms": _stats(last_slices),
        "slices_per_build": _stats(counts),
        "at_once_ms": _stats(at_once),
        "blob_mb": [sizes[p] for p in sorted(sizes)],
        "equal_to_global_blob": equal,
        "at_once_parts_ms": _at_once_parts(states[0]),
        "builds": len(snapshots),
        "slice_budget_ms": settings.checkpoint_slice_ms,
        "events": len(applied),
        "partitions": PARTITIONS,
        "shared_discovery": settings.shared_discovery,
        "source": picked.label,
    }


def _cmd_bench_checkpoint(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(f"bench checkpoint: {args.events} {args.source} events over {PARTITIONS} partitions, then each partition's "
          f"checkpoint built {args.repeats} times", file=sys.stderr)  # fmt: skip
    print(json.dumps(bench_checkpoint(settings, args.data_dir, args.source, args.events, args.repeats)))
    return 0


def register(groups: dict) -> None:
    """Add ``bench checkpoint`` to the CLI."""
    p = groups["bench"].add_parser("checkpoint", help="what a global checkpoint built in slices holds the loop")
    add_source_arguments(p, "online_retail")
    p.add_argument("--events", type=int, default=6_000, help="events applied before the checkpoints")
    p.add_argument("--repeats", type=int, default=3, help="builds per partition")
    p.set_defaults(func=_cmd_bench_checkpoint)
