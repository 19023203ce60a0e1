"""``kairos bench pipeline``: the plain-loop baseline vs the full pipeline, on the same events and partitions.

(a) plain aiokafka loop: consume -> JSON decode -> produce, no state;
(b) backlog: the full pipeline (decode, validate, state, retrieval, ranking, outputs, atomic Redis commits) drains
    the same pre-filled topics with a fresh consumer group. A backlog lets it coalesce (several events of one
    shopper in a batch are ranked once), so this is the most it can absorb, not the rate it sustains live;
(c) sustained rate: events arrive one at a time at a steady pace; a bisection between 0 and (b) finds the highest
    rate whose queue stays short (median latency of the last quarter of a probe <= ``SATURATION_MS``);
(d) latency: event -> recommendation at half of (c) (or ``--rate``) for ``--latency-seconds``, on fresh topics
    (below); on the probes' log at half of (c) and at half of (b) for comparison;
Each phase reports ``recs_per_event``: recommendations computed per event consumed (below 1 where events of one
shopper met in a batch and only the last was ranked; the share of the work coalescing saved). With
``KAIROS_RECOMMEND_EVERY_EVENT=true`` nothing coalesces: every phase ranks every event, and (b) and (c) are the
most the pipeline absorbs and sustains doing the full selection per event;
(e) peak RSS of each worker process (``worker_rss_mb``).

The workers (``--workers N``, default 1) run in their own processes in one consumer group
(``kairos.agents.bench_workers``): the partitions split among them as among N ``kairos worker --roles ingest``
deployments. Throughput and latency are measured over all of them; ``cpu_during_latency.workers`` sums their cores.

The paced phases are bounded in time, not only by the events available: on the embedded broker every paced event
is a one-record batch that stays in the log (no retention), and each fetch scans all the stored batches of the
partitions it reads (~1 us per batch, ``kairos bench broker``), so the longer a paced phase runs the more of its
latency is the broker's scan of what the earlier phases left, which Apache Kafka does not do (its offset index
finds a fetch's position whatever the log holds). So after the probes a second worker group on fresh topics (and
a fresh consumer group and Redis namespace) drains the same backlog, reaching the same state, and the latency
phase runs there (``latency_on_fresh_topics``); the same rate behind the probes' batches is reported beside it
(``latency_after_probes``, with ``paced_events_before``). The phase's own events still add a batch each, so its
latencies are also reported per third (``latency_by_third``): on this broker the last third is the slowest.

Paced events come from a producer in its own process and carry their *due* time as the Kafka timestamp, so the
latency counts from when the shopper acted, even when the producer falls behind (no coordinated omission: a
producer sharing the worker's event loop would send late whatever fell due while a batch was processed, and
stamp it late). The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kairos.agents.bench_workers import WorkerGroup
from kairos.agents.demo import pick_source, produce
from kairos.agents.kafka_config import consumer_options, producer_options
from kairos.schemas.codec import encode
from kairos.agents.runtime import RecommendationMonitor, Services, services, wait_for
from kairos.agents.settings import Settings
from kairos.agents.topics_admin import ensure_topics

#: A probe rate is sustained while the median latency of its last quarter stays under this: a queue that grows
#: for the probe's few seconds ends well above it (5% over capacity adds ~150 ms in 3 s).
SATURATION_MS = 100.0
PROBE_SECONDS = 3.0
BISECTION_STEPS = 6
#: The latency phase's default length: ~10,000 events at 300/s, a p99 from ~100 events above it.
LATENCY_SECONDS = 30.0
#: How long the last recommendations of a phase may take to reach the monitor (its fetch wait is 250 ms).
MONITOR_DRAIN_S = 5.0
#: Seconds between the recommendation monitor's reads during the paced phases.
MONITOR_POLL_S = 1.0


async def plain_loop(settings: Settings, bootstrap: str, expected: int) -> float:
    """Events/s of consume -> orjson -> produce with aiokafka and nothing else."""
    topics = settings.topics
    options = {**consumer_options(settings), "group_id": f"{settings.consumer_group}-plain"}
    consumer = AIOKafkaConsumer(topics.clicks, topics.purchases, bootstrap_servers=bootstrap, **options)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_options(settings))
    await consumer.start()
    await producer.start()
    seen, started = 0, None
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=100, max_records=settings.batch_max_records)
            for records in batches.values():
                started = started or time.perf_counter()
                for record in records:
                    event = orjson.loads(record.value)
                    await producer.send(topics.recommendations + ".plain", orjson.dumps(event), key=record.key)
                seen += len(records)
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()
    return seen / (time.perf_counter() - (started or time.perf_counter()))


def _paced_producer_process(settings: Settings, bootstrap: str, conn) -> None:
    asyncio.run(_paced_producer_loop(settings, bootstrap, conn))


async def _paced_producer_loop(settings: Settings, bootstrap: str, conn) -> None:
    """Jobs ``(records, rate)`` from the pipe; each record is sent at its due time ``t0 + k / rate`` with the due
    time as its timestamp; answers ``(sent, p99 lateness ms)``. ``None`` ends it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **{**producer_options(settings), "linger_ms": 0})
    await producer.start()
    loop = asyncio.get_running_loop()
    conn.send("ready")
    try:
        while (job := await loop.run_in_executor(None, conn.recv)) is not None:
            records, rate = job
            started = time.time() + 0.05
            late = np.zeros(len(records))
            for k, (topic, key, value) in enumerate(records):
                due = started + k / rate
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                late[k] = time.time() - due
                await producer.send(topic, value, key=key, timestamp_ms=int(due * 1000))
            await producer.flush()
            conn.send((len(records), float(np.percentile(late, 99)) * 1000.0 if len(records) else 0.0))
    finally:
        await producer.stop()


