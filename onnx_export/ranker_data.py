"""Ranker training rows from real logs, with the engine's own feature code (train/serve parity).

Purchases and browsing (Online Retail, Taobao) are replayed in time order through the engine's write path
(``Recommender.observe``: ``GlobalModel`` + ``UserInterest``). Just *before* an event is applied, rows are built
with ``kairos.engine.features.build_ranker_features`` from the state the shopper acted from: the items of the event
(label 1) and sampled negatives (label 0) -- half from the engine's own candidate retrieval (what the ranker will
have to tell apart at serving time), half uniformly from the items seen so far. The time split is on the event time:
rows from the last ``heldout_share`` of the time range are the held-out slice.

Open Bandit logs train the click head: each logged impression (item, slot, click) becomes a row whose dense
features are computed by replaying the log in time order (item/category decayed popularity, the user-item affinity
shipped with the log); Open Bandit has no prices, sessions or text, so those columns stay 0.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kairos.engine.candidates import retrieve_candidates
from kairos.engine.config import EngineConfig
from kairos.engine.datasets import load_events
from kairos.engine.features import build_ranker_features
from kairos.engine.recommender import Recommender
from kairos.engine.state import UserInterest, interactions_of
from kairos.schemas.features import (
    CATEGORY_BUCKETS,
    ITEM_BUCKETS,
    RANKER_DENSE_DIM,
    RANKER_DENSE_FEATURES,
    cached_bucket,
)

log = logging.getLogger(__name__)

#: Sample weights by action: a purchase is stronger evidence of relevance than a view.
ACTION_WEIGHT = {"view": 0.5, "click": 0.7, "favourite": 1.0, "add_to_cart": 1.0, "purchase": 2.0}


@dataclass
class RankerRows:
    """Column arrays; ``score_mask``/``click_mask`` say which head a row trains."""

    dense: np.ndarray
    category_id: np.ndarray
    item_id: np.ndarray
    position: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    score_mask: np.ndarray
    click_mask: np.ndarray
    ts: np.ndarray
    source: np.ndarray  # "online_retail" | "taobao" | "open_bandit"

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx) -> RankerRows:
        return RankerRows(**{k: v[idx] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[RankerRows]) -> RankerRows:
        return RankerRows(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in RankerRows.__annotations__})

    def inputs(self) -> dict[str, np.ndarray]:
        return {"dense": self.dense, "category_id": self.category_id, "item_id": self.item_id, "position": self.position}


class _RowBuffer:
    def __init__(self):
        self.parts: dict[str, list] = {k: [] for k in RankerRows.__annotations__}

    def add(self, features: dict[str, np.ndarray], labels, weights, ts: float, source: str, score: bool) -> None:
        n = len(labels)
        for k in ("dense", "category_id", "item_id", "position"):
            self.parts[k].append(features[k])
        self.parts["label"].append(np.asarray(labels, np.float32))
        self.parts["weight"].append(np.asarray(weights, np.float32))
        self.parts["score_mask"].append(np.full(n, 1.0 if score else 0.0, np.float32))
        self.parts["click_mask"].append(np.full(n, 0.0 if score else 1.0, np.float32))
        self.parts["ts"].append(np.full(n, ts, np.float64))
        self.parts["source"].append(np.full(n, source, dtype=object))

    def rows(self) -> RankerRows:
        if not self.parts["label"]:
            raise ValueError("no ranker rows were built")
        return RankerRows(**{k: np.concatenate(v) for k, v in self.parts.items()})


def replay_rows(
    events: list,
    source: str,
    config: EngineConfig = EngineConfig(),
    sample_rate: float = 1.0,
    positives_per_event: int = 3,
    negatives_per_positive: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RankerRows:
    """Replay ``events`` (time-ordered) through the engine and build rows before every sampled event."""
    rng = random.Random(seed)
    recommender = Recommender(config, seed=seed)
    users: dict[str, UserInterest] = {}
    seen_items: list[str] = []
    seen_set: set[str] = set()
    buffer = _RowBuffer()
    for n, event in enumerate(events):
        user = users.get(event.user_id) or users.setdefault(event.user_id, UserInterest.new(event.user_id, config))
        if user.event_count > 0 and seen_items and rng.random() < sample_rate:
            _rows_before(buffer, user, recommender, event, seen_items, rng, source, positives_per_event,
                         negatives_per_positive)
        for it in interactions_of(event, config):
            if it.item_id not in seen_set:
                seen_set.add(it.item_id)
                seen_items.append(it.item_id)
        recommender.observe(user, event, learn=False)
        if progress and n % 5000 == 0:
            progress(n, len(events))
    return buffer.rows()


def _rows_before(buffer, user, recommender, event, seen_items, rng, source, n_pos, neg_per_pos) -> None:
    config = recommender.config
    interactions = [it for it in interactions_of(event, config) if it.weight > 0]
    if not interactions:
        return
    positives = list(dict.fromkeys(it.item_id for it in interactions))
    positives = rng.sample(positives, min(n_pos, len(positives)))
    action = interactions[0].action
    pool = retrieve_candidates(user, recommender.model, event.ts, 100, set(), ())
    hard = [i for i in pool.items if i not in positives]
    n_neg = neg_per_pos * len(positives)
    negatives = rng.sample(hard, min(n_neg // 2, len(hard)))
    while len(negatives) < n_neg:
        item = seen_items[rng.randrange(len(seen_items))]
        if item not in positives:
            negatives.append(item)
    items = positives + negatives
    features = build_ranker_features(user, recommender.model, items, event.ts, pool.co_visit)
    labels = [1.0] * len(positives) + [0.0] * len(negatives)
    weights = [ACTION_WEIGHT.get(action, 1.0)] * len(positives) + [1.0] * len(negatives)
    buffer.add(features, labels, weights, event.ts, source, score=True)


def retail_and_taobao_rows(data_dir: Path, max_events: int | None, sample_rate: float, seed: int = 0,
                           progress=None) -> RankerRows:
    """Rows from Online Retail purchases and Taobao pv/cart/fav/buy, each replayed on its own engine state."""
    parts = []
    for source, rate in (("online_retail", sample_rate), ("taobao", sample_rate / 4)):
        events = load_events(data_dir, source, limit=max_events)
        log.info("%s: %d events", source, len(events))
        parts.append(replay_rows(events, source, sample_rate=rate, seed=seed, progress=progress))
    return RankerRows.concat(parts)


# --- Open Bandit: the click head ---

_OBD_HALF_LIFE_S = 6 * 3600.0


def open_bandit_rows(data_dir: Path, campaigns=("all", "men", "women")) -> RankerRows:
    """One row per logged impression, features from a time-ordered replay of each campaign's log."""
    buffer = _RowBuffer()
    for campaign in campaigns:
        folder = Path(data_dir) / "open_bandit" / "bts" / campaign
        if not (folder / "log.parquet").exists():
            continue
        logs = pd.read_parquet(folder / "log.parquet").sort_values("timestamp", kind="stable")
        items = pd.read_parquet(folder / "item_context.parquet").set_index("item_id")
        _replay_bandit(buffer, logs, items, campaign)
    return buffer.rows()


