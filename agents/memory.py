"""Process-level memory settings for long-running workers (glibc malloc on Linux; a no-op elsewhere).

The engine's own structures are bounded (docs/operations.md, "Memory"), but a process's RSS also follows the
allocator: with glibc's default *dynamic* mmap threshold, freeing one large block (a batch's feature matrix)
raises the threshold to that size, so later large blocks come from the heap, and heap memory freed in the middle
is not returned to the system. A worker that once processed a large catch-up batch would keep that peak
for good. Two measures:

- ``fix_mmap_threshold``: blocks of 128 KiB and more are always mmapped (and unmapped when freed), the
  threshold no longer moves;
- ``trim``: ``malloc_trim(0)`` hands free heap pages back (called from the worker's periodic housekeeping).

And one for latency: CPython's cyclic garbage collector walks every tracked object it has not been told to ignore
when it runs a full (generation 2) collection. A worker holds hundreds of thousands of them (user states, the
co-occurrence and discovery graphs); one full collection of a partition set warmed on 15,000 Taobao events took
380 ms on the development VM, and while the state grows such collections come back every few seconds. Every event
queued behind one waits for it. ``CollectorPolicy`` moves the survivors into the permanent generation every
``freeze_interval_s`` (``gc.freeze``): full collections then walk only what was allocated since, and a full sweep
of everything (``gc.unfreeze`` + ``gc.collect``, the one long pause) runs every ``sweep_interval_s`` to reclaim
reference cycles that died while frozen (the engine's state is acyclic; asyncio and aiokafka make a few).
``watch_collector_pauses`` exports every collection's pause (``kairos_gc_pause_seconds``) so SREs can see them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
import time

from kairos.engine import metrics

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only (musl has no mallopt / malloc_trim)
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold (see the module docstring); False where there is no glibc."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold pinned at %d bytes: %s", threshold, ok)
    return ok


def trim() -> bool:
    """Return free heap memory to the system; True if some was released."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


_pause_started: list[float] = [0.0]


def _on_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _pause_started[0] = time.perf_counter()
        return
    metrics.GC_PAUSE.labels(str(info.get("generation", -1))).observe(time.perf_counter() - _pause_started[0])


def watch_collector_pauses() -> None:
    """Time every garbage collection into ``kairos_gc_pause_seconds{generation}`` (idempotent)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


class CollectorPolicy:
    """Keeps full garbage collections short (see the module docstring). ``tick`` is called from the worker's
    loop; it does its work at most once per interval and returns what it did ("", "freeze" or "sweep")."""

    def __init__(self, freeze_interval_s: float = 5.0, sweep_interval_s: float = 900.0, clock=time.monotonic) -> None:
        self.freeze_interval_s = freeze_interval_s
        self.sweep_interval_s = sweep_interval_s
        self._clock = clock
        now = clock()
        self._last_freeze = now
        self._last_sweep = now

    def tick(self) -> str:
        now = self._clock()
        if now - self._last_sweep >= self.sweep_interval_s:
            self._last_sweep = self._last_freeze = now
            gc.unfreeze()
            gc.collect()  # the one long pause: cycles that died while frozen
            gc.freeze()
            return "sweep"
        if now - self._last_freeze >= self.freeze_interval_s:
            self._last_freeze = now
            gc.collect(1)  # the young garbage goes first, so it is not frozen with the survivors
            gc.freeze()
            return "freeze"
        return ""