class PacedProducer:
    """A steady event source in its own process (see the module docstring)."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_paced_producer_process, args=(settings, bootstrap, child), daemon=True)
        self.topics = settings.topics

    async def __aenter__(self) -> "PacedProducer":
        self._process.start()
        ready = await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)
        assert ready == "ready"
        return self

    async def __aexit__(self, *exc) -> None:
        self._conn.send(None)
        await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10.0)
        if self._process.is_alive():
            self._process.kill()

    async def send(self, events: list, rate: float) -> tuple[int, float]:
        """Send ``events`` at ``rate`` per second; returns (sent, p99 of how late sends were, ms)."""
        records = [
            (self.topics.purchases if e.kind == "purchase" else self.topics.clicks, e.user_id.encode(), encode(e))
            for e in events
        ]
        self._conn.send((records, rate))
        return await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)


class LatencyPhases:
    """Paced phases against the running workers; each returns the latencies of its own recommendations."""

    def __init__(self, workers: WorkerGroup, monitor: RecommendationMonitor, producer: PacedProducer) -> None:
        self.workers = workers
        self.monitor = monitor
        self.producer = producer

    async def run(self, events: list, rate: float) -> dict:
        mark = self.monitor.received
        before = await self.workers.totals()
        sent, late_p99 = await self.producer.send(events, rate)
        target = before["events"] + sent
        await self.workers.until_events(target, 120.0)
        after = await self.workers.totals(timings_since=before["batches"])
        # The monitor's latencies are the recommendations' own timestamps, so when they arrive does not matter,
        # only that all of them have (the counters count a batch once its outputs are acknowledged).
        made = after["recommendations"] - before["recommendations"]
        await wait_for(lambda: self.monitor.received - mark >= made, MONITOR_DRAIN_S)
        new = self.monitor.received - mark
        latencies = np.asarray(list(self.monitor.latencies_ms)[-new:] if new else [], dtype=np.float64)
        count, seconds = (now - then for now, then in zip(after["gc_full"], before["gc_full"]))
        # Below 1 when events of one shopper met in a batch and were ranked once, after the last of them.
        recs_per_event = made / sent if sent else float("nan")
        return {"rate": rate, "events": sent, "latencies": latencies, "producer_late_p99_ms": late_p99,
                "recs_per_event": round(recs_per_event, 3),
                "gc_full_collections": {"count": int(count), "total_ms": round(seconds * 1000.0, 1)},
                # (consume delay, worker time) per batch, of every worker
                "batches": np.asarray(after["timings"], dtype=np.float64).reshape(-1, 2)}  # fmt: skip

    async def sustained_rate(self, events: list, ceiling: float) -> tuple[float, list[dict]]:
        """Bisection on the paced rate between 0 and ``ceiling``; each probe uses fresh events (a repeated event
        id would be skipped as a duplicate, which costs nothing)."""
        low, high, used, probes = 0.0, ceiling, 0, []
        for _ in range(BISECTION_STEPS):
            rate = (low + high) / 2
            n = int(rate * PROBE_SECONDS)
            if used + n > len(events):
                break
            phase = await self.run(events[used : used + n], rate)
            used += n
            latencies = phase["latencies"]
            quarter = max(len(latencies) // 4, 1)
            tail = latencies[-quarter:] if len(latencies) else latencies
            median_tail = float(np.median(tail)) if len(tail) else float("inf")
            # The first quarter's median beside it: how much the queue grew during the probe.
            median_head = float(np.median(latencies[:quarter])) if len(latencies) else float("inf")
            keeps_up = median_tail <= SATURATION_MS
            probes.append({"rate": round(rate, 1), "events": phase["events"], "head_median_ms": round(median_head, 1),
                           "tail_median_ms": round(median_tail, 1), "keeps_up": keeps_up,
                           "recs_per_event": phase["recs_per_event"]})  # fmt: skip
            low, high = (rate, high) if keeps_up else (low, rate)
        return low, probes


def _broker_pid(bootstrap: str) -> int | None:
    """The embedded broker's process (Linux ``/proc``; None elsewhere or with an external broker)."""
    address = bootstrap.split(",")[0]
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"tansu" in Path(os.fsdecode(cmdline[0])).name.encode() and f"tcp://{address}".encode() in cmdline:
            return int(entry.name)
    return None


