"""The ranker's input contract, shared by the engine (serving) and onnx_export (training).

One place names every ONNX input of the ranking model, its dtype and shape, and the order of the dense
features, so training and serving cannot drift apart. ``kairos.engine.features`` computes the values from
online state; ``kairos.onnx_export`` trains on the same function's output; ``kairos.models`` checks a loaded
session against :data:`RANKER_INPUTS`.

Bump :data:`RANKER_FEATURE_VERSION` whenever the list or the meaning of a feature changes: a model manifest
records the version it was trained on and the registry refuses a mismatch.
"""

from __future__ import annotations

RANKER_FEATURE_VERSION = 1

#: Dense features, in column order of the ``dense`` input. Each is already scaled to roughly [-1, 5].
RANKER_DENSE_FEATURES: tuple[str, ...] = (
    "category_affinity_share",  # user's decayed affinity to the item's category / user's total category affinity
    "category_affinity_log",  # log1p(decayed affinity to the item's category)
    "item_affinity_log",  # log1p(decayed affinity to this very item)
    "item_in_recent",  # 1.0 when the item is among the user's recent items
    "cooccurrence_score",  # co-occurrence of the item with the user's recent items, normalised to [0, 1]
    "item_popularity_log",  # log1p(decayed global interaction count of the item)
    "category_popularity_log",  # log1p(decayed global interaction count of the item's category)
    "item_trend_ratio",  # short-window / long-window popularity ratio, clipped to [0, 5]
    "price_log",  # log1p(unit price in the catalog's currency) / 10
    "price_vs_user_mean",  # log(item price / user's mean purchase price), clipped to [-3, 3]; 0 when unknown
    "user_events_log",  # log1p(user's event count)
    "user_purchases_log",  # log1p(user's purchase count)
    "hours_since_last_event_log",  # log1p(hours since the user's previous event)
    "text_similarity",  # cosine(user interest embedding, item embedding); 0 without embeddings
    "hour_sin",  # time of day of the event
    "hour_cos",
)

RANKER_DENSE_DIM = len(RANKER_DENSE_FEATURES)

#: Hash buckets for the categorical inputs (ids are hashed with :func:`stable_bucket`).
CATEGORY_BUCKETS = 4096
ITEM_BUCKETS = 65536
#: Positions are 1-based slot numbers; 0 means "not shown yet" (scoring before display).
MAX_POSITION = 16

#: ONNX inputs of the ranker: name -> (dtype, shape). ``B`` is the dynamic batch axis.
RANKER_INPUTS: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "dense": ("float32", ("B", RANKER_DENSE_DIM)),
    "category_id": ("int64", ("B",)),
    "item_id": ("int64", ("B",)),
    "position": ("int64", ("B",)),
}

#: ONNX outputs of the ranker: ``score`` is the relevance / purchase logit used for ranking products,
#: ``click_logit`` the position-aware click head used as pCTR for creatives.
RANKER_OUTPUTS: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "score": ("float32", ("B",)),
    "click_logit": ("float32", ("B",)),
}


def stable_bucket(value: str, buckets: int) -> int:
    """Hash an id into ``[1, buckets)`` the same way in every process (bucket 0 is reserved for "unknown").

    Python's ``hash`` is salted per process, so it cannot be used for model inputs.

    >>> stable_bucket("85123A", 4096) == stable_bucket("85123A", 4096)
    True
    >>> 0 < stable_bucket("x", 16) < 16
    True
    """
    # FNV-1a 64-bit: tiny, fast enough in Python for one id per candidate, and stable across versions.
    h = 0xCBF29CE484222325
    for byte in value.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return 1 + h % (buckets - 1)


_bucket_cache: dict[tuple[str, int], int] = {}


def cached_bucket(value: str | None, buckets: int) -> int:
    """:func:`stable_bucket` memoised (``None``: bucket 0): hashing in pure Python costs ~1 us per id, and ids
    repeat constantly (every candidate's, each time its cached ranker inputs expire).

    >>> cached_bucket("85123A", 4096) == stable_bucket("85123A", 4096), cached_bucket(None, 4096)
    (True, 0)
    """
    if value is None:
        return 0
    key = (value, buckets)
    bucket = _bucket_cache.get(key)
    if bucket is None:
        if len(_bucket_cache) > 1_000_000:
            _bucket_cache.clear()
        bucket = _bucket_cache[key] = stable_bucket(value, buckets)
    return bucket
