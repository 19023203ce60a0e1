"""Shoppers who bought like you: user-kNN over recent purchases, bounded, learned one order at a time.

Two bounded maps, both written per order: item -> its latest buyers (``discovery_item_buyers`` each), and shopper ->
their latest distinct purchases (``discovery_shopper_items`` each, at most ``discovery_max_shoppers`` shoppers, the
least recently active forgotten first). Reading: the shoppers who bought the same recent items as you, weighted by
overlap / sqrt(their basket size), vote for what else they bought.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from operator import itemgetter

from kairos.engine.config import EngineConfig


class SimilarShoppers:
    """User-kNN for discovery.

    >>> from kairos.engine.config import EngineConfig
    >>> s = SimilarShoppers(EngineConfig())
    >>> s.observe("a", ["x", "y"]); s.observe("b", ["x", "z"])
    >>> s.scores("me", ["x"], 5, excluded={"x"})
    [('y', 0.7071067811865475), ('z', 0.7071067811865475)]
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.buyers: dict[str, deque[str]] = {}
        self.baskets: OrderedDict[str, deque[str]] = OrderedDict()
        #: While a checkpoint is built in slices (``open_snapshot``): an item's buyers and a shopper's basket as they
        #: were when it began, kept the first time the stream changes or drops them (copy on write); else None.
        self._kept_buyers: dict[str, list[str]] | None = None
        self._kept_baskets: dict[str, list[str]] | None = None

    def observe(self, shopper: str, items: Sequence[str]) -> None:
        kept_baskets, kept_buyers = self._kept_baskets, self._kept_buyers
        basket = self.baskets.get(shopper)
        if basket is None:
            basket = self.baskets[shopper] = deque(maxlen=self.config.discovery_shopper_items)
            if len(self.baskets) > self.config.discovery_max_shoppers:
                gone, its_basket = self.baskets.popitem(last=False)
                if kept_baskets is not None and gone not in kept_baskets:
                    kept_baskets[gone] = list(its_basket)
        else:
            if kept_baskets is not None and shopper not in kept_baskets:
                kept_baskets[shopper] = list(basket)
            self.baskets.move_to_end(shopper)
        for item in items:
            if item in basket:
                basket.remove(item)
            basket.append(item)
            buyers = self.buyers.get(item)
            if buyers is None:
                buyers = self.buyers[item] = deque(maxlen=self.config.discovery_item_buyers)
                if len(self.buyers) > self.config.max_items:
                    self._forget_oldest_items()
            if not buyers or buyers[-1] != shopper:
                if kept_buyers is not None and item not in kept_buyers:
                    kept_buyers[item] = list(buyers)
                buyers.append(shopper)

    def _forget_oldest_items(self) -> None:
        """Down to 90% of ``max_items``: the items first seen longest ago go (dicts keep insertion order)."""
        drop = len(self.buyers) - (self.config.max_items - self.config.max_items // 10)
        kept = self._kept_buyers
        for item in list(self.buyers)[:drop]:
            if kept is not None and item not in kept:  # the checkpoint being built keeps it as it was
                kept[item] = list(self.buyers[item])
            del self.buyers[item]

    def scores(self, shopper: str, anchors: Sequence[str], n: int, excluded: Collection[str]) -> list[tuple[str, float]]:
        """The ``n`` items best voted for by the ``discovery_similar_shoppers`` shoppers most like this one."""
        overlap: dict[str, float] = {}
        for anchor in anchors:
            for other in self.buyers.get(anchor, ()):
                if other != shopper:
                    overlap[other] = overlap.get(other, 0.0) + 1.0
        if not overlap:
            return []
        baskets = self.baskets
        similar = heapq.nlargest(
            self.config.discovery_similar_shoppers,
            ((other, count / math.sqrt(len(baskets[other]))) for other, count in overlap.items() if other in baskets),
            key=itemgetter(1),
        )
        totals: dict[str, float] = {}
        for other, weight in similar:
            for item in baskets[other]:
                totals[item] = totals.get(item, 0.0) + weight
        for item in excluded:
            totals.pop(item, None)
        return heapq.nlargest(n, totals.items(), key=itemgetter(1))

    def open_snapshot(self) -> dict[str, tuple[list[str], dict, Callable[[str], list[str]]]]:
        """For a checkpoint built in pieces (engine/checkpoint.py): ``"buyers"`` and ``"baskets"`` as they are now,
        each as (its keys now, in order; the map in which a key's list of now is kept the first time the stream
        changes or drops it; a key's current list), until :meth:`close_snapshot`. ``"baskets"`` is stored as a
        list of [shopper, items] pairs (its order is the forgetting order), ``"buyers"`` as an object."""
        if self._kept_buyers is not None:
            raise RuntimeError("a snapshot of the shoppers is already open")
        self._kept_buyers, self._kept_baskets = {}, {}
        return {
            "buyers": (list(self.buyers), self._kept_buyers, lambda item: list(self.buyers[item])),
            "baskets": (list(self.baskets), self._kept_baskets, lambda shopper: list(self.baskets[shopper])),
        }

    def close_snapshot(self) -> None:
        self._kept_buyers = self._kept_baskets = None

    def to_state(self, in_pieces: bool = False) -> dict:
        """``in_pieces``: the two maps are left to a checkpoint built in pieces (:meth:`open_snapshot`); None."""
        if in_pieces:
            return {"buyers": None, "baskets": None}
        return {"buyers": {k: list(v) for k, v in self.buyers.items()},
                "baskets": [[k, list(v)] for k, v in self.baskets.items()]}

    def load_state(self, data: dict) -> None:
        cfg = self.config
        self.buyers = {k: deque(v, maxlen=cfg.discovery_item_buyers) for k, v in data["buyers"].items()}
        self.baskets = OrderedDict((k, deque(v, maxlen=cfg.discovery_shopper_items)) for k, v in data["baskets"])