class CpuUse:
    """Cores used between :meth:`start` and :meth:`stop`: the worker processes (``worker_pids``; this process when
    none are given), the embedded broker, and the whole machine (``/proc``; Linux only, empty elsewhere)."""

    def __init__(self, broker_pid: int | None, worker_pids: list[int] | tuple[int, ...] = ()) -> None:
        self.broker_pid = broker_pid
        self.worker_pids = list(worker_pids)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _process_seconds(self, pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
        except (OSError, IndexError, ValueError):
            return None

    def _sample(self) -> tuple[float, float, float | None, tuple[float, float] | None]:
        if self.worker_pids:
            own = sum(self._process_seconds(pid) or 0.0 for pid in self.worker_pids)
        else:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            own = usage.ru_utime + usage.ru_stime
        broker = self._process_seconds(self.broker_pid) if self.broker_pid is not None else None
        machine = None
        try:
            jiffies = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)  # idle + iowait
            machine = (sum(jiffies) - idle, float(sum(jiffies)))
        except (OSError, ValueError, IndexError):
            machine = None
        return time.perf_counter(), own, broker, machine

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict:
        (t0, own0, broker0, machine0), (t1, own1, broker1, machine1) = self._start, self._sample()
        wall = max(t1 - t0, 1e-9)
        out = {"workers": round((own1 - own0) / wall, 2)}
        if broker0 is not None and broker1 is not None:
            out["broker"] = round((broker1 - broker0) / wall, 2)
        if machine0 is not None and machine1 is not None and machine1[1] > machine0[1]:
            share = (machine1[0] - machine0[0]) / (machine1[1] - machine0[1])
            out["machine_busy_share"] = round(share, 2)
            out["machine_cores"] = os.cpu_count()
        return out


