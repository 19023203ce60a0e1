"""A partition's global checkpoint built without holding the event loop for the whole build.

By default (``checkpoint_slice_ms`` > 0) it is built on the loop a slice at a time while no records wait
(:class:`SlicedSnapshot`, engine/checkpoint.py): the loop stops for the part that must be atomic (copying the score
maps, opening a copy-on-write snapshot of the keyed maps) and then for slices of about ``checkpoint_slice_ms``.
With ``checkpoint_slice_ms`` 0, the arrangement below: a forked child, or one build in place when it is expected to
be short.

Building the checkpoint (``PartitionState.global_blob``: the global model, the online models, the ad and feedback
state) holds the worker's event loop for as long as it takes, and that grows with the state: 13 ms per partition
after 20,000 Taobao events, 46-75 ms after 60,000 (docs/performance.md). Forking takes the snapshot instead, like
Redis's BGSAVE: the child is a copy-on-write image of the worker at the fork, builds the blob from it, writes it to
a pipe and exits; the loop stops only for the fork (14-17 ms for a 690 MB worker, less for a smaller one).

One child builds the checkpoints of every partition that is due, or half due, at the fork (``start_many``): each
fork is followed by a burst of page copies in the parent (CPython writes reference counts on every object it
touches, and every first write to a shared page copies it), which shows as a burst of late events; the worker
takes that once per checkpoint interval instead of once per partition.

A fork has its own cost, so a checkpoint expected to be quick is still built on the loop (:class:`InlineBudget`,
``checkpoint_inline_max_ms``): at 1.5-2 MB per partition the build takes 10-20 ms, less than the fork's stall plus
the slower batches that follow it (docs/performance.md, 2026-12-03 afternoon).

Nothing else runs in the child: no event loop, no atexit handlers, no finalizers (``os._exit``), garbage collection
off, the worker's signal handlers reset. The parent reads the pipe in a thread and keeps the blob, with the offsets
it reflects (the partition's offsets at the fork), until the partition's next commit carries it: the same batch's
commit writes those offsets as the user offsets first, so a checkpoint never gets ahead of the users it was taken
with (docs/state.md).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kairos.engine.checkpoint import CheckpointBuild

#: Added to the child's niceness: the scheduler then gives the worker (and a broker on the same cores) the CPU first.
CHILD_NICENESS = 10
#: Bytes read from the child's pipe per call.
_CHUNK = 1 << 20


#: The serialisation rate assumed before one was measured, ms per MB of checkpoint (``PartitionState.global_blob``
#: on a partition of 30,000 Taobao events: 1.6-2.1 MB in 11-19 ms, docs/performance.md).
DEFAULT_MS_PER_MB = 8.0
#: Checkpoints smaller than this do not update the measured rate (the fixed cost of a build would dominate it).
_RATE_MIN_BYTES = 256 * 1024


def fork_available() -> bool:
    return hasattr(os, "fork")


@dataclass
class InlineBudget:
    """Which checkpoints are cheap enough to build on the event loop, the rest going to a forked child.

    A fork is not free: the loop stops while the page tables are copied (8-12 ms for a 550 MB worker), and the
    batches after it run 2-5x slower until the pages the loop writes are copied (~50-100 ms); a small checkpoint
    built in place stops the loop for less. The expected time of a partition's next build is its last
    checkpoint's size (known after a restore, after a build here and after a child's) at the rate measured on
    the builds done here (a moving average)."""

    max_ms: float
    ms_per_mb: float = DEFAULT_MS_PER_MB
    sizes: dict[int, int] = field(default_factory=dict)

    def expected_ms(self, partition: int) -> float:
        return self.sizes.get(partition, 0) / 1e6 * self.ms_per_mb

    def inline(self, partition: int) -> bool:
        return self.max_ms > 0 and self.expected_ms(partition) <= self.max_ms

    def built_inline(self, partition: int, size: int, ms: float) -> None:
        self.sizes[partition] = size
        if size >= _RATE_MIN_BYTES:
            self.ms_per_mb = 0.7 * self.ms_per_mb + 0.3 * ms / (size / 1e6)

    def built_in_child(self, partition: int, size: int) -> None:
        self.sizes[partition] = size


class _Child:
    """One forked process building the checkpoints of one or more partitions, in order; its output is each blob
    behind its length (8 bytes, big-endian)."""

    def __init__(self, pid: int, read_fd: int, count: int) -> None:
        self.pid = pid
        self.count = count
        self.future = asyncio.get_running_loop().run_in_executor(None, _collect, pid, read_fd)
        self.future.add_done_callback(_retrieve)
        self._wanted = count  # views not discarded yet
        self._blobs: list[bytes] | None = None

    @property
    def exit_code(self) -> int | None:
        if not self.future.done() or self.future.cancelled() or self.future.exception() is not None:
            return None
        return self.future.result()[0]

    def blob(self, index: int) -> bytes | None:
        if self.exit_code != 0:
            return None
        if self._blobs is None:
            self._blobs = _split(self.future.result()[1], self.count)
        return self._blobs[index] if index < len(self._blobs) else None

    def release(self) -> None:
        """One view is not wanted any more; the child is killed once none is (if it still runs)."""
        self._wanted -= 1
        if self._wanted <= 0 and not self.future.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class ChildSnapshot:
    """One partition's checkpoint being built in a child process (possibly one child for several partitions:
    :meth:`start_many`). ``ready`` once the child is done; ``blob`` is then the checkpoint, or None if the child
    failed (the caller builds one in-process instead)."""

    def __init__(self, partition: int, offsets: Mapping[str, int], previous_checkpoint: float, child: _Child,
                 index: int = 0) -> None:  # fmt: skip
        self.partition = partition
        self.offsets = dict(offsets)
        #: When the partition's checkpoint before this one was taken (monotonic): due again from there if this
        #: one is never written.
        self.previous_checkpoint = previous_checkpoint
        self._child, self._index = child, index
        self._discarded = False

    @property
    def pid(self) -> int:
        return self._child.pid

    @classmethod
    def start(
        cls, partition: int, build: Callable[[], bytes], offsets: Mapping[str, int], previous_checkpoint: float
    ) -> "ChildSnapshot":
        """Fork now; the child calls ``build`` on the image of this moment. ``offsets``: what that image reflects."""
        return cls.start_many([(partition, build, offsets, previous_checkpoint)])[0]

    @classmethod
    def start_many(
        cls, wanted: Sequence[tuple[int, Callable[[], bytes], Mapping[str, int], float]]
    ) -> list["ChildSnapshot"]:
        """One fork for several partitions' checkpoints: ``(partition, build, offsets, previous checkpoint)`` each.
        A fork stops the loop while the page tables are copied, and every page the loop then writes while the
        child lives is copied again (CPython writes reference counts even when it only reads): one per
        checkpoint interval instead of one per partition."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            _serve([build for _, build, _, _ in wanted], read_fd, write_fd)
        os.close(write_fd)
        child = _Child(pid, read_fd, len(wanted))
        return [cls(partition, offsets, previous, child, k) for k, (partition, _, offsets, previous) in enumerate(wanted)]

    @property
    def ready(self) -> bool:
        return self._child.future.done()

    @property
    def blob(self) -> bytes | None:
        return self._child.blob(self._index)

    @property
    def exit_code(self) -> int | None:
        """The child's exit code once it is reaped (negative: killed by that signal)."""
        return self._child.exit_code

    async def wait(self) -> bytes | None:
        """The blob (or None), once the child is done."""
        try:
            await asyncio.shield(self._child.future)
        except Exception:  # noqa: BLE001 - a failed read is a failed snapshot; ``blob`` says None
            pass
        return self.blob

    def discard(self) -> None:
        """Not wanted any more (a newer checkpoint was taken in-process, or the partition was released): the
        child is killed if it still runs and no other partition waits for it; the reading thread then sees the
        pipe close and reaps it."""
        if not self._discarded:
            self._discarded = True
            self._child.release()


