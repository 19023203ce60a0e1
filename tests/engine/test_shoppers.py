"""User-kNN's snapshot for a checkpoint built in pieces: the lists as they were when it opened, whatever the stream
does to them meanwhile (appends, a shopper moved to the end, shoppers and items forgotten untouched)."""

from kairos.engine.config import EngineConfig
from kairos.engine.shoppers import SimilarShoppers


def _as_snapshot_saw(parts: dict) -> dict:
    """The state the pieces of a checkpoint would encode: each key as kept, or as it still is."""
    out = {}
    for name, (keys, kept, current) in parts.items():
        values = [(key, kept[key] if key in kept else current(key)) for key in keys]
        out[name] = dict(values) if name == "buyers" else [[key, value] for key, value in values]
    return out


def test_a_snapshot_is_the_state_it_opened_with():
    knn = SimilarShoppers(EngineConfig(max_items=10, discovery_max_shoppers=4, discovery_item_buyers=3))
    for n in range(6):
        knn.observe(f"s{n}", [f"i{n}", f"i{n + 1}"])
    before = knn.to_state()
    parts = knn.open_snapshot()
    assert knn.to_state(in_pieces=True) == {"buyers": None, "baskets": None}

    knn.observe("s3", ["i4", "i9"])  # a basket changed and moved to the end; buyers appended to
    knn.observe("s5", ["i6"])
    for n in range(20, 26):  # new shoppers: the oldest ones go untouched; new items: the oldest items go
        knn.observe(f"s{n}", [f"i{n}"])
    after = knn.to_state()
    assert {"s2", "s4"} <= {k for k, _ in before["baskets"]} - {k for k, _ in after["baskets"]}
    assert set(before["buyers"]) - set(after["buyers"]), "no item was forgotten"
    assert after["buyers"]["i4"] != before["buyers"]["i4"]

    assert _as_snapshot_saw(parts) == before
    knn.close_snapshot()
    assert knn._kept_buyers is None and knn._kept_baskets is None
    knn.observe("s30", ["i30"])  # nothing kept for nobody
    assert knn._kept_buyers is None
