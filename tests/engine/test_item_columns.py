"""The global model's item-column cache (``GlobalModel.item_column_arrays``): the ranker's per-item inputs, computed
once per item and cache epoch into rows of two arrays."""

from __future__ import annotations

import math

import numpy as np

from kairos.engine.config import EngineConfig
from kairos.engine.global_model import GlobalModel
from kairos.engine.state import Interaction, UserInterest
from kairos.schemas.features import CATEGORY_BUCKETS, ITEM_BUCKETS, stable_bucket


def bucket(value: str | None, buckets: int) -> int:
    return 0 if value is None else stable_bucket(value, buckets)

T0 = 1.7e9


def _model(config: EngineConfig, n_items: int = 6) -> GlobalModel:
    model = GlobalModel(config)
    user = UserInterest.new("u", config)
    for k in range(n_items):
        it = Interaction(f"i{k}", f"c{k % 2}", "click", 1.0 + k, T0 + k, price=2.0 * k or None)
        model.observe(user, [it])
    return model


def test_columns_are_the_items_values_in_pool_order() -> None:
    config = EngineConfig()
    model = _model(config)
    now = T0 + 10
    categories, ints, floats = model.item_column_arrays(["i3", "i0", "unknown"], now)
    assert categories == ["c1", "c0", None]
    assert ints.dtype == np.int64 and floats.dtype == np.float64
    assert ints[:, 0].tolist() == [bucket("c1", CATEGORY_BUCKETS), bucket("c0", CATEGORY_BUCKETS), 0]
    assert ints[:, 1].tolist() == [bucket(i, ITEM_BUCKETS) for i in ("i3", "i0", "unknown")]
    assert floats[0, 0] == 6.0 and floats[1, 0] == 0.0 and floats[2, 0] == 0.0  # price (none known: 0)
    assert floats[0, 1] == math.log1p(model.popular.get("i3", now))
    assert floats[0, 2] == math.log1p(model.category_popular.get("c1", now))
    assert floats[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_cached_within_an_epoch_recomputed_in_the_next() -> None:
    config = EngineConfig()
    model = _model(config)
    now = T0 + 10
    before = model.item_column_arrays(["i1"], now)[2].copy()
    user = UserInterest.new("v", config)
    model.observe(user, [Interaction("i1", "c1", "purchase", 5.0, now)])  # popularity moves, same epoch
    assert np.array_equal(model.item_column_arrays(["i1"], now)[2], before)
    later = now + 3600  # the next hour is the next epoch
    assert model.item_column_arrays(["i1"], later)[2][0, 1] == math.log1p(model.popular.get("i1", later))
    assert model.item_column_arrays(["i1"], later)[2][0, 1] != before[0, 1]


def test_a_pool_may_name_an_item_twice_and_outgrow_the_bound() -> None:
    config = EngineConfig(max_items=100)
    model = _model(config, n_items=3)
    pool = [f"x{k}" for k in range(150)] + ["i2", "i2"]
    categories, ints, floats = model.item_column_arrays(pool, T0 + 5)
    assert len(categories) == len(ints) == len(floats) == 152
    assert np.array_equal(floats[-1], floats[-2]) and ints[-1, 1] == ints[-2, 1] == bucket("i2", ITEM_BUCKETS)
    again = model.item_column_arrays(["i2", "x7"], T0 + 5)  # the next pool starts the cache over (bound)
    assert np.array_equal(again[2][0], floats[-1]) and again[1][1, 1] == bucket("x7", ITEM_BUCKETS)
    assert len(model._column_rows) <= 152
