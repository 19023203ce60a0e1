"""ItemIndex: same API on both backends; HNSW recall against the exact search."""

import numpy as np
import pytest

from kairos.engine import ann
from kairos.engine.ann import ItemIndex

BACKENDS = ["exact"] + (["faiss"] if ann._faiss is not None else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_add_search_returns_cosine_similarity(backend):
    index = ItemIndex(dim=2, backend=backend)
    index.add(["a", "b", "c"], np.array([[1.0, 0.0], [3.0, 3.0], [0.0, 2.0]]))
    hits = index.search(np.array([2.0, 0.0]), k=3)
    assert [item for item, _ in hits] == ["a", "b", "c"]
    assert [s for _, s in hits] == pytest.approx([1.0, np.sqrt(0.5), 0.0], abs=1e-5)


def test_remove_and_replace(backend):
    index = ItemIndex(dim=2, backend=backend)
    index.add(["a", "b", "c"], np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    index.remove(["a", "missing"])
    assert len(index) == 2 and "a" not in index
    assert index.search(np.array([1.0, 0.0]), k=1)[0][0] == "b"
    index.add(["c"], np.array([[1.0, 0.0]]))  # replace c's vector
    assert len(index) == 2
    assert index.search(np.array([1.0, 0.0]), k=1)[0][0] == "c"


def test_exclude_still_returns_k(backend):
    index = ItemIndex(dim=3, backend=backend)
    rng = np.random.default_rng(0)
    index.add([f"i{n}" for n in range(50)], rng.normal(size=(50, 3)))
    query = rng.normal(size=3)
    top = [item for item, _ in index.search(query, k=5)]
    rest = [item for item, _ in index.search(query, k=5, exclude=set(top))]
    assert len(rest) == 5 and not set(rest) & set(top)
    assert index.search(query, k=0) == [] and ItemIndex(3, backend=backend).search(query, k=3) == []


@pytest.mark.skipif("faiss" not in BACKENDS, reason="faiss-cpu not installed")
def test_hnsw_recall_against_brute_force():
    rng = np.random.default_rng(42)
    ids = [f"item-{n}" for n in range(5000)]
    vectors = rng.normal(size=(5000, 32)).astype(np.float32)
    approx, exact = ItemIndex(32, backend="faiss"), ItemIndex(32, backend="exact")
    approx.add(ids, vectors)
    exact.add(ids, vectors)
    queries = rng.normal(size=(50, 32))
    recall = np.mean([
        len({i for i, _ in approx.search(q, 10)} & {i for i, _ in exact.search(q, 10)}) / 10 for q in queries
    ])
    assert recall >= 0.9


def test_unknown_backend_rejected():
    with pytest.raises(ValueError):
        ItemIndex(4, backend="annoy")
