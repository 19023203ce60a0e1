"""The hot-path workers of ``kairos bench pipeline``, each in its own process, in one consumer group.

A worker is the Faust app with the ingest role only (``running_app(..., roles={"ingest"})``), started in a spawned
process on the benchmark's broker and Redis; it answers requests for its counters over a pipe. With ``--workers 2``
two such processes split the state partitions (agents/assignor.py, the same split as two ``kairos worker --roles
ingest`` deployments): one event loop per core, as a 2-core machine would be run. With one worker the benchmark measures the
same thing as before, minus the monitor and the orchestration that used to share the worker's process.

The parent polls the children (:meth:`WorkerGroup.totals`): counters summed over the workers, the batch timings of
each since a mark, the CPU seconds each used (``getrusage`` in the child), full collections and checkpoint stalls.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import time

from kairos.agents.runtime import Services, running_app
from kairos.agents.settings import Settings
from kairos.engine import metrics

#: How long a worker process may take to start (imports, models, joining the group).
START_TIMEOUT_S = 180.0
#: How long the group may take to settle once every worker is up (the last join's rebalance).
SETTLE_TIMEOUT_S = 90.0
#: How long a worker may take to answer a request: its loop answers between batches, so only a stuck (or dead)
#: worker takes longer, and the benchmark fails instead of waiting forever.
ANSWER_TIMEOUT_S = 60.0


def full_collections() -> tuple[float, float]:
    """(count, seconds) of full garbage collections so far in this process (kairos_gc_pause_seconds)."""
    values = {
        sample.name.rsplit("_", 1)[-1]: sample.value
        for metric in metrics.GC_PAUSE.collect()
        for sample in metric.samples
        if sample.labels.get("generation") == "2" and sample.name.endswith(("_count", "_sum"))
    }
    return values.get("count", 0.0), values.get("sum", 0.0)


def worker_counters(worker, timings_since: int | None) -> dict:
    """What one worker process reports: its counters now, and its batch timings from index ``timings_since``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    first = worker.first_batch_at
    out = {
        "pid": os.getpid(),
        "partitions": sorted(worker.partitions),
        "events": worker.stats["events"],
        "recommendations": worker.stats["recommendations"],
        "dead_letters": worker.stats["dead_letters"],
        # perf_counter() is per process: the first batch's wall-clock time, comparable across workers.
        "first_batch_wall": time.time() - (time.perf_counter() - first) if first is not None else None,
        "batches": len(worker.batch_timings),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024.0,
        "gc_full": full_collections(),
        "checkpoint_in_child": worker.checkpoint_in_child,
        "checkpoint_stalls_ms": list(worker.checkpoint_stalls_ms),
        "checkpoint_forks": worker.checkpoint_forks,
        "checkpoint_sliced": worker.checkpoint_sliced,
        "checkpoint_slices_ms": list(worker.checkpoint_slices_ms),
        "fetch_wait_ms": worker.fetch_wait.wait_ms if worker.fetch_wait is not None else None,
        "fetch_stalls": worker.fetch_wait.control.stalls if worker.fetch_wait is not None else None,
        "ranker": next(iter(worker.partitions.values())).selector.model_version if worker.partitions else "",
    }
    if timings_since is not None:
        out["timings"] = list(worker.batch_timings)[timings_since:]
    return out


def _worker_process(settings: Settings, svc: Services, conn) -> None:
    asyncio.run(_serve(settings, svc, conn))


async def _serve(settings: Settings, svc: Services, conn) -> None:
    """Run the ingest role until the parent sends ``None``; answer ``"events"`` with the events counted so far (the
    parent's frequent poll: nothing else is computed on the worker's loop for it) and each other request (a
    batch-timing index, or ``-1`` for no timings) with :func:`worker_counters`."""
    loop = asyncio.get_running_loop()
    # The copy agent runs in its own process in production; here it would only compete for the CPU.
    async with running_app(settings, svc, roles=frozenset({"ingest"})) as app:
        conn.send("ready")
        while (request := await loop.run_in_executor(None, conn.recv)) is not None:
            worker = app.ingest_worker
            if request == "events":
                conn.send(worker.stats["events"])
            else:
                conn.send(worker_counters(worker, None if request < 0 else request))


