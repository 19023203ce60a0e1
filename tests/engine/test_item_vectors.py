import numpy as np
from factories import T0, click, purchase

from kairos.engine.config import EngineConfig
from kairos.engine.item_vectors import ItemVectors
from kairos.engine.selection import Selector
from kairos.engine.state import UserInterest


class WordEmbedder:
    """Deterministic fake: one dimension per known word, so texts sharing a word are similar."""

    name, version, dim = "words", "1", 8
    WORDS = ["mug", "candle", "bag", "lamp", "heart", "star", "red", "blue"]

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                if word in self.WORDS:
                    out[row, self.WORDS.index(word)] = 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


def test_queue_is_cheap_and_embedding_is_batched():
    vectors = ItemVectors(WordEmbedder())
    for n, name in enumerate(["red mug", "blue mug", "star lamp", "heart candle"]):
        vectors.queue(f"i{n}", name)
    vectors.queue("i9", None)  # no text, nothing to embed
    assert vectors.embedder.calls == 0 and len(vectors.index) == 0
    assert vectors.embed_pending() == 4 and vectors.embedder.calls == 1 and len(vectors.index) == 4
    assert vectors.embed_pending() == 0


def test_similar_items_follow_the_users_interest():
    vectors = ItemVectors(WordEmbedder())
    names = {"m1": "red mug", "m2": "blue mug", "m3": "star mug", "l1": "star lamp", "c1": "heart candle"}
    for item, name in names.items():
        vectors.queue(item, name)
    vectors.embed_pending()
    user = UserInterest.new("u", EngineConfig())
    user.apply(click(user="u", item="m1", ts=T0))
    similar = [item for item, _ in vectors.similar_items(user, T0, 2)]
    assert similar[0] in {"m2", "m3"} and "m1" not in similar  # nearest mugs, not what was just seen
    assert vectors.similarity(user, ["m2", "c1"]).tolist()[0] > vectors.similarity(user, ["m2", "c1"]).tolist()[1]


def test_selector_gets_similar_text_candidates():
    vectors = ItemVectors(WordEmbedder())
    selector = Selector(EngineConfig(), item_vectors=vectors, exploration=False)
    buyer = UserInterest.new("u", selector.config)
    order = purchase(user="u", items=[("m1", "c", 3.0), ("m2", "c", 4.0)], ts=T0)
    order = order.model_copy(update={"lines": [
        order.lines[0].model_copy(update={"name": "red mug"}), order.lines[1].model_copy(update={"name": "blue mug"}),
    ]})  # fmt: skip
    selector.observe(buyer, order)
    assert set(vectors._pending) == {"m1", "m2"} and not vectors.vectors  # the hot path only queued the names
    vectors.queue("l1", "star lamp")
    vectors.embed_pending()
    shopper = UserInterest.new("v", selector.config)
    selector.observe(shopper, click(user="v", item="m1", ts=T0 + 1))
    pool, _ = selector.recommender.score_candidates(shopper, T0 + 2)
    assert "similar_text" in pool.reasons["m2"]  # the other mug, found by text


def test_embedded_items_are_bounded_oldest_out():
    vectors = ItemVectors(WordEmbedder(), max_items=3)
    for n, name in enumerate(["red mug", "blue mug", "star lamp", "heart candle", "red bag"]):
        vectors.queue(f"i{n}", name)
    vectors.embed_pending(batch=2)
    vectors.embed_pending(batch=2)
    vectors.embed_pending(batch=2)
    assert list(vectors.vectors) == ["i2", "i3", "i4"] and len(vectors.index) == 3
    assert "i0" not in vectors.index and "i4" in vectors.index
