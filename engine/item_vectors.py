"""Content-based retrieval: item-text embeddings in an ANN index, and each user's interest vector.

Item names are embedded *off the hot path*: :meth:`ItemVectors.queue` only records names; :meth:`embed_pending` (run
by the worker in a background thread, batched) calls the embedder and adds the vectors to the index. The hot path
only reads: the ``similar_text`` candidate source (nearest items to the user's interest vector) and the
``text_similarity`` ranker feature.

A user's interest vector is the affinity-weighted mean of the vectors of their strongest items (L2-normalised).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import numpy as np

from kairos.engine.ann import ItemIndex
from kairos.engine.interfaces import TextEmbedder
from kairos.engine.state import UserInterest

#: Items that define a user's interest vector (their strongest by decayed affinity).
INTEREST_ITEMS = 10


class ItemVectors:
    def __init__(self, embedder: TextEmbedder, max_pending: int = 50_000, max_items: int = 100_000) -> None:
        self.embedder = embedder
        self.index = ItemIndex(embedder.dim)
        self.vectors: dict[str, np.ndarray] = {}
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()  # the background embedder adds while the hot path reads
        self.max_pending = max_pending
        #: Items kept embedded and indexed (~3 KB each with the index); the longest-embedded go first.
        self.max_items = max_items

    def queue(self, item_id: str, name: str | None) -> None:
        """Remember an item to embed (called on the hot path: O(1), no model call)."""
        if name and item_id not in self.vectors and len(self._pending) < self.max_pending:
            self._pending.setdefault(item_id, name)

    def embed_pending(self, batch: int = 256) -> int:
        """Embed up to ``batch`` queued items and index them; returns how many (run it off the hot path)."""
        with self._lock:
            items = list(self._pending.items())[:batch]
            for item_id, _ in items:
                del self._pending[item_id]
        if not items:
            return 0
        vectors = np.asarray(self.embedder.embed([name for _, name in items]), dtype=np.float32)
        with self._lock:
            for (item_id, _), vector in zip(items, vectors):
                self.vectors[item_id] = vector
            self.index.add([item_id for item_id, _ in items], vectors)
            excess = len(self.vectors) - self.max_items
            if excess > 0:
                oldest = list(itertools.islice(self.vectors, excess))
                for item_id in oldest:
                    del self.vectors[item_id]
                self.index.remove(oldest)
        return len(items)

    def interest_vector(self, user: UserInterest, now: float) -> np.ndarray | None:
        top = [(item, w) for item, w in user.items.top(INTEREST_ITEMS, now) if item in self.vectors]
        if not top:
            return None
        weights = np.array([w for _, w in top], dtype=np.float32)
        mean = (np.stack([self.vectors[item] for item, _ in top]) * weights[:, None]).sum(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else None

    def similar_items(self, user: UserInterest, now: float, n: int) -> list[tuple[str, float]]:
        """Candidate source ``similar_text``: the nearest items to the user's interest vector."""
        vector = self.interest_vector(user, now)
        if vector is None:
            return []
        with self._lock:
            return self.index.search(vector, n, exclude=set(user.recent))

    def similarity(self, user: UserInterest, items: Sequence[str]) -> np.ndarray:
        """Ranker feature ``text_similarity``: cosine(user interest vector, item vector), 0 when unknown."""
        out = np.zeros(len(items), dtype=np.float32)
        vector = self.interest_vector(user, user.last_ts)
        if vector is None:
            return out
        for row, item in enumerate(items):
            item_vector = self.vectors.get(item)
            if item_vector is not None:
                out[row] = float(item_vector @ vector)
        return out
