"""What orders teach about discovery: which items a shopper who bought X goes on to buy, and what sells right now.

Owned by the :class:`~kairos.engine.recommender.Recommender` (one per partition, beside the ``GlobalModel``):

- ``popular_now``: a short half-life (``discovery_half_life_s``, 7 days) decayed count of the orders containing each
  item: the cold-start list (a first order is all discovery);
- ``discovered_now``: the same count over first purchases only (an item the buyer had not bought before), by
  returning shoppers only (``discovery_returning_only``): the baseline of a returning shopper's list (re-stocking
  staples says little about what others will find next, and a first order, all of it first purchases, is what
  newcomers start with: ``first_orders_now`` counts those);
- an item-to-item "bought by the same shoppers" graph: the lines of one order are linked to each other, and the
  items a shopper buys for the first time are linked to the shopper's earlier purchases (so a kNN over the whole
  purchase history, not just the last few items, finds them). Links are counted per order and read as a cosine,
  ``c(i, j) / sqrt(n_i n_j)`` with ``n_i`` the orders containing ``i``: raw counts would make the best sellers
  everybody's neighbours;
- ``shoppers``: user-kNN, "shoppers who bought like you" (:class:`~kairos.engine.shoppers.SimilarShoppers`).

Write path: :meth:`PurchaseGraph.observe` per purchase, before the user state absorbs it (O(lines x links)).
Read path: :meth:`PurchaseGraph.scores` per recommendation (O(anchors x neighbours), cached neighbour lists) and
:meth:`PurchaseGraph.similar_shoppers_scores` (O(anchors x buyers + shoppers x items)).
Memory is bounded: at most ``max_items`` items (the ones in the fewest orders are forgotten first), each with at
most ``discovery_max_neighbours`` links; the user-kNN maps have their own caps (``engine/shoppers.py``).
Checkpointed with the partition's global state (inside the Selector's entry, ``Selector.to_state``); the
catch-up replay after a restart (``Recommender.observe_global_only``) feeds it as it feeds the global model.

Shared across partitions (``KAIROS_SHARED_DISCOVERY``, docs/state.md): :meth:`PurchaseGraph.facts` is what
:meth:`PurchaseGraph.learn` needs from an order and its shopper; the shopper's partition publishes it and every
other partition learns it with :meth:`PurchaseGraph.learn_peer`, at most once per source record.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from operator import itemgetter

from kairos.engine.catalogue import ProductCatalogue
from kairos.engine.config import EngineConfig
from kairos.engine.decay import DecayedScores, decay_factor
from kairos.engine.shoppers import SimilarShoppers
from kairos.engine.state import Interaction, UserInterest, interactions_of
from kairos.schemas.events import PurchaseEvent

#: Source offsets remembered per source of shared discovery (``PurchaseGraph.learn_peer``): more than a source
#: worker ever re-publishes after a crash in practice (its records since its last commit, ~50 ms of them).
PEER_OFFSETS_KEPT = 256
#: Cached neighbour lists and the popular-now lists are refreshed after this many observed orders (recomputing an
#: anchor's list on most requests was most of the read path's cost).
_REFRESH_EVERY = 1000


class PurchaseGraph:
    """Short-horizon popularity and a cosine-normalised co-purchase graph, learned one order at a time.

    >>> from kairos.engine.config import EngineConfig
    >>> from kairos.engine.state import Interaction, UserInterest
    >>> cfg = EngineConfig(); graph = PurchaseGraph(cfg); user = UserInterest.new("u", cfg)
    >>> graph.observe(user, [Interaction(i, None, "purchase", 8.0, 0.0) for i in ("a", "b")])
    >>> user.purchased["a"] = 0.0
    >>> [item for item, _ in graph.scores(user, 1.0, 5, excluded={"a"})]
    ['b']
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.max_items = config.max_items
        self.popular_now = DecayedScores(config.discovery_half_life_s, config.max_items)
        self.discovered_now = DecayedScores(config.discovery_half_life_s, config.max_items)
        #: Items in the most *first* orders lately (a shopper's first order in the stream): what newcomers start
        #: with, blended into the cold-start list.
        self.first_orders_now = DecayedScores(config.discovery_first_order_half_life_s, config.max_items)
        #: Item names, first and last sales: the content kNN (``catalogue_weight`` > 0), the new arrivals
        #: (``discovery_new_weight`` > 0) and the stale lines (``discovery_stale_factor`` < 1) read it; learning it
        #: costs 0.03 ms per order.
        uses_catalogue = (
            config.catalogue_weight > 0 or config.discovery_new_weight > 0 or config.discovery_stale_factor < 1
        )
        self.catalogue = ProductCatalogue(config) if uses_catalogue else None
        self.orders: dict[str, float] = {}
        self.links: dict[str, dict[str, float]] = {}
        #: User-kNN ("shoppers who bought like you"), used when ``discovery_shopper_weight`` > 0.
        self.shoppers = SimilarShoppers(config) if config.discovery_shopper_weight > 0 else None
        self.observed = 0
        #: Shared discovery (orders of other partitions' shoppers, ``learn_peer``): the latest source offsets learned
        #: per "partition:topic" of the source (ascending, at most ``PEER_OFFSETS_KEPT``), and the next offset to read
        #: per partition of the topic they come on. Both are checkpointed with the rest, so a restart re-reads
        #: exactly what the checkpoint has not learned.
        self.peer_sources: dict[str, list[int]] = {}
        self.peer_positions: dict[int, int] = {}
        #: While a checkpoint is built in slices (``open_snapshot``): the rows of ``links`` as they were when
        #: it began, kept the first time the stream changes or drops them (copy on write); None when none is open.
        self._kept_links: dict[str, dict[str, float]] | None = None
        self._prune_at = config.discovery_max_neighbours + max(config.discovery_max_neighbours // 2, 1)
        self._neighbour_cache: dict[str, tuple[int, list[tuple[str, float]]]] = {}
        self._popular_cache: dict[str, tuple[int, float, list[tuple[str, float]]]] = {}

    # --- write path ---

    def observe(self, user: UserInterest, interactions: list[Interaction]) -> None:
        """Learn from one order (other interactions are ignored); call it before ``user`` absorbs the order."""
        facts = self.facts(user, interactions)
        if facts is not None:
            self.learn(facts)

    def facts(self, user: UserInterest, interactions: list[Interaction]) -> "OrderFacts | None":
        """What :meth:`learn` needs from an order and the state of its shopper before it, or None when the event is
        not an order (a click, a return). Computed by the partition that owns the shopper; another partition
        learns the same order from these facts alone (``docs/state.md``, shared discovery)."""
        bought: dict[str, Interaction] = {}  # each item's first line with a name (or its first line)
        for it in interactions:
            if it.action == "purchase" and (it.item_id not in bought or bought[it.item_id].name is None):
                bought[it.item_id] = it
        if not bought:
            return None
        purchased = user.purchased
        return OrderFacts(
            user_id=user.user_id,
            ts=interactions[0].ts,
            lines=tuple((item, it.name) for item, it in bought.items()),
            first_order=not purchased,
            known=frozenset(item for item in bought if item in purchased),
            previous=tuple(_latest(purchased, self.config.discovery_history_links)),
            details=tuple((item, it.category_id, it.price) for item, it in bought.items()),
        )

    def event_facts(self, user: UserInterest, event) -> "OrderFacts | None":
        """:meth:`facts` of an event, None unless it is an order (a purchase that is not a return); read before
        ``user`` absorbs it."""
        if not isinstance(event, PurchaseEvent) or event.is_return:
            return None
        return self.facts(user, interactions_of(event, user.config))

    def learn(self, facts: "OrderFacts") -> None:
        """Learn one order from its facts (this partition's shopper or, shared, another partition's)."""
        basket = [item for item, _ in facts.lines]
        ts, known = facts.ts, facts.known
        discovers = not (facts.first_order and self.config.discovery_returning_only)
        for item in basket:
            self.popular_now.add(item, 1.0, ts)
            if facts.first_order:
                self.first_orders_now.add(item, 1.0, ts)
            if discovers and item not in known:  # re-stocking says little about what others will find
                self.discovered_now.add(item, 1.0, ts)
            self.orders[item] = self.orders.get(item, 0.0) + 1.0
        lines = basket[: self.config.basket_lines]
        links = self.config.discovery_basket_links
        for n, item in enumerate(lines):
            for other in lines[max(0, n - links) : n]:
                self._link(item, other, 1.0)
        self._link_to_history(facts.previous, [item for item in lines if item not in known])
        if self.shoppers is not None:
            self.shoppers.observe(facts.user_id, lines)
        if self.catalogue is not None:
            self.catalogue.observe(Interaction(item, None, "purchase", 0.0, ts, name=name) for item, name in facts.lines)
        self.observed += 1
        if len(self.orders) > self.max_items:
            self._forget_rare()

    def learn_peer(self, facts: "OrderFacts", source: str, offset: int) -> bool:
        """Learn an order another partition applied, at most once: ``source`` names the partition and input topic
        it was read from, ``offset`` its record there. A source that restarts from its checkpoint applies (and
        publishes) its uncommitted records again: a record among the latest ``PEER_OFFSETS_KEPT`` learned from the
        source is skipped, and so is one older than all of them once that many are kept. One that was never
        learned is learned even when it comes after later ones (its first publication failed, a later one of the
        source's records was written, and the source restarted). Returns whether it was learned."""
        learned = self.peer_sources.setdefault(source, [])
        at = bisect.bisect_left(learned, offset)
        if (at < len(learned) and learned[at] == offset) or (at == 0 and len(learned) >= PEER_OFFSETS_KEPT):
            return False
        learned.insert(at, offset)
        if len(learned) > PEER_OFFSETS_KEPT:
            del learned[0]
        self.learn(facts)
        return True

    def _link_to_history(self, previous: tuple[str, ...], new: list[str]) -> None:
        """Items bought for the first time are linked to what the shopper bought before (across orders)."""
        if not previous:
            return
        share = self.config.discovery_history_weight
        for item in new[: self.config.discovery_history_links]:
            for other in previous:
                self._link(item, other, share)

    def _link(self, a: str, b: str, weight: float) -> None:
        for x, y in ((a, b), (b, a)):
            row = self.links.get(x)
            if row is None:
                row = self.links[x] = {}
            elif self._kept_links is not None and x not in self._kept_links:
                self._kept_links[x] = dict(row)  # as the checkpoint being built saw it
            row[y] = row.get(y, 0.0) + weight
            if len(row) > self._prune_at:
                self._prune(row)

    def _prune(self, row: dict[str, float]) -> None:
        """Keep the strongest links by cosine (the row's own count is a constant factor)."""
        orders = self.orders
        keep = heapq.nlargest(
            self.config.discovery_max_neighbours, row.items(), key=lambda kv: kv[1] / math.sqrt(orders.get(kv[0], 1.0))
        )
        row.clear()
        row.update(keep)

    def _forget_rare(self) -> None:
        """Down to 90% of ``max_items``: the items in the fewest orders go, with their rows."""
        keep = set(heapq.nlargest(self.max_items - self.max_items // 10, self.orders, key=self.orders.__getitem__))
        self.orders = {item: n for item, n in self.orders.items() if item in keep}
        kept = self._kept_links
        if kept is not None:  # a dropped row is not changed any more: the checkpoint being built keeps it as it is
            kept.update((item, row) for item, row in self.links.items() if item not in keep and item not in kept)
        self.links = {item: row for item, row in self.links.items() if item in keep}
        self._neighbour_cache.clear()

    # --- read path ---

    def popular(self, now: float, discovered: bool = False, n: int = 200) -> list[tuple[str, float]]:
        """The ``n`` items in the most orders lately (``discovered``: the most first purchases), best first
        (cached per 1,000 orders or one hour of event time)."""
        counts = self.discovered_now if discovered else self.popular_now
        return self._cached_top("discovered" if discovered else "popular", now, lambda: counts.top(n, now))

    def cold_start(self, now: float, n: int = 200) -> list[tuple[str, float]]:
        """A first order's list: popular-now + ``discovery_first_order_weight`` x first-orders-now, each as a share
        of its best item, best first (cached as ``popular``). Newcomers start with a few staples that regulars
        already own, so the items in the most first orders add to what sells now (measured in docs/evaluation.md)."""
        weight = self.config.discovery_first_order_weight
        if weight <= 0:
            return self.popular(now, n=n)
        return self._cached_top("cold", now, lambda: self._blend_first_orders(now, n, weight))

    def _blend_first_orders(self, now: float, n: int, weight: float) -> list[tuple[str, float]]:
        blended: dict[str, float] = {}
        for counts, share in ((self.popular_now, 1.0), (self.first_orders_now, weight)):
            top = counts.top(n, now)
            best = top[0][1] if top and top[0][1] > 0 else 1.0
            for item, score in top:
                blended[item] = blended.get(item, 0.0) + share * score / best
        return heapq.nlargest(n, blended.items(), key=itemgetter(1))

    def _cached_top(self, key: str, now: float, compute) -> list[tuple[str, float]]:
        cached = self._popular_cache.get(key)
        epoch = self.observed // _REFRESH_EVERY
        if cached is None or cached[0] != epoch or abs(now - cached[1]) > 3600.0:
            cached = self._popular_cache[key] = (epoch, now, compute())
        return cached[2]

    def neighbours(self, item: str) -> list[tuple[str, float]]:
        """The item's strongest neighbours by cosine, best first (cached, refreshed every 1,000 orders)."""
        epoch = self.observed // _REFRESH_EVERY
        cached = self._neighbour_cache.get(item)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        row = self.links.get(item)
        found: list[tuple[str, float]] = []
        if row:
            orders = self.orders
            n_item = orders.get(item, 1.0)
            cosine = ((other, c / math.sqrt(n_item * orders.get(other, 1.0))) for other, c in row.items())
            found = heapq.nlargest(self.config.discovery_neighbours, cosine, key=itemgetter(1))
        if len(self._neighbour_cache) >= self.max_items:
            self._neighbour_cache.clear()
        self._neighbour_cache[item] = (epoch, found)
        return found

    def scores(self, user: UserInterest, now: float, n: int, excluded: Collection[str]) -> list[tuple[str, float]]:
        """Item-kNN over the shopper's purchase history: each of their ``discovery_anchors`` latest purchases votes
        for its neighbours with their cosine. The ``n`` best items not in ``excluded``, best first."""
        totals: dict[str, float] = {}
        half_life = self.config.discovery_anchor_half_life_s
        for anchor in _latest(user.purchased, self.config.discovery_anchors):
            vote = decay_factor(now - user.purchased[anchor], half_life) if half_life > 0 else 1.0
            for item, cosine in self.neighbours(anchor):
                totals[item] = totals.get(item, 0.0) + vote * cosine
        for item in excluded:
            totals.pop(item, None)
        return heapq.nlargest(n, totals.items(), key=itemgetter(1))

    def similar_shoppers_scores(
        self, user: UserInterest, n: int, excluded: Collection[str]
    ) -> list[tuple[str, float]]:
        """What shoppers who bought like this one bought (empty when user-kNN is off)."""
        if self.shoppers is None:
            return []
        anchors = _latest(user.purchased, self.config.discovery_shopper_anchors)
        return self.shoppers.scores(user.user_id, anchors, n, excluded)

    def new_arrivals(self, now: float) -> frozenset[str]:
        """Items of the discovered-now list first sold within ``discovery_new_s`` (empty when off or without the
        catalogue, which remembers first sales); cached as ``popular``."""
        if self.catalogue is None or self.config.discovery_new_weight <= 0:
            return frozenset()
        return self._cached_top("new", now, lambda: self._arrivals(now))

    def _arrivals(self, now: float) -> frozenset[str]:
        since = now - self.config.discovery_new_s
        first_seen = self.catalogue.first_seen
        return frozenset(item for item, _ in self.popular(now, discovered=True) if (first_seen(item) or -1e18) >= since)

    def stale_items(self, items: Collection[str], now: float) -> list[str]:
        """The ``items`` whose last sale is older than ``discovery_stale_s`` (items never seen by the catalogue, e.g.
        unnamed ones, are not judged; empty when off or without the catalogue)."""
        if self.catalogue is None or self.config.discovery_stale_factor >= 1:
            return []
        since = now - self.config.discovery_stale_s
        last_sold = self.catalogue.last_sold
        return [item for item in items if (last_sold(item) or since) < since]

    def similar_products_scores(
        self, user: UserInterest, n: int, excluded: Collection[str]
    ) -> list[tuple[str, float]]:
        """Items whose names place them in the product lines of the shopper's purchases (empty when off)."""
        if self.catalogue is None or self.config.catalogue_weight <= 0:
            return []
        return self.catalogue.scores(user, n, excluded)

    # --- persistence (inside the partition checkpoint's "selection" entry, see Selector.to_state) ---

    def open_snapshot(self) -> dict[str, tuple[list[str], dict, Callable[[str], object], bool]]:
        """For a checkpoint built in pieces (engine/checkpoint.py): the model's large maps as they are now, kept
        until :meth:`close_snapshot`, by their place in :meth:`to_state` (a dotted path), each as (its keys now,
        the map in which a key's state of now is kept when it changes or goes, a key's current state, whether the
        map is stored as a list of [key, state] pairs rather than an object); a key not kept is unchanged.
        ``"links"``: the co-purchase rows, copy on write (a row's state of now is kept the first time the stream
        changes or drops it); ``"catalogue.tokens"`` and ``"catalogue.siblings"``: the products' name tokens and
        the product lines' sibling lists, which are replaced, never changed in place, so a shallow copy of each map
        holds them; ``"shoppers.buyers"`` and
        ``"shoppers.baskets"``: the user-kNN lists, copy on write (``SimilarShoppers.open_snapshot``).
        :meth:`to_state` with ``in_pieces`` leaves them out. After 6,000 Online Retail orders with shared
        discovery the rows were 3.9 and the lists 0.95 of the model's 6.1 MB, and 70 and 11.5 of the 105 ms its
        encoding held the worker's loop when encoded at once; the user-kNN lists took 4.5-7 ms to copy and
        2.5 ms to encode (``kairos bench checkpoint``, docs/performance.md)."""
        if self._kept_links is not None:
            raise RuntimeError("a snapshot of the discovery model is already open")
        self._kept_links = {}
        parts: dict[str, tuple[list[str], dict, Callable[[str], object], bool]] = {
            "links": (list(self.links), self._kept_links, lambda item: self.links[item], False)
        }
        if self.catalogue is not None:  # tuples and lists replaced, never changed in place: copies of the maps
            tokens, siblings = dict(self.catalogue.tokens), dict(self.catalogue.siblings)
            parts["catalogue.tokens"] = (list(tokens), {}, tokens.__getitem__, False)
            parts["catalogue.siblings"] = (list(siblings), {}, siblings.__getitem__, False)
        if self.shoppers is not None:
            for name, (keys, kept, current) in self.shoppers.open_snapshot().items():
                parts[f"shoppers.{name}"] = (keys, kept, current, name == "baskets")
        return parts

    def close_snapshot(self) -> None:
        self._kept_links = None
        if self.shoppers is not None:
            self.shoppers.close_snapshot()

    def to_state(self, in_pieces: bool = False) -> dict:
        """``in_pieces``: :meth:`open_snapshot`'s maps are left to a checkpoint built in pieces (None where they
        stand)."""
        state = {
            "popular": self.popular_now.to_state(), "discovered": self.discovered_now.to_state(),
            "orders": self.orders, "links": None if in_pieces else self.links, "observed": self.observed,
            "first_orders": self.first_orders_now.to_state(),
            "peer_sources": self.peer_sources, "peer_positions": sorted(self.peer_positions.items()),
        }  # fmt: skip
        if self.shoppers is not None:
            state["shoppers"] = self.shoppers.to_state(in_pieces)
        if self.catalogue is not None:
            state["catalogue"] = self.catalogue.to_state(in_pieces)
        return state

    def load_state(self, data: dict) -> None:
        half_life, cap = self.config.discovery_half_life_s, self.config.max_items
        self.popular_now = DecayedScores(half_life, cap, data["popular"])
        self.discovered_now = DecayedScores(half_life, cap, data["discovered"])
        self.orders, self.links, self.observed = data["orders"], data["links"], data["observed"]
        # Checkpoints written before the first-order counts and the catalogue have neither: both relearn.
        first_half_life = self.config.discovery_first_order_half_life_s
        self.first_orders_now = DecayedScores(first_half_life, cap, data.get("first_orders"))
        self.peer_sources = {source: list(offsets) for source, offsets in data.get("peer_sources", {}).items()}
        self.peer_positions = {int(p): int(offset) for p, offset in data.get("peer_positions", [])}
        if self.shoppers is not None and "shoppers" in data:
            self.shoppers.load_state(data["shoppers"])
        if self.catalogue is not None and "catalogue" in data:
            self.catalogue.load_state(data["catalogue"])
        self._neighbour_cache.clear()
        self._popular_cache.clear()


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """One order as the discovery model learns it, without the shopper's state: what the partition that owns the
    shopper publishes so that every other partition learns the order too (``PurchaseGraph.facts``)."""

    user_id: str
    ts: float
    #: The distinct items bought, in line order, with their names (None when the event had none).
    lines: tuple[tuple[str, str | None], ...]
    #: The shopper had bought nothing before (in this engine's memory of them).
    first_order: bool
    #: The lines the shopper had bought before (re-stocking).
    known: frozenset[str]
    #: The shopper's latest purchases before this order (``discovery_history_links`` of them).
    previous: tuple[str, ...]
    #: What the order says about each item: (item, category or None, unit price or None). Not learned by the
    #: discovery model: another partition's catalog learns the product from it (``GlobalModel.learn_product``), so
    #: that what discovery finds there has a name, a category and a price. Empty in records written before it.
    details: tuple[tuple[str, str | None, float | None], ...] = ()

    def to_json(self) -> dict:
        return {
            "user_id": self.user_id, "ts": self.ts, "lines": [list(line) for line in self.lines],
            "first_order": self.first_order, "known": sorted(self.known), "previous": list(self.previous),
            "details": [list(detail) for detail in self.details],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> "OrderFacts":
        """Raises ``KeyError``, ``TypeError`` or ``ValueError`` on a malformed record."""
        lines = tuple((str(item), None if name is None else str(name)) for item, name in data["lines"])
        if not lines:
            raise ValueError("an order without lines")
        details = tuple(
            (str(item), None if category is None else str(category), None if price is None else _price(price))
            for item, category, price in data.get("details", ())
        )  # fmt: skip
        return cls(
            user_id=str(data["user_id"]), ts=float(data["ts"]), lines=lines, first_order=bool(data["first_order"]),
            known=frozenset(str(item) for item in data["known"]),
            previous=tuple(str(item) for item in data["previous"]), details=details,
        )  # fmt: skip


def _price(value) -> float:
    """A unit price from a discovery record: finite and not negative (it becomes a ranker feature), or ValueError."""
    price = float(value)
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"not a unit price: {value!r}")
    return price


def _latest(purchased: dict[str, float], n: int) -> list[str]:
    """The ``n`` most recently bought items."""
    if len(purchased) <= n:
        return list(purchased)
    return heapq.nlargest(n, purchased, key=purchased.__getitem__)
