"""``kairos bench copybook``: how much of what storefronts show carries the copy agent's text, by how requests are
let out.

Generation is slow beside the hot path (a CPU writes one or two texts a second; the hot path misses hundreds of
new (item, segment) keys a second), so which keys the copy agent writes first decides how many recommended items
ever show its text. This runs the worker's pipeline without broker or Redis (``kairos bench hotpath``'s engine, cold as
``kairos demo`` starts) over ``--events`` real events, one at a time, on a nominal clock of ``--rate`` events a
second, with a copy agent modelled by its throughput: it takes the requests in the order they were sent, in
batches of 16 as the ``write_copy`` agent does, and answers a batch ``16 / --answers-per-s`` nominal seconds after
starting it, every answer arriving in the worker's copy book at once (the copies topic). The text's quality does not
enter: the agent's real share of generated (not template) answers is ``kairos bench copy``'s.

Two policies, on the same events:
- ``window``: the copy book as the worker runs it, at most ``--in-flight`` keys outstanding and each freed place
  to the pending key missed most often (``KAIROS_COPY_IN_FLIGHT``, engine/copywriting.py ``CopyBook``);
- ``every_miss``: every key asked for at its first miss, as the copy book did until 2026-12-04 (an unbounded
  window: every pending key is let out at the next batch, in the order first missed).

``coverage``: the copy lookups of recommended items answered with the agent's text, over the whole run and its last
third. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

import orjson

from kairos.agents.app import COPY_BATCH
from kairos.agents.bench_hotpath import add_source_arguments, partitions_engine, records_of
from kairos.agents.demo import pick_source
from kairos.agents.settings import Settings, load_settings
from kairos.engine.copywriting import CopyBook

#: Requests per copy batch, as the ``write_copy`` agent takes them.
AGENT_BATCH = COPY_BATCH
#: A window no run fills: every pending key is let out at once (the copy book before the window).
UNBOUNDED = 10**9


class NominalClock:
    """The benchmark's time: events are due at ``index / rate`` seconds, whatever the machine takes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ModelledCopyAgent:
    """A copy agent of fixed throughput: first in, first written, :data:`AGENT_BATCH` at a time."""

    def __init__(self, answers_per_s: float) -> None:
        self.answers_per_s = answers_per_s
        self.queue: deque[tuple[str, str]] = deque()
        self.batch: list[tuple[str, str]] = []
        self.done_at = 0.0
        self.answers = 0

    def step(self, now: float, book: CopyBook) -> None:
        if self.batch and now >= self.done_at:
            for item_id, segment in self.batch:
                book.put(item_id, segment, f"copy for {item_id} ({segment})")
            self.answers += len(self.batch)
            self.batch = []
        if not self.batch and self.queue:
            self.batch = [self.queue.popleft() for _ in range(min(AGENT_BATCH, len(self.queue)))]
            self.done_at = now + len(self.batch) / self.answers_per_s


def run_policy(settings: Settings, events: list, rate: float, answers_per_s: float, in_flight: int) -> dict:
    clock = NominalClock()
    book = CopyBook(in_flight=in_flight, answer_timeout_s=settings.copy_answer_timeout_s, clock=clock)
    _, pipeline, peers = partitions_engine(settings, book)
    agent = ModelledCopyAgent(answers_per_s)
    records = records_of(settings, events, 0)
    topic = settings.topics.copy_requests
    third = len(records) - len(records) // 3
    sent = 0
    at_third = (0, 0)
    for i, record in enumerate(records):
        clock.now = i / rate
        agent.step(clock.now, book)
        if i == third:
            at_third = (book.hits, book.misses)
        result = pipeline.process([record])
        peers.apply(result)
        for out in result.outputs:
            if out.topic == topic:
                request = orjson.loads(out.value)
                if request.get("kind", "product") == "product":
                    agent.queue.append((request["item_id"], request["segment"]))
                    sent += 1
    lookups = book.hits + book.misses
    last_hits, last_lookups = book.hits - at_third[0], lookups - sum(at_third)
    return {
        "in_flight": in_flight if in_flight < UNBOUNDED else None,
        "coverage": round(book.hits / max(lookups, 1), 5),
        "coverage_last_third": round(last_hits / max(last_lookups, 1), 5),
        "lookups": lookups,
        "answered_lookups": book.hits,
        "requests_sent": sent,
        "answers": agent.answers,
        # Requests sent and not yet written when the stream ended: the agent's backlog.
        "agent_backlog": len(agent.queue) + len(agent.batch),
    }


def bench_copybook(settings: Settings, data_dir: Path | None, source: str, events: int, rate: float,
                   answers_per_s: float, in_flight: int) -> dict:  # fmt: skip
    if rate <= 0 or answers_per_s <= 0:
        raise ValueError("--rate and --answers-per-s must be positive")
    picked = pick_source(data_dir, source, events)
    window = run_policy(settings, picked.events, rate, answers_per_s, in_flight)
    every_miss = run_policy(settings, picked.events, rate, answers_per_s, UNBOUNDED)
    return {
        "window": window,
        "every_miss": every_miss,
        "coverage_ratio": round(window["coverage"] / every_miss["coverage"], 2) if every_miss["coverage"] else None,
        "events": len(picked.events),
        "rate": rate,
        "answers_per_s": answers_per_s,
        "nominal_seconds": round(len(picked.events) / rate, 1),
        "source": picked.label,
    }


def _cmd_bench_copybook(args: argparse.Namespace) -> int:
    settings = load_settings()
    in_flight = args.in_flight or settings.copy_in_flight
    print(f"bench copybook: {args.events} events at a nominal {args.rate}/s, a copy agent answering "
          f"{args.answers_per_s}/s; window of {in_flight} against every miss asked for", file=sys.stderr)  # fmt: skip
    print(json.dumps(bench_copybook(settings, args.data_dir, args.source, args.events, args.rate, args.answers_per_s,
                                    in_flight)))  # fmt: skip
    return 0


def register(groups: dict) -> None:
    """Add ``bench copybook`` to the CLI."""
    p = groups["bench"].add_parser("copybook", help="share of recommended items carrying the copy agent's text")
    add_source_arguments(p, "all")
    p.add_argument("--events", type=int, default=12_000, help="events, one at a time, from a cold start")
    p.add_argument("--rate", type=float, default=200.0, help="nominal events per second (kairos demo's default)")
    p.add_argument("--answers-per-s", type=float, default=2.0, help="the modelled copy agent's answers per second")
    p.add_argument("--in-flight", type=int, default=None, help="the window (default KAIROS_COPY_IN_FLIGHT)")
    p.set_defaults(func=_cmd_bench_copybook)
