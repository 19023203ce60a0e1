"""A partition's global checkpoint built a slice at a time, consistent at the moment it was begun.

``PartitionState.global_blob`` encodes the partition's global model, online ranker and selection state in one call,
holding the worker's event loop for all of it: 3-26 ms per partition at the benchmark's state sizes (2 MB), more
as the state grows, while events wait behind it (docs/performance.md). Most of that time is walking a large
structure whose memory the loop's own work has pushed out of the CPU's caches; most of the bytes are keyed maps:
the co-occurrence rows (``GlobalModel.neighbours``, ~6,600 rows and 66,000 entries per partition there), the
catalog and the per-category item scores.

:class:`CheckpointBuild` splits it:

- :meth:`CheckpointBuild.__init__` (on the loop, the only part that must be atomic): the online ranker and the
  selection state (small) are encoded at once; the three score maps (trend, popularity, category popularity) are
  flat dicts of floats, copied with one ``dict.copy`` each; the keyed maps are not copied at all: the model opens a *snapshot*
  (``GlobalModel.open_snapshot``: their keys now) and, until it closes, keeps the state of a row, a catalog entry
  or a category's map the first time the stream changes or drops it (copy on write, a few keys per event);
- :meth:`CheckpointBuild.step` (on the loop, when the worker has nothing else to do): encodes the maps
  ``ENTRIES_PER_PIECE`` entries at a time (each key as kept, or as it still is when it was not touched), until a
  deadline; the last piece joins the bytes and closes the snapshot.

The result is byte for byte what ``global_blob`` returned when the build began
(``tests/agents/test_checkpoint_build.py``), so restoring it needs nothing new, and the offsets taken with it hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from kairos.engine.global_model import GlobalModel

#: Map entries encoded per piece (a co-occurrence row counts its neighbours, a category its items): 0.5-2.5 ms on
#: the worker however the entries are spread over keys (docs/performance.md, 2026-12-04).
ENTRIES_PER_PIECE = 2048


class _Map:
    """A JSON object to encode in pieces: its keys in order, a key's value, a value's weight in entries."""

    __slots__ = ("keys", "value_of", "weight", "next")

    def __init__(self, keys: list[str], value_of: Callable[[str], object], weight: Callable[[object], int]) -> None:
        self.keys, self.value_of, self.weight, self.next = keys, value_of, weight, 0


def _kept_or_current(kept: dict, current: Callable[[str], object]) -> Callable[[str], object]:
    def value_of(key: str) -> object:
        value = kept.get(key)
        return current(key) if value is None else value  # not kept: unchanged since the snapshot

    return value_of


def _one(_value) -> int:
    return 1


class CheckpointBuild:
    """One partition's global checkpoint in progress. ``step`` until it returns True, then read :attr:`blob`;
    :meth:`abort` if it is not wanted any more (the model's snapshot must not stay open)."""

    def __init__(self, model: GlobalModel, ranker_state: dict, selection_state: dict, clock: float) -> None:
        self._model = model
        # The blob as a sequence of bytes and of maps still to encode, in ``global_blob``'s order and format.
        todo: list[bytes | _Map] = [b'{"model":{']
        for n, (name, kind, payload) in enumerate(model.open_snapshot()):
            todo.append((b"," if n else b"") + orjson.dumps(name) + b":")
            if kind == "scores":
                todo += [b'{"ref":' + orjson.dumps(payload["ref"]) + b',"s":',
                         _Map(list(payload["s"]), payload["s"].__getitem__, _one), b"}"]  # fmt: skip
            elif kind == "keyed":
                keys, kept, current, weight = payload
                todo.append(_Map(keys, _kept_or_current(kept, current), weight))
            else:
                todo.append(orjson.dumps(payload))
        # encoded now: small, and they reference live objects
        todo.append(b'},"ranker":' + orjson.dumps(ranker_state) + b',"selection":' + orjson.dumps(selection_state)
                    + b',"clock":' + orjson.dumps(clock) + b"}")  # fmt: skip
        self._todo = todo
        self._at = 0
        self._out: list[bytes] = []
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
        self._todo, self._out = [], []

    def _piece(self) -> None:
        """The bytes up to the next map, and up to ``ENTRIES_PER_PIECE`` entries of it; or the end."""
        todo, out = self._todo, self._out
        while self._at < len(todo) and isinstance(todo[self._at], bytes):
            out.append(todo[self._at])
            self._at += 1
        if self._at == len(todo):
            blob = b"".join(out)
            self.abort()
            self.blob = blob
            return
        job = todo[self._at]
        assert isinstance(job, _Map)
        members, budget, keys = {}, ENTRIES_PER_PIECE, job.keys
        while job.next < len(keys) and budget > 0:
            key = keys[job.next]
            job.next += 1
            value = members[key] = job.value_of(key)
            budget -= job.weight(value)
        first, last = job.next == len(members), job.next == len(keys)
        body = orjson.dumps(members)[1:-1] if members else b""  # the members without the braces
        out.append((b"{" if first else b",") + body + (b"}" if last else b""))
        if last:
            self._at += 1
