"""Ranker inputs computed from online state: the write path is ``UserInterest.apply`` / ``GlobalModel.observe``,
this is the read path. The column order and meaning are fixed by ``kairos.schemas.features``; training
(``kairos.onnx_export``) calls the same function, so serving and training cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat

import numpy as np

from kairos.engine.global_model import GlobalModel
from kairos.engine.state import UserInterest
from kairos.schemas.features import MAX_POSITION, RANKER_DENSE_DIM

#: Optional hook: (user, item ids) -> cosine similarity of each item to the user's interest embedding.
TextSimilarity = Callable[[UserInterest, Sequence[str]], np.ndarray]


def build_ranker_features(
    user: UserInterest,
    model: GlobalModel,
    items: Sequence[str],
    now: float,
    co_visit: Mapping[str, float] | None = None,
    positions: Sequence[int] | None = None,
    text_similarity: TextSimilarity | None = None,
) -> dict[str, np.ndarray]:
    """One row per item, as the ONNX ranker's input dict.

    >>> from kairos.engine.config import EngineConfig
    >>> cfg = EngineConfig(); f = build_ranker_features(UserInterest.new("u", cfg), GlobalModel(cfg), ["a", "b"], 1.7e9)
    >>> f["dense"].shape, f["item_id"].dtype.name
    ((2, 16), 'int64')
    """
    n = len(items)
    dense = np.zeros((n, RANKER_DENSE_DIM), dtype=np.float32)
    category_ids = np.zeros(n, dtype=np.int64)
    item_ids = np.zeros(n, dtype=np.int64)
    _fill_user_columns(dense, user, now)
    _fill_item_columns(dense, category_ids, item_ids, user, model, items, now, co_visit or {})
    if text_similarity is not None and n:
        dense[:, 13] = text_similarity(user, items)
    position = np.zeros(n, dtype=np.int64) if positions is None else np.minimum(np.asarray(positions), MAX_POSITION)
    return {"dense": dense, "category_id": category_ids, "item_id": item_ids, "position": position.astype(np.int64)}


def _fill_user_columns(dense: np.ndarray, user: UserInterest, now: float) -> None:
    hours = (now - user.last_ts) / 3600.0 if user.last_ts else 0.0
    hour_of_day = (now % 86_400.0) / 3600.0
    dense[:, 10] = math.log1p(user.event_count)
    dense[:, 11] = math.log1p(user.purchase_count)
    dense[:, 12] = math.log1p(max(hours, 0.0))
    dense[:, 14] = math.sin(2 * math.pi * hour_of_day / 24.0)
    dense[:, 15] = math.cos(2 * math.pi * hour_of_day / 24.0)


def _fill_item_columns(
    dense: np.ndarray,
    category_ids: np.ndarray,
    item_ids: np.ndarray,
    user: UserInterest,
    model: GlobalModel,
    items: Sequence[str],
    now: float,
    co_visit: Mapping[str, float],
) -> None:
    """Column by column: the item columns gathered from the model's per-epoch arrays, one dict lookup per candidate
    and user column, the arithmetic in numpy (a per-row loop was a quarter of a recommendation's time, and the pool
    may hold 500 candidates). The lookups are ``map`` over the dicts' bound ``get`` into a list: no Python frame per
    candidate, unlike a list comprehension (``np.fromiter`` over a generator cost 1.2-1.5x as much as one, for the
    same values bit for bit)."""
    if not len(items):
        return
    categories, buckets, numeric = model.item_column_arrays(items, now)
    category_scores = user.categories.as_dict(now)
    category_total = sum(category_scores.values()) or 1.0
    zeros = repeat(0.0)
    category_score = np.array(list(map(category_scores.get, categories, zeros)), np.float64)
    dense[:, 0] = category_score / category_total
    dense[:, 1] = np.log1p(category_score)
    item_scores = user.items.as_dict(now)
    dense[:, 2] = np.log1p(np.array(list(map(item_scores.get, items, zeros)), np.float64))
    recent = set(user.recent)
    dense[:, 3] = np.array(list(map(recent.__contains__, items)), np.float64)
    if co_visit:
        co_visit_max = max(co_visit.values()) or 1.0
        dense[:, 4] = np.array(list(map(co_visit.get, items, zeros)), np.float64) / co_visit_max
    dense[:, 5:8] = numeric[:, 1:4]
    price = numeric[:, 0]
    priced = price > 0
    dense[:, 8] = np.where(priced, np.log1p(price) / 10.0, 0.0)
    user_price = user.price_mean.get() if user.price_mean.n else 0.0
    if user_price > 0:
        ratio = np.log(np.where(priced, price, user_price) / user_price)
        dense[:, 9] = np.where(priced, np.clip(ratio, -3.0, 3.0), 0.0)
    category_ids[:] = buckets[:, 0]
    item_ids[:] = buckets[:, 1]
