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
from collections.abc import Collection, Sequence
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

    def observe(self, shopper: str, items: Sequence[str]) -> None:
        basket = self.baskets.get(shopper)
        if basket is None:
            basket = self.baskets[shopper] = deque(maxlen=self.config.discovery_shopper_items)
            if len(self.baskets) > self.config.discovery_max_shoppers:
                self.baskets.popitem(last=False)
        else:
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
                buyers.append(shopper)

    def _forget_oldest_items(self) -> None:
        """Down to 90% of ``max_items``: the items first seen longest ago go (dicts keep insertion order)."""
        drop = len(self.buyers) - (self.config.max_items - self.config.max_items // 10)
        for item in list(self.buyers)[:drop]:
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

    def to_state(self) -> dict:
        return {"buyers": {k: list(v) for k, v in self.buyers.items()},
                "baskets": [[k, list(v)] for k, v in self.baskets.items()]}

    def load_state(self, data: dict) -> None:
        cfg = self.config
        self.buyers = {k: deque(v, maxlen=cfg.discovery_item_buyers) for k, v in data["buyers"].items()}
        self.baskets = OrderedDict((k, deque(v, maxlen=cfg.discovery_shopper_items)) for k, v in data["baskets"])
