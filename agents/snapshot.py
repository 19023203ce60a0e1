"""A partition's global checkpoint serialised in a forked child, off the event loop.

Building the checkpoint (``PartitionState.global_blob``: the global model, the online models, the ad and feedback
state) holds the worker's event loop for as long as it takes, and that grows with the state: 13 ms per partition
after 20,000 Taobao events, 46-75 ms after 60,000 (docs/performance.md). Forking takes the snapshot instead, like
Redis's BGSAVE: the child is a copy-on-write image of the worker at the fork, builds the blob from it, writes it to
a pipe and exits; the loop stops only for the fork (14-17 ms for a 690 MB worker, less for a smaller one).

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
from collections.abc import Callable, Mapping

#: Added to the child's niceness: the scheduler then gives the worker (and a broker on the same cores) the CPU first.
CHILD_NICENESS = 10
#: Bytes read from the child's pipe per call.
_CHUNK = 1 << 20


def fork_available() -> bool:
    return hasattr(os, "fork")


class ChildSnapshot:
    """One checkpoint being built in a child process. ``ready`` once the child is done; ``blob`` is then the
    checkpoint, or None if the child failed (the caller builds one in-process instead)."""

    def __init__(self, partition: int, offsets: Mapping[str, int], previous_checkpoint: float, pid: int, read_fd: int) -> None:
        self.partition = partition
        self.offsets = dict(offsets)
        #: When the partition's checkpoint before this one was taken (monotonic): due again from there if this
        #: one is never written.
        self.previous_checkpoint = previous_checkpoint
        self.pid = pid
        self.started = time.monotonic()
        self._future = asyncio.get_running_loop().run_in_executor(None, _collect, pid, read_fd)
        self._future.add_done_callback(_retrieve)

    @classmethod
    def start(
        cls, partition: int, build: Callable[[], bytes], offsets: Mapping[str, int], previous_checkpoint: float
    ) -> "ChildSnapshot":
        """Fork now; the child calls ``build`` on the image of this moment. ``offsets``: what that image reflects."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            _serve(build, read_fd, write_fd)
        os.close(write_fd)
        return cls(partition, offsets, previous_checkpoint, pid, read_fd)

    @property
    def ready(self) -> bool:
        return self._future.done()

    @property
    def blob(self) -> bytes | None:
        if not self._future.done() or self._future.cancelled() or self._future.exception() is not None:
            return None
        code, blob = self._future.result()
        return blob if code == 0 else None

    @property
    def exit_code(self) -> int | None:
        """The child's exit code once it is reaped (negative: killed by that signal)."""
        if not self._future.done() or self._future.cancelled() or self._future.exception() is not None:
            return None
        return self._future.result()[0]

    async def wait(self) -> bytes | None:
        """The blob (or None), once the child is done."""
        try:
            await asyncio.shield(self._future)
        except Exception:  # noqa: BLE001 - a failed read is a failed snapshot; ``blob`` says None
            pass
        return self.blob

    def discard(self) -> None:
        """Not wanted any more (a newer checkpoint was taken in-process, or the partition was released): the
        child is killed if it still runs; the reading thread then sees the pipe close and reaps it."""
        if not self._future.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _serve(build: Callable[[], bytes], read_fd: int, write_fd: int) -> None:
    """The child's whole life: build, write, exit. Never returns."""
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
        view = memoryview(build())
        while view:
            view = view[os.write(write_fd, view) :]
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
