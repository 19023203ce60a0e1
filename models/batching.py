"""Micro-batching: concurrent callers' rows are concatenated into one inference call.

Each event scores a handful of candidates; one ONNX call per event wastes most of its fixed cost. The batcher
collects requests until it holds ``max_rows`` rows or the oldest request has waited ``max_wait_ms``, runs the
model once (in a worker thread, so the event loop keeps accepting events) and hands each caller its own slice.

>>> import asyncio, numpy as np
>>> calls = []
>>> def double(inputs):
...     calls.append(len(inputs["x"]))
...     return inputs["x"] * 2
>>> async def main():
...     b = MicroBatcher(double, max_rows=64, max_wait_ms=5)
...     out = await asyncio.gather(*(b.submit({"x": np.full(2, i, np.float32)}) for i in range(4)))
...     await b.close()
...     return [o.tolist() for o in out]
>>> asyncio.run(main())
[[0.0, 0.0], [2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]
>>> calls
[8]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

BatchFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class _Request:
    inputs: Mapping[str, np.ndarray]
    rows: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters for metrics: calls made, rows scored, requests served."""

    batches: int = 0
    rows: int = 0
    requests: int = 0


class MicroBatcher:
    """Batch concurrent :meth:`submit` calls into one ``fn`` call (up to ``max_rows`` rows or ``max_wait_ms``).

    ``fn`` takes a dict of arrays whose first axis is rows and returns an array with one leading row per input row.
    A single request larger than ``max_rows`` is run alone, never split.
    """

    def __init__(self, fn: BatchFn, max_rows: int = 256, max_wait_ms: float = 2.0, run_in_thread: bool = True):
        if max_rows < 1 or max_wait_ms < 0:
            raise ValueError("max_rows must be >= 1 and max_wait_ms >= 0")
        self.fn, self.max_rows, self.max_wait_s = fn, max_rows, max_wait_ms / 1000.0
        self.run_in_thread = run_in_thread
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Queue one request and wait for its rows of the result."""
        rows = len(next(iter(inputs.values())))
        if rows == 0:
            return np.empty(0, dtype=np.float32)
        self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(inputs, rows, future))
        return await future

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def _run(self) -> None:
        carry: _Request | None = None
        while True:
            first = carry or await self._queue.get()
            batch, carry = await self._collect(first)
            await self._execute(batch)

    async def _collect(self, first: _Request) -> tuple[list[_Request], _Request | None]:
        # Returns the batch and, when the next request would overflow max_rows, that request for the next batch.
        batch, rows = [first], first.rows
        deadline = first.enqueued + self.max_wait_s
        while rows < self.max_rows:
            timeout = deadline - time.perf_counter()
            try:
                nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if rows + nxt.rows > self.max_rows:
                return batch, nxt
            batch.append(nxt)
            rows += nxt.rows
        return batch, None

    async def _execute(self, batch: list[_Request]) -> None:
        names = batch[0].inputs.keys()
        merged = {n: np.concatenate([np.asarray(r.inputs[n]) for r in batch]) for n in names}
        try:
            if self.run_in_thread:
                result = await asyncio.to_thread(self.fn, merged)
            else:
                result = self.fn(merged)
        except Exception as exc:  # every waiting caller gets the error; the batcher keeps running
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.rows += len(result)
        self.stats.requests += len(batch)
        start = 0
        for r in batch:
            if not r.future.done():
                r.future.set_result(result[start : start + r.rows])
            start += r.rows

    async def close(self) -> None:
        """Stop the worker task (pending requests are cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