def _percentiles(latencies: np.ndarray) -> tuple[float, float]:
    if not len(latencies):
        return float("nan"), float("nan")
    p50, p99 = np.percentile(latencies, [50, 99])
    return round(float(p50), 2), round(float(p99), 2)


def _tail(latencies: np.ndarray) -> tuple[float, float]:
    """p99.9 and the longest: where rare stalls show (a stall of the event loop delays the few events that arrive
    during it, too few to move the p99 at these rates)."""
    if not len(latencies):
        return float("nan"), float("nan")
    return round(float(np.percentile(latencies, 99.9)), 2), round(float(np.max(latencies)), 2)


def latency_by_third(latencies: np.ndarray) -> list[dict]:
    """p50 / p99 of the first, middle and last third of a phase's latencies (in the order the recommendations
    reached the monitor, i.e. in time). On the embedded broker a phase gets slower as it goes: each fetch scans
    every batch the partition's log holds (agents/fetch_wait.py), a steady stream adds a batch per event, and the
    broker's growing share of the two cores delays the worker (docs/performance.md); Apache Kafka's fetch cost
    does not grow with its log."""
    return [dict(zip(("p50_ms", "p99_ms"), _percentiles(part))) for part in np.array_split(np.asarray(latencies), 3)]


def _for_seconds(events: list, rate: float, seconds: float) -> list:
    return events[: max(int(rate * seconds), 1)]


async def drain_backlog(settings: Settings, svc: Services, workers: WorkerGroup, events: list) -> dict:
    """Produce ``events`` to the idle, settled workers and wait until they have consumed them all: the most the
    pipeline absorbs (from the first batch of any worker to the last event counted by all of them)."""
    before = await workers.totals()
    produced = await produce(settings, svc.bootstrap, events, None, [])
    target = before["events"] + produced
    if not await workers.until_events(target, 900.0, 0.01):
        raise RuntimeError(f"the pipeline consumed {(await workers.totals())['events'] - before['events']} of {produced} events")
    done = time.time()
    after = await workers.totals()
    elapsed = done - after["first_batch_wall"] if after["first_batch_wall"] is not None else float("inf")
    return {"events": produced, "pipeline_events_per_s": round(produced / elapsed, 1),
            "backlog_recs_per_event": round((after["recommendations"] - before["recommendations"]) / produced, 3)}  # fmt: skip


@contextlib.asynccontextmanager
async def paced_phases(settings: Settings, svc: Services, workers: WorkerGroup):
    """A paced producer and a recommendation monitor on ``settings``' topics, for :class:`LatencyPhases`."""
    async with PacedProducer(settings, svc.bootstrap) as producer:
        # Latencies come from the recommendations' own timestamps: reading them once a second changes none of
        # them and spares the broker (a fetch of the embedded broker scans the whole recommendations log).
        monitor = RecommendationMonitor(settings, svc.bootstrap, poll_interval_s=MONITOR_POLL_S)
        await monitor.start()
        try:
            yield LatencyPhases(workers, monitor, producer)
        finally:
            await monitor.stop()


def _phase_summary(phase: dict) -> dict:
    p50, p99 = _percentiles(phase["latencies"])
    delay_p50, delay_p99 = _percentiles(phase["batches"][:, 0])
    return {"rate": round(phase["rate"], 1), "events": int(phase["events"]), "p50_ms": p50, "p99_ms": p99,
            "consume_delay_p50_ms": delay_p50, "consume_delay_p99_ms": delay_p99,
            "recs_per_event": phase["recs_per_event"]}  # fmt: skip


