"""Approximate nearest-neighbour search over item embeddings (cosine similarity).

:class:`ItemIndex` wraps a faiss HNSW index (see ``docs/selection.md`` for why faiss) behind a small API keyed by
item id strings. When ``faiss`` is not installed, or ``backend="exact"`` is asked for, the same API runs an exact
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
    import faiss as _faiss
except ImportError:  # pragma: no cover - depends on the environment
    _faiss = None


class ItemIndex:
    """Cosine nearest neighbours of item embeddings, with incremental add, remove and excluded ids.

    Parameters
    ----------
    dim
        Embedding dimension.
    backend
        ``"auto"`` (faiss when installed, else exact), ``"faiss"`` or ``"exact"``.
    connectivity, expansion_search
        HNSW graph degree and search beam width (faiss only); larger = better recall, slower.
    """

    def __init__(self, dim: int, backend: str = "auto", connectivity: int = 16, expansion_search: int = 64) -> None:
        if backend == "auto":
            backend = "faiss" if _faiss is not None else "exact"
        if backend == "faiss" and _faiss is None:
            raise ImportError("backend='faiss' needs the faiss-cpu package")
        if backend not in ("faiss", "exact"):
            raise ValueError(f"unknown backend {backend!r}")
        self.dim, self.backend = dim, backend
        self._impl = _FaissBackend(dim, connectivity, expansion_search) if backend == "faiss" else _ExactBackend(dim)

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


class _FaissBackend:
    """faiss HNSW over normalised vectors (inner product = cosine). faiss's HNSW cannot delete, so a removed or
    replaced item becomes a tombstone filtered out of results, and the graph is rebuilt from the live vectors once
    tombstones outnumber them (amortised O(1) per removal)."""

    def __init__(self, dim: int, connectivity: int, expansion_search: int) -> None:
        self.dim, self.connectivity, self.expansion_search = dim, connectivity, expansion_search
        self.key_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._vectors: list[np.ndarray] = []  # by faiss key, tombstones included (needed for rebuilds)
        self._index = self._new_index()

    def _new_index(self):
        index = _faiss.IndexHNSWFlat(self.dim, self.connectivity, _faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = self.expansion_search
        return index

    def add(self, item_ids: list[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(_normalise(vectors), dtype=np.float32)
        for item, vector in zip(item_ids, vectors):
            key = len(self._vectors)
            self.key_of[item], self._id_of[key] = key, item
            self._vectors.append(vector)
        self._index.add(vectors)

    def remove(self, item_ids: list[str]) -> None:
        for item in item_ids:
            del self._id_of[self.key_of.pop(item)]
        if len(self._vectors) > 2 * max(len(self.key_of), 16):
            self._rebuild()

    def _rebuild(self) -> None:
        live = sorted(self.key_of.items(), key=lambda kv: kv[1])
        vectors = [self._vectors[key] for _, key in live]
        self.key_of, self._id_of, self._vectors = {}, {}, []
        self._index = self._new_index()
        if live:
            self.add([item for item, _ in live], np.stack(vectors))

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        # Over-fetch by the tombstone count so k live items come back even when dead nodes are nearest.
        fetch = min(k + len(self._vectors) - len(self.key_of), len(self._vectors))
        sims, keys = self._index.search(_normalise(query[None, :]).astype(np.float32), fetch)
        return [(self._id_of[int(key)], float(sim)) for key, sim in zip(keys[0], sims[0]) if int(key) in self._id_of][:k]


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
