"""A partition's global checkpoint built a slice at a time, consistent at the moment it was begun.

``PartitionState.global_blob`` encodes the partition's global model, online ranker and selection state in one call,
holding the worker's event loop for all of it: 3-26 ms per partition at the benchmark's state sizes (2 MB), more
as the state grows, while events wait behind it (docs/performance.md). Most of that time is walking a large
structure whose memory the loop's own work has pushed out of the CPU's caches; most of the bytes are keyed maps:
the co-occurrence rows (``GlobalModel.neighbours``, ~6,600 rows and 66,000 entries per partition there), the
catalog and the per-category item scores.

:class:`CheckpointBuild` splits it:

- :meth:`CheckpointBuild.__init__` (on the loop, the only part that must be atomic): the online ranker and the
  selection state (small) are encoded at once; the popularity maps are flat dicts of floats, copied with one
  ``dict.copy`` each; the keyed maps are not copied at all: the model opens a *snapshot*
  (``GlobalModel.open_snapshot``: their keys now) and, until it closes, keeps the state of a row, a catalog entry
  or a category's map the first time the stream changes or drops it (copy on write, a few keys per event);
- :meth:`CheckpointBuild.step` (on the loop, between batches): encodes the copied maps, then the keyed maps
  ``ROWS_PER_CHUNK`` keys at a time (each as kept, or as it still is when it was not touched), until a deadline;
- the last step joins the pieces with ``orjson.Fragment`` and closes the snapshot.

The result is byte for byte what ``global_blob`` returned when the build began
(``tests/agents/test_checkpoint_build.py``), so restoring it needs nothing new, and the offsets taken with it hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from kairos.engine.global_model import GlobalModel

#: Keys (co-occurrence rows, catalog entries, categories) encoded per piece: a fraction of a millisecond.
ROWS_PER_CHUNK = 256


class CheckpointBuild:
    """One partition's global checkpoint in progress. ``step`` until it returns True, then read :attr:`blob`;
    :meth:`abort` if it is not wanted any more (the model's snapshot must not stay open)."""

    def __init__(self, model: GlobalModel, ranker_state: dict, selection_state: dict, clock: float) -> None:
        # encoded now: small, and they reference live objects
        self._ranker = orjson.dumps(ranker_state)
        self._selection = orjson.dumps(selection_state)
        self._clock = clock
        self._model = model
        self._parts = model.snapshot_state()
        self._keyed = model.open_snapshot()
        self._pending = [key for key, value in self._parts.items() if value is not None and key != "events"]
        self._encoded: dict[str, bytes] = {}
        self._members: list[bytes] = []  # of the keyed part being encoded
        self._part = self._next_key = 0
        self.blob: bytes | None = None
        self.pieces = 0

    @property
    def done(self) -> bool:
        return self.blob is not None

    def step(self, deadline: float, clock: Callable[[], float] = time.perf_counter) -> bool:
        """Encode pieces until ``clock()`` reaches ``deadline`` (one piece at least); True once :attr:`blob` is
        complete."""
        while self.blob is None:
            self._piece()
            self.pieces += 1
            if clock() >= deadline:
                break
        return self.blob is not None

    def abort(self) -> None:
        self._model.close_snapshot()
        self._parts, self._keyed, self._members = {}, [], []

    def _piece(self) -> None:
        if self._pending:
            key = self._pending.pop(0)
            self._encoded[key] = orjson.dumps(self._parts[key])
            self._parts[key] = None  # the copy can go
            return
        if self._part < len(self._keyed):
            name, keys, kept, current = self._keyed[self._part]
            chunk = keys[self._next_key : self._next_key + ROWS_PER_CHUNK]
            self._next_key += len(chunk)
            if chunk:
                members = {}
                for key in chunk:
                    value = kept.get(key)
                    members[key] = current(key) if value is None else value  # not kept: unchanged since the start
                self._members.append(orjson.dumps(members)[1:-1])  # without the braces
            if self._next_key >= len(keys):
                self._encoded[name] = b"{" + b",".join(self._members) + b"}"
                self._members, self._part, self._next_key = [], self._part + 1, 0
            return
        self._finish()

    def _finish(self) -> None:
        model: dict = {}
        for key, value in self._parts.items():  # to_state's keys, in its order
            model[key] = orjson.Fragment(self._encoded[key]) if key in self._encoded else value  # else: the count
        self.blob = orjson.dumps(
            {
                "model": model,
                "ranker": orjson.Fragment(self._ranker),
                "selection": orjson.Fragment(self._selection),
                "clock": self._clock,
            }
        )
        self.abort()