async def probe_phases(
    settings: Settings, svc: Services, workers: WorkerGroup, backlog_rate: float, pools: dict[str, list],
    latency_s: float,
) -> dict:  # fmt: skip
    """The sustained rate (bisection), then on the same log: half of it, and half the backlog rate."""
    async with paced_phases(settings, svc, workers) as phases:
        sustained, probes = await phases.sustained_rate(pools["probe"], backlog_rate)
        if sustained <= 0:
            raise RuntimeError(f"no probe rate was sustained ({len(probes)} probes with {len(pools['probe'])} events): "
                               "give more --events, or a --rate")  # fmt: skip
        out: dict = {"sustained_events_per_s": round(sustained, 1), "probes": probes}
        # Half the sustained rate behind the probes' one-record batches (the embedded broker scans them at every
        # fetch; Apache Kafka does not): the latency phase proper runs on fresh topics (see ``run``).
        after = await phases.run(_for_seconds(pools["after_probes"], sustained / 2, latency_s), sustained / 2)
        out["latency_after_probes"] = {**_phase_summary(after), "paced_events_before": sum(p["events"] for p in probes)}
        # The first reading of "half the maximum": half the backlog rate.
        at_half_backlog = await phases.run(_for_seconds(pools["backlog_half"], backlog_rate / 2, latency_s), backlog_rate / 2)
        summary = _phase_summary(at_half_backlog)
        out["half_backlog_rate"] = {k: summary[k] for k in ("rate", "p50_ms", "p99_ms", "recs_per_event")}
    return out


async def latency_phase(
    settings: Settings, svc: Services, workers: WorkerGroup, rate: float, events: list, latency_s: float
) -> dict:
    """Event -> recommendation latency at ``rate`` for at most ``latency_s`` seconds, with the cores used."""
    async with paced_phases(settings, svc, workers) as phases:
        cpu = CpuUse(_broker_pid(svc.bootstrap) if svc.embedded_kafka else None, workers.pids)
        cpu.start()
        at_rate = await phases.run(_for_seconds(events, rate, latency_s), rate)
        # Cores used meanwhile: each worker's event loop is one of them at most, the broker shares the others.
        cpu_used = cpu.stop()
    summary = _phase_summary(at_rate)
    out = {"cpu_during_latency": cpu_used, "latency_rate_events_per_s": summary["rate"],
           "latency_events": summary["events"], "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
           "recs_per_event": summary["recs_per_event"],
           "producer_late_p99_ms": round(at_rate["producer_late_p99_ms"], 2),
           # The split per batch: waiting for the broker to hand the records over, then the worker's own time.
           "consume_delay_p50_ms": summary["consume_delay_p50_ms"], "consume_delay_p99_ms": summary["consume_delay_p99_ms"]}  # fmt: skip
    out["worker_p50_ms"], out["worker_p99_ms"] = _percentiles(at_rate["batches"][:, 1])
    out["p999_ms"], out["max_ms"] = _tail(at_rate["latencies"])
    out["latency_by_third"] = latency_by_third(at_rate["latencies"])
    out["fetch_max_wait_ms"] = settings.fetch_max_wait_ms
    out["gc_full_collections"] = at_rate["gc_full_collections"]
    return out


async def worker_summary(workers: WorkerGroup) -> dict:
    """The workers' run as a whole: fetch waits, checkpoints, counts, ranker, peak RSS."""
    totals = await workers.totals()
    stalls = np.asarray(totals["checkpoint_stalls_ms"], dtype=np.float64)  # this group's whole run, every partition
    slices = np.asarray(totals["checkpoint_slices_ms"], dtype=np.float64)
    return {
        # where each worker's adaptive fetch wait ended, and how often it had to be raised
        "fetch_wait_ms": totals["fetch_wait_ms"], "fetch_stalls": totals["fetch_stalls"],
        # checkpoints taken (each a stall: the snapshot of a build in slices, a fork, or a whole build on the
        # loop), of which forks (agents/snapshot.py); the slices of the builds in slices, each a stall of its own
        "checkpoints": {"sliced": totals["checkpoint_sliced"], "in_child": totals["checkpoint_in_child"],
                        "count": len(stalls), "forks": totals["checkpoint_forks"],
                        "stall_p50_ms": _percentiles(stalls)[0],
                        "stall_max_ms": round(float(stalls.max()), 2) if len(stalls) else None,
                        # each stall in the order taken (per worker), the last 20
                        "stalls_ms": [round(float(s), 1) for s in stalls[-20:]],
                        "slices": len(slices), "slice_p50_ms": _percentiles(slices)[0],
                        "slice_max_ms": round(float(slices.max()), 2) if len(slices) else None},
        "recommendations": totals["recommendations"], "dead_letters": totals["dead_letters"], "ranker": totals["ranker"],
        "worker_rss_mb": totals["rss_mb"],
    }  # fmt: skip