class SlicedSnapshot:
    """One partition's checkpoint built on the event loop a slice at a time (engine/checkpoint.py), with the
    interface of :class:`ChildSnapshot` that the worker reads: ``ready``, then ``blob`` (None: the build failed),
    ``offsets``, ``previous_checkpoint``, ``discard()``. The worker calls :meth:`advance` when no records wait."""

    def __init__(self, partition: int, build: CheckpointBuild, offsets: Mapping[str, int], previous_checkpoint: float):
        self.partition = partition
        self.offsets = dict(offsets)
        self.previous_checkpoint = previous_checkpoint
        self._build = build
        #: When the build began (monotonic).
        self.started = time.monotonic()
        self.error: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self._build.done or self.error is not None

    @property
    def blob(self) -> bytes | bytearray | None:
        return self._build.blob if self.error is None else None

    @property
    def exit_code(self) -> str | None:
        """What went wrong, for the worker's log (the name :class:`ChildSnapshot` reports it under)."""
        return None if self.error is None else repr(self.error)

    def advance(self, slice_ms: float) -> float:
        """Build for about ``slice_ms`` (one piece at least); returns how long it held the loop, ms. A build that
        raises is over: ``ready``, with no blob (the worker then builds its checkpoints whole)."""
        if self.ready:
            return 0.0
        t0 = time.perf_counter()
        try:
            self._build.step(t0 + slice_ms / 1000.0)
        except Exception as exc:  # noqa: BLE001 - a failed build is a checkpoint not taken, not a dead worker
            self.error = exc
            self._build.abort()
        return (time.perf_counter() - t0) * 1000.0

    def discard(self) -> None:
        if not self._build.done:
            self._build.abort()


def _split(data: bytes, count: int) -> list[bytes]:
    """The child's output back into its blobs (fewer than ``count`` if it is cut short)."""
    blobs, at = [], 0
    while len(blobs) < count and at + 8 <= len(data):
        size = int.from_bytes(data[at : at + 8], "big")
        if at + 8 + size > len(data):
            break
        blobs.append(data[at + 8 : at + 8 + size])
        at += 8 + size
    return blobs


def _serve(builds: Sequence[Callable[[], bytes]], read_fd: int, write_fd: int) -> None:
    """The child's whole life: build each, write each behind its length, exit. Never returns."""
    status = 1
    try:
        os.close(read_fd)
        gc.disable()  # a collection would touch (and so copy) pages of the whole heap for nothing
        # Background work: on a machine whose cores the worker shares with the broker, the child would take CPU
        # from the event loop for as long as it serialises (the latency shows it as a burst of late events).
        os.nice(CHILD_NICENESS)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        try:
            signal.set_wakeup_fd(-1)  # the parent's loop listens on that fd
        except ValueError:
            pass  # forked from another thread than the main one: no wakeup fd was set here
        for build in builds:
            blob = build()
            view = memoryview(len(blob).to_bytes(8, "big") + blob)
            while view:
                view = view[os.write(write_fd, view) :]
            del view, blob
        status = 0
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not run the parent's code on
        status = 1
    finally:
        os._exit(status)


def _collect(pid: int, read_fd: int) -> tuple[int, bytes]:
    """In a thread: the child's output until it closes the pipe, and its exit code once reaped."""
    chunks: list[bytes] = []
    try:
        while chunk := os.read(read_fd, _CHUNK):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def _retrieve(future: asyncio.Future) -> None:
    """Mark a failure as seen (it is reported through ``blob``), so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
