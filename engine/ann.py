"""Approximate nearest-neighbour search over item embeddings (cosine similarity).

:class:`ItemIndex` wraps a USearch HNSW index (see ``docs/selection.md`` for why USearch) behind a small API keyed by
item id strings. When ``usearch`` is not installed, or ``backend="exact"`` is asked for, the same API runs an exact
brute-force search in NumPy, which is also the reference the recall test compares against.

Examples
--------
>>> index = ItemIndex(dim=2, backend="exact")
>>> index.add(["a", "b", "c"], np.array([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]]))
>>> [item for item, _ in index.search(np.array([1.0, 0.1]), k=2)]
['a', 'b']
>>> [item for item, _ in index.search(np.array([1.0, 0.1]), k=2, exclude={"a"})]
['b', 'c']
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

try:  # optional: the exact fallback keeps the engine working without the wheel
    from usearch.index import Index as _UsearchIndex
except ImportError:  # pragma: no cover - depends on the environment
    _UsearchIndex = None


class ItemIndex:
    """Cosine nearest neighbours of item embeddings, with incremental add, remove and excluded ids.

    Parameters
    ----------
    dim
        Embedding dimension.
    backend
        ``"auto"`` (USearch when installed, else exact), ``"usearch"`` or ``"exact"``.
    connectivity, expansion_search
        HNSW graph degree and search beam width (USearch only); larger = better recall, slower.
    """

    def __init__(self, dim: int, backend: str = "auto", connectivity: int = 16, expansion_search: int = 64) -> None:
        if backend == "auto":
            backend = "usearch" if _UsearchIndex is not None else "exact"
        if backend == "usearch" and _UsearchIndex is None:
            raise ImportError("backend='usearch' needs the usearch package")
        if backend not in ("usearch", "exact"):
            raise ValueError(f"unknown backend {backend!r}")
        self.dim, self.backend = dim, backend
        self._impl = (
            _UsearchBackend(dim, connectivity, expansion_search) if backend == "usearch" else _ExactBackend(dim)
        )

    def __len__(self) -> int:
        return len(self._impl.key_of)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._impl.key_of

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add (or replace) items; ``vectors`` is ``(len(item_ids), dim)``."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(item_ids), self.dim)
        self.remove([i for i in item_ids if i in self])
        self._impl.add(list(item_ids), vectors)

    def remove(self, item_ids: Sequence[str]) -> None:
        """Remove items; unknown ids are ignored."""
        self._impl.remove([i for i in item_ids if i in self])

    def search(self, vector: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to ``k`` ``(item_id, cosine similarity)`` pairs, most similar first, skipping ``exclude``."""
        if len(self) == 0 or k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(self.dim)
        wanted = min(k + len(exclude), len(self))
        while True:
            # The HNSW search has no predicate in Python, so over-fetch by the excluded count and filter after.
            hits = [(item, s) for item, s in self._impl.search(query, wanted) if item not in exclude]
            if len(hits) >= k or wanted >= len(self):
                return hits[:k]
            wanted = min(2 * wanted, len(self))


class _ExactBackend:
    """Brute-force cosine search over a dense matrix; removal swaps the last row into the gap (O(1))."""

    def __init__(self, dim: int) -> None:
        self.key_of: dict[str, int] = {}
        self._ids: list[str] = []
        self._matrix = np.zeros((0, dim), dtype=np.float32)

    def add(self, item_ids: list[str], vectors: np.ndarray) -> None:
        for item in item_ids:
            self.key_of[item] = len(self._ids)
            self._ids.append(item)
        self._matrix = np.vstack([self._matrix, _normalise(vectors)])

    def remove(self, item_ids: list[str]) -> None:
        for item in item_ids:
            row, last = self.key_of.pop(item), len(self._ids) - 1
            if row != last:
                self._matrix[row] = self._matrix[last]
                self._ids[row] = self._ids[last]
                self.key_of[self._ids[row]] = row
            self._ids.pop()
            self._matrix = self._matrix[:last]

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        sims = self._matrix @ _normalise(query[None, :])[0]
        top = np.argsort(-sims, kind="stable")[:k]
        return [(self._ids[i], float(sims[i])) for i in top]


class _UsearchBackend:
    """USearch HNSW; string ids map to fresh uint64 keys so a replaced item never collides with its old node."""

    def __init__(self, dim: int, connectivity: int, expansion_search: int) -> None:
        self._index = _UsearchIndex(ndim=dim, metric="cos", dtype="f32", connectivity=connectivity,
                                    expansion_search=expansion_search)
        self.key_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_key = 0

    def add(self, item_ids: list[str], vectors: np.ndarray) -> None:
        keys = np.arange(self._next_key, self._next_key + len(item_ids), dtype=np.uint64)
        self._next_key += len(item_ids)
        for item, key in zip(item_ids, keys.tolist()):
            self.key_of[item], self._id_of[key] = key, item
        self._index.add(keys, vectors)

    def remove(self, item_ids: list[str]) -> None:
        if not item_ids:
            return
        keys = [self.key_of.pop(item) for item in item_ids]
        for key in keys:
            del self._id_of[key]
        self._index.remove(np.array(keys, dtype=np.uint64))

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        matches = self._index.search(query, k)
        # USearch returns cosine *distance*; 1 - distance is the similarity the exact backend reports.
        return [(self._id_of[int(key)], 1.0 - float(dist)) for key, dist in zip(matches.keys, matches.distances)
                if int(key) in self._id_of]


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