def fresh_topics(settings: Settings, run: int = 1) -> Settings:
    """The same settings on new topics, a new consumer group and new Redis keys (a log without the probes'); each
    ``run`` number its own."""
    suffix = "-latency" if run == 1 else f"-latency{run}"
    return settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}{suffix}",
                                       "consumer_group": f"{settings.consumer_group}{suffix}"})  # fmt: skip


async def latency_on_fresh_topics(
    settings: Settings, svc: Services, events: list, latency_events: list, rate: float, latency_s: float,
    n_workers: int,
) -> dict:  # fmt: skip
    """A new worker group on ``settings``' (fresh) topics drains the backlog ``events`` (the same state as the
    first group), then the latency phase at ``rate``."""
    await ensure_topics(settings, svc.bootstrap)
    async with WorkerGroup(settings, svc, n_workers) as workers:
        again = await drain_backlog(settings, svc, workers, events)
        out = {"latency_backlog_events_per_s": again["pipeline_events_per_s"]}
        out.update(await latency_phase(settings, svc, workers, rate, latency_events, latency_s))
        out.update(await worker_summary(workers))
    return out


def repeat_summary(runs: list[dict]) -> dict:
    """Each run's figures (``latency_repeats``) and the spread of p50 / p99 over them."""
    # the backlog each run's group drained first (the first group's with --rate)
    rows = [{"backlog_events_per_s": r.get("latency_backlog_events_per_s", r.get("pipeline_events_per_s")),
             "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "p999_ms": r.get("p999_ms"),
             "p99_by_third_ms": [third["p99_ms"] for third in r["latency_by_third"]],
             "consume_delay_p99_ms": r["consume_delay_p99_ms"], "worker_p99_ms": r["worker_p99_ms"],
             "worker_cores": r["cpu_during_latency"].get("workers"),
             "checkpoint_stall_max_ms": r["checkpoints"]["stall_max_ms"],
             "checkpoint_slice_max_ms": r["checkpoints"]["slice_max_ms"]} for r in runs]  # fmt: skip
    spread = {}
    for key in ("p50_ms", "p99_ms"):
        values = np.asarray([row[key] for row in rows], dtype=np.float64)
        spread[key] = {"min": round(float(values.min()), 2), "median": round(float(np.median(values)), 2),
                       "max": round(float(values.max()), 2)}  # fmt: skip
    return {"latency_repeats": rows, "over_repeats": spread}


