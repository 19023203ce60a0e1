"""The global model: what the whole stream (of one partition) teaches about items, learned incrementally.

- popularity with two half-lives (``trend`` short, ``popular`` long) per item and per category;
- an item co-occurrence graph: items interacted with by the same shopper within a few steps of each other,
  weighted by the weaker of the two interactions, bounded to ``max_neighbours`` per item;
- a catalog of what the stream says about items (name, category, last price).

No batch job: every interaction updates it in O(window). See docs/state.md for how it is checkpointed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter

import numpy as np

from kairos.engine.config import EngineConfig
from kairos.engine.decay import DecayedScores
from kairos.engine.state import Interaction, UserInterest
from kairos.schemas.features import CATEGORY_BUCKETS, ITEM_BUCKETS, cached_bucket

#: Distinct categories tracked per partition.
MAX_CATEGORIES = 50_000


@dataclass(slots=True)
class ItemInfo:
    category_id: str | None = None
    name: str | None = None
    price: float | None = None


def _item_state(info: ItemInfo) -> list:
    return [info.category_id, info.name, info.price]


def _scores_weight(state: dict) -> int:
    return len(state["s"]) + 1


class GlobalModel:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.trend = DecayedScores(config.trend_half_life_s, config.max_items)
        self.popular = DecayedScores(config.popularity_half_life_s, config.max_items)
        self.category_popular = DecayedScores(config.popularity_half_life_s, MAX_CATEGORIES)
        self.neighbours: dict[str, dict[str, float]] = {}
        self.catalog: dict[str, ItemInfo] = {}
        #: category -> its most popular items (small, decayed): the "more from your favourite category" source.
        self.category_items: dict[str, DecayedScores] = {}
        self.events = 0
        self._top_cache: tuple[float, int, list[str], list[str]] | None = None
        #: The item-column cache (see :meth:`item_column_arrays`): item -> row of the arrays, each row's epoch.
        self._column_rows: dict[str, int] = {}
        self._column_categories: list[str | None] = []
        self._column_epochs = np.full(1024, -1, dtype=np.int64)
        self._column_ints = np.zeros((1024, 2), dtype=np.int64)
        self._column_floats = np.zeros((1024, 4), dtype=np.float64)
        self._category_top_cache: dict[str, tuple[tuple[int, int], list[str]]] = {}
        #: A row grows a quarter past ``max_neighbours`` before it is cut back (amortises the sort; bounds memory).
        self._prune_at = config.max_neighbours + max(config.max_neighbours // 4, 1)
        #: While a snapshot is open (a checkpoint built in slices, engine/checkpoint.py): per keyed part of the
        #: state (co-occurrence rows, catalog entries, per-category maps), key -> its state when the snapshot was
        #: opened, kept the first time it changes or goes (None: it did not exist then). None: no snapshot.
        self._kept_rows: dict[str, dict[str, float] | None] | None = None
        self._kept_items: dict[str, list | None] | None = None
        self._kept_categories: dict[str, dict | None] | None = None

    def observe(self, user: UserInterest, interactions: list[Interaction]) -> None:
        """Learn from one user's interactions; call it *before* the user's state absorbs them, so the
        co-occurrence links the new items to what the user did before."""
        previous = list(user.recent)[-self.config.cooccurrence_window :]
        for it in interactions:
            self._observe_item(it)
            if it.weight > 0:
                for other in previous:
                    if other != it.item_id:
                        self._link(it.item_id, other, it.weight)
        self._link_basket(interactions)
        self.events += 1

    def _link_basket(self, interactions: list[Interaction]) -> None:
        """Items bought together in one order are each other's best neighbours (bounded for huge orders)."""
        lines = [it for it in interactions[: self.config.basket_lines] if it.weight > 0]
        for n, it in enumerate(lines):
            for other in lines[max(0, n - self.config.basket_links) : n]:
                if other.item_id != it.item_id:
                    self._link(it.item_id, other.item_id, it.weight)

    def _observe_item(self, it: Interaction) -> None:
        weight = max(it.weight, 0.0)
        self.trend.add(it.item_id, weight, it.ts)
        self.popular.add(it.item_id, weight, it.ts)
        info = self.catalog.get(it.item_id)
        kept = self._kept_items
        if kept is not None and it.item_id not in kept:  # a snapshot is open: keep the entry as it was
            kept[it.item_id] = None if info is None else _item_state(info)
        if info is None:
            info = self.catalog[it.item_id] = ItemInfo()
            if len(self.catalog) > self.config.max_items:
                self._forget_unpopular()
        if it.category_id is not None:
            info.category_id = it.category_id
            self.category_popular.add(it.category_id, weight, it.ts)
            items = self.category_items.get(it.category_id)
            kept_categories = self._kept_categories
            if kept_categories is not None and it.category_id not in kept_categories:
                kept_categories[it.category_id] = None if items is None else items.to_state(copy=True)
            if items is None:
                items = self.category_items[it.category_id] = DecayedScores(self.config.popularity_half_life_s, 64)
                if len(self.category_items) > MAX_CATEGORIES:
                    self._forget_small_categories()
            items.add(it.item_id, weight, it.ts)
        if it.name:
            info.name = it.name
        if it.price is not None:
            info.price = it.price

    def learn_product(self, item_id: str, category_id: str | None, name: str | None, price: float | None) -> None:
        """What another partition's order says about a product (shared discovery, ``OrderFacts.details``): its
        catalog entry, with no popularity, co-occurrence or category weight, so that an item this partition's
        discovery model learned from that order has a name (copy), a category (rules, features) and a price. What
        this partition learned from its own events is kept; only what it lacks is filled. Never past nine tenths of
        ``max_items``."""
        info = self.catalog.get(item_id)
        if info is not None and info.name and info.category_id is not None and info.price is not None:
            return
        if info is None and len(self.catalog) >= self.config.max_items - self.config.max_items // 10:
            # Nine tenths full: the rest is for what this partition's own shoppers touch. Each item of theirs past
            # the cap makes the catalog forget everything popularity does not track (a pass over all of it), and
            # products of other partitions' orders refilling the room it freed would make that every new item.
            return
        kept = self._kept_items
        if kept is not None and item_id not in kept:  # a snapshot is open: keep the entry as it was
            kept[item_id] = None if info is None else _item_state(info)
        if info is None:
            info = self.catalog[item_id] = ItemInfo()
        if info.category_id is None:
            info.category_id = category_id
        if not info.name:
            info.name = name
        if info.price is None:
            info.price = price

    def _link(self, a: str, b: str, weight: float) -> None:
        kept = self._kept_rows
        for x, y in ((a, b), (b, a)):
            row = self.neighbours.get(x)
            if kept is not None and x not in kept:  # a snapshot is open: keep the row as it was (copy on write)
                kept[x] = None if row is None else dict(row)
            if row is None:
                if x not in self.catalog:
                    continue  # forgotten (unpopular): no row until it is seen again
                row = self.neighbours[x] = {}
            row[y] = row.get(y, 0.0) + weight
            if len(row) > self._prune_at:
                self._prune(row)

    def _prune(self, row: dict[str, float]) -> None:
        keep = sorted(row.items(), key=lambda kv: kv[1], reverse=True)[: self.config.max_neighbours]
        row.clear()
        row.update(keep)

    def _forget_unpopular(self) -> None:
        """Drop what the popularity map no longer tracks (it evicts its weakest tenth at capacity): catalog
        entries, co-occurrence rows and cached item columns."""
        tracked = self.popular.keys()
        kept = self._kept_items
        for item in [i for i in self.catalog if i not in tracked]:
            info = self.catalog.pop(item)
            if kept is not None and item not in kept:
                kept[item] = _item_state(info)
            self._drop_row(item)
            self._column_rows.pop(item, None)
        for item in [i for i in self.neighbours if i not in tracked]:
            self._drop_row(item)

    def _drop_row(self, item: str) -> None:
        row = self.neighbours.pop(item, None)
        kept = self._kept_rows
        if kept is not None and item not in kept:
            kept[item] = row

    def _forget_small_categories(self) -> None:
        tracked = self.category_popular.keys()
        kept = self._kept_categories
        for category in [c for c in self.category_items if c not in tracked]:
            items = self.category_items.pop(category)
            if kept is not None and category not in kept:
                kept[category] = items.to_state(copy=True)

    def neighbours_of(self, item_id: str, n: int) -> list[tuple[str, float]]:
        row = self.neighbours.get(item_id)
        if not row:
            return []
        return sorted(row.items(), key=itemgetter(1), reverse=True)[:n]

    def top_items(self, now: float, n: int = 100) -> tuple[list[str], list[str]]:
        """(trending, popular) item ids, best first; recomputed every 1000 events or one day of event time,
        because ranking every tracked item per event would dominate the hot path (a replay of history at full
        speed crosses an hour of event time every few events)."""
        cached = self._top_cache
        if cached is not None and abs(now - cached[0]) < 86_400.0 and self.events - cached[1] < 1000:
            return cached[2], cached[3]
        trending = [item for item, _ in self.trend.top(n, now)]
        popular = [item for item, _ in self.popular.top(n, now)]
        self._top_cache = (now, self.events, trending, popular)
        return trending, popular

    def category_top(self, category: str, n: int, now: float) -> list[str]:
        """A category's most popular items, best first; cached for 100 events of this model and at most an hour
        of event time (one heap selection per category and recommendation was a twentieth of the hot path)."""
        epoch = (self.events // 100, int(now // 3600))
        cached = self._category_top_cache.get(category)
        if cached is not None and cached[0] == epoch and len(cached[1]) >= n:
            return cached[1][:n]
        items = self.category_items.get(category)
        if items is None:
            return []
        top = [item for item, _ in items.top(n, now)]
        if len(self._category_top_cache) > MAX_CATEGORIES:
            self._category_top_cache.clear()
        self._category_top_cache[category] = (epoch, top)
        return top

    def item_epoch(self, now: float) -> int:
        """The validity key of :meth:`item_column_arrays`' cache: 500 events of this model, one hour of event time
        (the two counts in one integer, so a pool's rows are checked with one array comparison)."""
        return ((self.events // 500) << 32) | (int(now // 3600) & 0xFFFFFFFF)

    def item_column_arrays(self, item_ids: Sequence[str], now: float) -> tuple[list, np.ndarray, np.ndarray]:
        """Per-item ranker inputs that do not depend on the user, for a pool of candidates: (categories, int64
        rows of (category bucket, item bucket), float64 rows of (price or 0, log popularity, log category
        popularity, trend ratio)). The buckets are the ranker's embedding rows (``kairos.schemas.features``).

        Each item's columns are computed when first needed in a cache epoch (:meth:`item_epoch`: 500 events of
        this model, at most an hour of event time: a slow stream must not serve days-old popularity) into its row
        of two arrays, with the epoch beside it; a pool of 500 is then one dict lookup per candidate, one
        comparison of epochs and two gathers (tuples per candidate, transposed and turned into arrays column by
        column, were more than half of the ranker features' time)."""
        epoch = self.item_epoch(now)
        rows_of = self._column_rows
        if len(self._column_categories) + len(item_ids) > max(self.config.max_items, len(item_ids)):
            rows_of.clear()  # bounded like the catalog; never during a pool (its rows must stay valid)
            del self._column_categories[:]
        # ``map`` over the bound methods: no Python frame per candidate (a list comprehension was a tenth slower).
        rows = list(map(rows_of.get, item_ids, repeat(-1)))
        index = np.array(rows, dtype=np.intp)
        for k in np.flatnonzero((index < 0) | (self._column_epochs[index] != epoch)).tolist():
            index[k] = rows[k] = self._column_row(item_ids[k], now, epoch)
        categories = list(map(self._column_categories.__getitem__, rows))
        return categories, self._column_ints[index], self._column_floats[index]

    def _column_row(self, item_id: str, now: float, epoch: int) -> int:
        """``item_id``'s cache row, its columns computed now unless the pool named it before in this epoch."""
        row = self._column_rows.get(item_id)
        if row is not None and self._column_epochs[row] == epoch:
            return row
        info = self.catalog.get(item_id)
        category = info.category_id if info is not None else None
        if row is None:
            row = len(self._column_categories)
            if row >= len(self._column_epochs):
                grown = 2 * len(self._column_epochs)
                self._column_epochs = np.resize(self._column_epochs, grown)
                self._column_ints = np.resize(self._column_ints, (grown, 2))
                self._column_floats = np.resize(self._column_floats, (grown, 4))
            self._column_categories.append(category)
            self._column_rows[item_id] = row
        else:
            self._column_categories[row] = category
        long_run = self.popular.get(item_id, now)
        trend_ratio = min(self.trend.get(item_id, now) / long_run, 5.0) if long_run > 0 else 0.0
        category_pop = self.category_popular.get(category, now) if category else 0.0
        # memoised buckets: the columns of a pool expire together
        self._column_ints[row] = (cached_bucket(category, CATEGORY_BUCKETS), cached_bucket(item_id, ITEM_BUCKETS))
        price = (info.price or 0.0) if info else 0.0
        self._column_floats[row] = (price, math.log1p(long_run), math.log1p(category_pop), trend_ratio)
        self._column_epochs[row] = epoch
        return row

    # --- persistence ---

    def open_snapshot(self) -> list[tuple[str, str, tuple]]:
        """:meth:`to_state`'s parts in its order, for a checkpoint built in pieces while the model moves on
        (engine/checkpoint.py), and start keeping the keyed maps as they are now. Each part is ``(name, kind,
        payload)``: ``"scores"``: a score map's state with its scores copied (flat dicts of floats: one
        ``dict.copy``); ``"keyed"``: (the keys now, the map in which a key's state of now is kept the first time
        it changes or goes, the key's current state, the weight of a state in map entries) of the co-occurrence
        rows, the catalog and the per-category maps (a key missing from the map is unchanged: its current state is
        the one of now); ``"value"``: the event count. One snapshot at a time; :meth:`close_snapshot` ends it."""
        if self._kept_rows is not None:
            raise RuntimeError("a snapshot is already open")
        self._kept_rows, self._kept_items, self._kept_categories = {}, {}, {}
        catalog, categories = self.catalog, self.category_items
        scores = [(name, "scores", m.to_state(copy=True))
                  for name, m in (("trend", self.trend), ("popular", self.popular), ("catpop", self.category_popular))]  # fmt: skip
        return [
            *scores,
            ("nb", "keyed", (list(self.neighbours), self._kept_rows, self.neighbours.__getitem__, len)),
            ("cat", "keyed", (list(catalog), self._kept_items, lambda item: _item_state(catalog[item]), len)),
            ("catitems", "keyed", (list(categories), self._kept_categories,
                                   lambda category: categories[category].to_state(), _scores_weight)),
            ("events", "value", self.events),
        ]  # fmt: skip

    def close_snapshot(self) -> None:
        self._kept_rows = self._kept_items = self._kept_categories = None

    def to_state(self) -> dict:
        return {
            "trend": self.trend.to_state(),
            "popular": self.popular.to_state(),
            "catpop": self.category_popular.to_state(),
            "nb": self.neighbours,
            "cat": {k: _item_state(v) for k, v in self.catalog.items()},
            "catitems": {k: v.to_state() for k, v in self.category_items.items()},
            "events": self.events,
        }

    @classmethod
    def from_state(cls, data: dict, config: EngineConfig) -> "GlobalModel":
        model = cls(config)
        model.trend = DecayedScores(config.trend_half_life_s, config.max_items, data["trend"])
        model.popular = DecayedScores(config.popularity_half_life_s, config.max_items, data["popular"])
        model.category_popular = DecayedScores(config.popularity_half_life_s, MAX_CATEGORIES, data["catpop"])
        model.neighbours = data["nb"]
        model.catalog = {k: ItemInfo(*v) for k, v in data["cat"].items()}
        half_life = config.popularity_half_life_s
        model.category_items = {k: DecayedScores(half_life, 64, v) for k, v in data["catitems"].items()}
        model.events = data["events"]
        return model