def _replay_bandit(buffer: _RowBuffer, logs: pd.DataFrame, items: pd.DataFrame, campaign: str) -> None:
    ts = pd.to_datetime(logs["timestamp"], utc=True).astype("int64").to_numpy() / 1e9
    item_ids = logs["item_id"].to_numpy()
    positions = logs["position"].to_numpy()
    clicks = logs["click"].to_numpy().astype(np.float32)
    affinity_cols = [c for c in logs.columns if c.startswith("user-item_affinity_")]
    affinity = logs[affinity_cols].to_numpy(np.float32) if affinity_cols else np.zeros((len(logs), 1), np.float32)
    category_of = {i: f"obd-{campaign}-{row.item_feature_1}" for i, row in items.iterrows()}
    item_pop, cat_pop = {}, {}
    n = len(logs)
    dense = np.zeros((n, RANKER_DENSE_DIM), np.float32)
    col = {name: i for i, name in enumerate(RANKER_DENSE_FEATURES)}
    for r in range(n):
        item, cat, t = int(item_ids[r]), category_of.get(int(item_ids[r]), "obd-unknown"), ts[r]
        out = dense[r]
        a = float(affinity[r, item]) if item < affinity.shape[1] else 0.0
        out[col["item_affinity_log"]] = math.log1p(max(a, 0.0))
        out[col["item_popularity_log"]] = math.log1p(_decayed(item_pop, item, t))
        out[col["category_popularity_log"]] = math.log1p(_decayed(cat_pop, cat, t))
        hour = (t % 86_400.0) / 3600.0
        out[col["hour_sin"]], out[col["hour_cos"]] = math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)
        _bump(item_pop, item, t, 1.0 + 9.0 * clicks[r])  # impressions count, clicks count more
        _bump(cat_pop, cat, t, 1.0 + 9.0 * clicks[r])
    features = {
        "dense": dense,
        "category_id": np.array([cached_bucket(category_of.get(int(i), "obd-unknown"), CATEGORY_BUCKETS) for i in item_ids], np.int64),
        "item_id": np.array([cached_bucket(f"obd-{campaign}-{int(i)}", ITEM_BUCKETS) for i in item_ids], np.int64),
        "position": positions.astype(np.int64),
    }
    for r0 in range(0, n, 4096):  # add in chunks so the buffer keeps per-row timestamps
        sl = slice(r0, r0 + 4096)
        buffer.add({k: v[sl] for k, v in features.items()}, clicks[sl], np.ones(len(clicks[sl]), np.float32),
                   0.0, "open_bandit", score=False)
        buffer.parts["ts"][-1] = ts[sl].astype(np.float64)


def _decayed(table: dict, key, t: float) -> float:
    value, last = table.get(key, (0.0, t))
    return value * 0.5 ** ((t - last) / _OBD_HALF_LIFE_S)


def _bump(table: dict, key, t: float, weight: float) -> None:
    table[key] = (_decayed(table, key, t) + weight, t)


def time_split(rows: RankerRows, heldout_share: float = 0.2) -> tuple[RankerRows, RankerRows]:
    """Per source, the last ``heldout_share`` of its time range is held out."""
    train_idx, test_idx = [], []
    for source in np.unique(rows.source):
        idx = np.nonzero(rows.source == source)[0]
        cut = np.quantile(rows.ts[idx], 1.0 - heldout_share)
        train_idx.append(idx[rows.ts[idx] < cut])
        test_idx.append(idx[rows.ts[idx] >= cut])
    return rows.take(np.concatenate(train_idx)), rows.take(np.concatenate(test_idx))