async def run(
    settings: Settings, svc: Services, events: list, pools: dict[str, list], rate: float | None, latency_s: float,
    n_workers: int = 1, repeats: int = 1,
) -> dict:  # fmt: skip
    """With ``rate``: backlog, plain loop and the latency phase at ``rate``. Without: backlog, plain loop and the
    probes with one worker group; then a second group on fresh topics drains the same backlog (the same state)
    and runs the latency phase at half the sustained rate, on a log that holds only the backlog and the phase's
    own events, as far as fetch costs go what Apache Kafka's offset index gives every fetch.

    ``repeats`` > 1: the latency phase again, ``repeats - 1`` more times, each by a new group on its own fresh
    topics after the same backlog, with the same paced events at the same rate: the same work, so what differs
    between the runs is the machine. The top-level figures stay the first run's; ``latency_repeats`` lists every
    run and ``over_repeats`` the min / median / max of p50 and p99."""
    await ensure_topics(settings, svc.bootstrap)
    out: dict = {}
    # The workers join first, on empty topics, so the backlog is drained by all of them from its first record
    # (a worker joining mid-drain would stop the others for a rebalance).
    async with WorkerGroup(settings, svc, n_workers) as workers:
        backlog = await drain_backlog(settings, svc, workers, events)
        plain = await plain_loop(settings, svc.bootstrap, backlog["events"])  # the workers idle meanwhile
        out.update(events=backlog["events"], plain_loop_events_per_s=round(plain, 1),
                   pipeline_events_per_s=backlog["pipeline_events_per_s"],
                   backlog_recs_per_event=backlog["backlog_recs_per_event"])  # fmt: skip
        if rate is None:
            out.update(await probe_phases(settings, svc, workers, backlog["pipeline_events_per_s"], pools, latency_s))
            rate = out["sustained_events_per_s"] / 2
        else:
            out.update(await latency_phase(settings, svc, workers, rate, pools["latency"], latency_s))
            out.update(await worker_summary(workers))
    out["latency_on_fresh_topics"] = "sustained_events_per_s" in out
    if out["latency_on_fresh_topics"]:
        out.update(await latency_on_fresh_topics(fresh_topics(settings), svc, events, pools["latency"], rate,
                                                 latency_s, n_workers))  # fmt: skip
    if repeats > 1:
        runs = [out]
        while len(runs) < repeats:
            number = len(runs) + 1  # run 1's topics: fresh_topics(settings) without --rate, the first group's with
            print(f"bench pipeline: latency run {number} of {repeats} on fresh topics", file=sys.stderr)
            runs.append(await latency_on_fresh_topics(fresh_topics(settings, number), svc, events, pools["latency"],
                                                      rate, latency_s, n_workers))  # fmt: skip
        out.update(repeat_summary(runs))
    out.update(ratio=round(out["pipeline_events_per_s"] / out["plain_loop_events_per_s"], 3),
               partitions=settings.partitions, workers=n_workers,
               # partitions of each input topic (KAIROS_INPUT_PARTITIONS), by Topics field name
               input_partitions=settings.input_partition_counts(),
               # True: every event was ranked on its own (KAIROS_RECOMMEND_EVERY_EVENT), recs_per_event is 1.
               recommend_every_event=settings.recommend_every_event,
               # True: the orders were published and every partition learned every order (KAIROS_SHARED_DISCOVERY).
               shared_discovery=settings.shared_discovery and settings.partitions > 1)  # fmt: skip
    return out


def bench_pipeline_main(
    settings: Settings, data_dir, source: str, n_events: int, rate: float | None, latency_s: float = LATENCY_SECONDS,
    n_workers: int = 1, repeats: int = 1,
) -> dict:
    """``n_events`` fill the backlog; then up to ``n_events`` for the rate probes, up to ``n_events`` (at most
    ``latency_s`` seconds' worth) for the latency phase, and up to ``n_events / 2`` each (as long) for half the
    sustained rate behind the probes and for half the backlog rate, all distinct events of the same source."""
    if repeats < 1:
        raise ValueError(f"--latency-repeats must be at least 1, not {repeats}")
    picked = pick_source(data_dir, source, 4 * n_events)
    stream = picked.events
    events = stream[:n_events]
    half = n_events // 2
    pools = {
        "probe": stream[n_events : 2 * n_events],
        "latency": stream[2 * n_events : 3 * n_events],
        "after_probes": stream[3 * n_events : 3 * n_events + half],
        "backlog_half": stream[3 * n_events + half :],
    }
    print(f"bench pipeline: {len(events)} backlog events from {picked.label}, {len(stream) - n_events} paced",
          file=sys.stderr)  # fmt: skip
    with services(settings) as svc:
        result = asyncio.run(run(settings, svc, events, pools, rate, latency_s, n_workers, repeats))
    result["source"] = picked.label
    return result