class WorkerGroup:
    """``n`` worker processes in the benchmark's consumer group; an async context manager that returns once the
    partitions are split among all of them (each owns at least one, none twice)."""

    def __init__(self, settings: Settings, svc: Services, n: int) -> None:
        if not 1 <= n <= settings.partitions:
            raise ValueError(f"--workers must be between 1 and the partition count ({settings.partitions}), not {n}")
        context = multiprocessing.get_context("spawn")
        self.settings = settings
        self._conns = []
        self._processes = []
        for _ in range(n):
            parent, child = context.Pipe()
            self._conns.append(parent)
            self._processes.append(context.Process(target=_worker_process, args=(settings, svc, child)))
        self._lock = asyncio.Lock()
        self.pids: list[int] = []

    def __len__(self) -> int:
        return len(self._processes)

    async def __aenter__(self) -> "WorkerGroup":
        loop = asyncio.get_running_loop()
        for process in self._processes:
            process.start()
        try:
            for conn in self._conns:
                if not await loop.run_in_executor(None, conn.poll, START_TIMEOUT_S):
                    raise RuntimeError("a benchmark worker process did not start")
                if await loop.run_in_executor(None, conn.recv) != "ready":
                    raise RuntimeError("a benchmark worker process failed to start")
            self.pids = [p.pid for p in self._processes]
            if not await self.until(self._settled, SETTLE_TIMEOUT_S, 0.2):
                raise RuntimeError("the benchmark workers did not split the partitions")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    def _settled(self, counters: list[dict]) -> bool:
        owned = [p for c in counters for p in c["partitions"]]
        return all(c["partitions"] for c in counters) and sorted(owned) == list(range(self.settings.partitions))

    async def __aexit__(self, *exc) -> None:
        loop = asyncio.get_running_loop()
        for conn, process in zip(self._conns, self._processes):
            if process.is_alive():
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for process in self._processes:
            if process.pid is None:
                continue
            await loop.run_in_executor(None, process.join, 30.0)
            if process.is_alive():
                process.kill()
                await loop.run_in_executor(None, process.join, 5.0)

    async def counters(self, timings_since: list[int] | None = None) -> list[dict]:
        """Each worker's :func:`worker_counters` (with its batch timings from ``timings_since[k]`` if given)."""
        async with self._lock:
            return [await self._ask(k, -1 if timings_since is None else timings_since[k]) for k in range(len(self._conns))]

    async def _ask(self, k: int, request):
        """Send worker ``k`` a request and return its answer (the caller holds the lock)."""
        loop = asyncio.get_running_loop()
        conn = self._conns[k]
        conn.send(request)
        if not await loop.run_in_executor(None, conn.poll, ANSWER_TIMEOUT_S):
            alive = self._processes[k].is_alive()
            raise RuntimeError(f"benchmark worker {k} ({'stuck' if alive else 'exited'}) did not answer in {ANSWER_TIMEOUT_S:.0f} s")
        return conn.recv()

    async def events(self) -> int:
        """Events counted by all the workers (cheap: the poll while a phase runs)."""
        async with self._lock:
            return sum([await self._ask(k, "events") for k in range(len(self._conns))])

    async def until_events(self, target: int, timeout_s: float, interval_s: float = 0.02) -> bool:
        """Wait until the workers have counted ``target`` events; False after ``timeout_s``."""
        return await _poll(self.events, lambda events: events >= target, timeout_s, interval_s)

    async def totals(self, timings_since: list[int] | None = None) -> dict:
        """The workers' counters summed (batch marks, CPU and peak RSS per worker; timings concatenated)."""
        each = await self.counters(timings_since)
        firsts = [c["first_batch_wall"] for c in each if c["first_batch_wall"] is not None]
        return {
            "events": sum(c["events"] for c in each),
            "recommendations": sum(c["recommendations"] for c in each),
            "dead_letters": sum(c["dead_letters"] for c in each),
            "first_batch_wall": min(firsts) if firsts else None,
            "batches": [c["batches"] for c in each],
            "cpu_s": sum(c["cpu_s"] for c in each),
            "rss_mb": [round(c["rss_mb"], 1) for c in each],
            "gc_full": tuple(sum(c["gc_full"][i] for c in each) for i in (0, 1)),
            "checkpoint_in_child": all(c["checkpoint_in_child"] for c in each),
            "checkpoint_stalls_ms": [s for c in each for s in c["checkpoint_stalls_ms"]],
            "checkpoint_forks": sum(c["checkpoint_forks"] for c in each),
            "checkpoint_sliced": all(c["checkpoint_sliced"] for c in each),
            "checkpoint_slices_ms": [s for c in each for s in c["checkpoint_slices_ms"]],
            "fetch_wait_ms": [c["fetch_wait_ms"] for c in each],
            "fetch_stalls": sum(c["fetch_stalls"] or 0 for c in each),
            "ranker": next((c["ranker"] for c in each if c["ranker"]), ""),
            "timings": [t for c in each for t in c.get("timings", [])],
        }

    async def until(self, predicate, timeout_s: float, interval_s: float = 0.02) -> bool:
        """Poll the workers' counters until ``predicate(list of counters)`` holds; False after ``timeout_s``."""
        return await _poll(self.counters, predicate, timeout_s, interval_s)


async def _poll(read, done, timeout_s: float, interval_s: float) -> bool:
    """``await read()`` every ``interval_s`` until ``done(value)``; False once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        if done(await read()):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)
