"""A partition's global checkpoint built a slice at a time, consistent at the moment it was begun.

``PartitionState.global_blob`` encodes the partition's global model, online ranker and selection state in one call,
holding the worker's event loop for all of it: 3-26 ms per partition at the benchmark's state sizes (2 MB), more
as the state grows, while events wait behind it (docs/performance.md). Most of that time is walking a large
structure whose memory the loop's own work has pushed out of the CPU's caches; most of the bytes are keyed maps:
the co-occurrence rows (``GlobalModel.neighbours``, ~6,600 rows and 66,000 entries per partition there), the
catalog and the per-category item scores.

:class:`CheckpointBuild` splits it:

- :meth:`CheckpointBuild.__init__` (on the loop, the only part that must be atomic): the online ranker and the
  selection state are encoded at once, but for the discovery model's large maps (``PurchaseGraph.open_snapshot``:
  its co-purchase rows and user-kNN lists, copy on write, and its name tokens and sibling lists, shallow copies),
  which are left out of the selection state and encoded in pieces in their places (``_spliced``); the three score
  maps (trend, popularity, category popularity) are flat dicts of floats, copied with one ``dict.copy`` each; the
  keyed maps are not copied at all: the model opens a *snapshot* (``GlobalModel.open_snapshot``: their keys now)
  and, until it closes, keeps the state of a row, a catalog entry or a category's map the first time the stream
  changes or drops it (copy on write, a few keys per event);
- :meth:`CheckpointBuild.step` (on the loop, when the worker has nothing else to do): encodes the maps
  ``ENTRIES_PER_PIECE`` entries at a time (each key as kept, or as it still is when it was not touched), until the
  next piece would end past a deadline, appending to one growing buffer; the last piece closes the snapshot, and
  the buffer is the blob.

The result is byte for byte what ``global_blob`` returned when the build began
(``tests/agents/test_checkpoint_build.py``), so restoring it needs nothing new, and the offsets taken with it hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from kairos.engine.discovery import PurchaseGraph
from kairos.engine.global_model import GlobalModel

#: Map entries encoded per piece (a co-occurrence row counts its neighbours, a category its items): 2,048 took
#: 0.5-2.5 ms on the worker however the entries are spread over keys; with 1,024 and a slice that stops before a
#: piece that would end past its budget, slices of 2 ms end by 2.1-2.3 ms (docs/performance.md, 2026-12-04).
ENTRIES_PER_PIECE = 1024


class _Map:
    """A JSON object to encode in pieces: its keys in order, a key's value, a value's weight in entries; or, with
    ``pairs``, a JSON array of [key, value] pairs in that order."""

    __slots__ = ("keys", "value_of", "weight", "pairs", "next")

    def __init__(self, keys: list[str], value_of: Callable[[str], object], weight: Callable[[object], int],
                 pairs: bool = False) -> None:  # fmt: skip
        self.keys, self.value_of, self.weight, self.pairs, self.next = keys, value_of, weight, pairs, 0


def _kept_or_current(kept: dict, current: Callable[[str], object]) -> Callable[[str], object]:
    def value_of(key: str) -> object:
        value = kept.get(key)
        return current(key) if value is None else value  # not kept: unchanged since the snapshot

    return value_of


#: Stands for a map of the discovery model in the selection state encoded at once; a string no id can be.
_IN_PIECES = "\u0000in pieces: {}\u0000"


def _spliced(head: bytes, selection: dict, parts: dict, tail: bytes) -> list[bytes | _Map]:
    """``head`` + the selection state encoded + ``tail``, with the discovery model's ``parts`` (``PurchaseGraph.
    open_snapshot``: dotted paths in its state, which ``selection`` holds without them) as maps to encode in
    pieces where they stand: each is given a placeholder string, the rest encoded at once and split around the
    placeholders."""
    discovery = dict(selection["discovery"])
    for path in parts:
        *outer, last = path.split(".")
        holder = discovery
        for name in outer:  # copies along the path: the live state's dicts are not written
            holder[name] = holder = dict(holder[name])
        holder[last] = _IN_PIECES.format(path)
    rest = orjson.dumps({**selection, "discovery": discovery})
    out: list[bytes | _Map] = []
    for path in sorted(parts, key=lambda p: rest.index(orjson.dumps(_IN_PIECES.format(p)))):
        before, rest = rest.split(orjson.dumps(_IN_PIECES.format(path)))
        keys, kept, current, pairs = parts[path]
        out += [head + before, _Map(keys, _kept_or_current(kept, current), len, pairs)]
        head = b""
    return out + [head + rest + tail]


def _one(_value) -> int:
    return 1


class CheckpointBuild:
    """One partition's global checkpoint in progress. ``step`` until it returns True, then read :attr:`blob`;
    :meth:`abort` if it is not wanted any more (the model's snapshot must not stay open)."""

    def __init__(
        self,
        model: GlobalModel,
        ranker_state: dict,
        selection_state: dict,
        clock: float,
        discovery: PurchaseGraph | None = None,
    ) -> None:
        self._model = model
        self._discovery: PurchaseGraph | None = None
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
        # encoded now: small, and they reference live objects; but the discovery model's large maps in pieces too
        head = b'},"ranker":' + orjson.dumps(ranker_state) + b',"selection":'
        tail = b',"clock":' + orjson.dumps(clock) + b"}"
        if discovery is not None and "discovery" in selection_state:
            todo += _spliced(head, selection_state, discovery.open_snapshot(), tail)
            self._discovery = discovery
        else:
            todo.append(head + orjson.dumps(selection_state) + tail)
        self._todo = todo
        self._at = 0
        # The blob so far, grown piece by piece: joining 8.5 MB of pieces at the end took 1.2-4.2 ms of one
        # slice on Online Retail (a fresh buffer's pages faulted in and filled at once); grown, each slice pays
        # for its own bytes, and the finished buffer is the blob (Redis takes a bytearray as it takes bytes).
        self._out = bytearray()
        self.blob: bytearray | None = None
        self.pieces = 0

    @property
    def done(self) -> bool:
        return self.blob is not None

    def step(self, deadline: float, clock: Callable[[], float] = time.perf_counter) -> bool:
        """Encode pieces until the next one, if it took as long as the last, would end past ``deadline`` (one piece
        at least); True once :attr:`blob` is complete. Stopping only once the deadline had passed let a slice run
        up to a whole piece (0.5-2.5 ms) over it (docs/performance.md)."""
        before = clock()
        while self.blob is None:
            self._piece()
            self.pieces += 1
            now = clock()
            if now + (now - before) > deadline:
                break
            before = now
        return self.blob is not None

    def abort(self) -> None:
        self._model.close_snapshot()
        if self._discovery is not None:
            self._discovery.close_snapshot()
        self._todo, self._out = [], bytearray()

    def _piece(self) -> None:
        """The bytes up to the next map, and up to ``ENTRIES_PER_PIECE`` entries of it; or the end."""
        todo, out = self._todo, self._out
        while self._at < len(todo) and isinstance(todo[self._at], bytes):
            out += todo[self._at]
            self._at += 1
        if self._at == len(todo):
            self.abort()
            self.blob = out
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
        opening, closing = (b"[", b"]") if job.pairs else (b"{", b"}")
        out += opening if first else b","
        if members:  # the members without the brackets
            out += memoryview(orjson.dumps(list(members.items()) if job.pairs else members))[1:-1]
        if last:
            out += closing
            self._at += 1
