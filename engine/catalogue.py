"""Product lines from item names: which items are variants or companions of one another by their description.

A wholesaler's shopper who bought "PINK REGENCY TEACUP AND SAUCER" often goes on to the green one, the regency
cake stand or the regency sugar bowl: items of one product line share rare words of their descriptions ("REGENCY")
and colour variants share a stock-code base (85099B, 85099C, 85099F). The co-purchase graph finds such items only
once enough orders linked them; a new arrival of a line the shopper collects has no links yet. This index reads the
names instead, learned from the stream (order lines carry the description, ``Interaction.name``; no offline pass):

- each item's tokens: the words of its name (three letters or more) minus colour words and stop words, plus
  ``#<numeric base>`` when its code is a variant (digits followed by letters);
- an inverted index token -> items, at most ``catalogue_token_items`` (50) per token; a token carried by more items
  than that names a kind of product ("BAG", "CARD"), not a line, and is skipped when searching (it still weighs in
  the norms);
- content neighbours ("siblings"): IDF-weighted cosine over the token sets, ``sum_t idf(t)^2 / (|a| |b|)``. They are
  computed on the **write path**, once, when an item's name is first learned: the new item's list is searched, and
  the new item is offered to each sibling's list (the cosine is symmetric), so an old purchase's list gains the
  new arrivals of its line the moment they first sell. Lists are searched again from a queue, at most
  ``_SEARCHES_PER_ORDER`` per order: those of the items carrying a word that has just become too common (their
  links through it are noise now), and that of an item sold again more than ``_REFRESH_ORDERS`` orders after its
  last search (the IDFs drift).

Why on the write path: searching on the read path (cached per 1,000 orders) cost 0.8 ms mean / 4 ms p99 per
recommendation, mostly the searches when the cache turned over; new names are rare (a few per hundred orders), so
searching when they arrive costs the write path next to nothing and leaves the read path dict look-ups.

Bounded: at most ``max_items`` items (the ones sold longest ago are forgotten first), a few tokens each, the
postings capped per token, at most ``catalogue_neighbours`` siblings per item. Read path per recommendation: at most
``catalogue_anchors`` x ``catalogue_neighbours`` dict updates. Learned inside :meth:`PurchaseGraph.observe`, so the
streaming worker and the replay learn it the same way, and checkpointed inside the discovery model's state
(siblings included; a checkpoint written before they were kept searches each item's list once, at its first read).
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Collection, Iterable
from operator import itemgetter

from kairos.engine.config import EngineConfig
from kairos.engine.state import Interaction, UserInterest

#: Norms are cached per this many observed orders (the IDFs move slowly).
_REFRESH_EVERY = 1000
#: A sibling list older than this many observed orders is queued to be searched again when its item sells.
_REFRESH_ORDERS = 10_000
#: Queued lists searched again per observed order (bounds the write path: a search is at most a few hundred dict
#: updates, and a word turning common queues up to ``catalogue_token_items`` lists at once).
_SEARCHES_PER_ORDER = 2

#: Words that say nothing about the product line: colours (a colour variant is the same line) and stop words.
_IGNORED = frozenset(
    """
    RED PINK BLUE WHITE GREEN CREAM IVORY BLACK YELLOW ORANGE PURPLE GOLD SILVER BROWN GREY GRAY TURQUOISE LILAC
    NATURAL PASTEL AQUA TEAL BEIGE NAVY CHOCOLATE COPPER COLOUR COLOURS ASSORTED
    THE AND WITH FOR SET OF
    """.split()
)
_WORD = re.compile(r"[A-Z]{3,}")
_VARIANT_CODE = re.compile(r"^(\d+)[A-Za-z]+$")


def product_tokens(item_id: str, name: str) -> tuple[str, ...]:
    """The tokens that place an item in its product line.

    >>> product_tokens("85099B", "JUMBO BAG RED RETROSPOT")
    ('JUMBO', 'BAG', 'RETROSPOT', '#85099')
    >>> product_tokens("22386", "jumbo bag pink polkadot")
    ('JUMBO', 'BAG', 'POLKADOT')
    """
    words = [w for w in dict.fromkeys(_WORD.findall(name.upper())) if w not in _IGNORED]
    variant = _VARIANT_CODE.match(item_id)
    if variant:
        words.append(f"#{variant.group(1)}")
    return tuple(words)


class ProductCatalogue:
    """Item names -> product-line tokens, and content neighbours by IDF cosine, learned one order at a time.

    >>> from kairos.engine.config import EngineConfig
    >>> from kairos.engine.state import Interaction
    >>> cat = ProductCatalogue(EngineConfig())
    >>> names = {"a": "PINK REGENCY TEACUP", "b": "GREEN REGENCY TEACUP", "c": "PAPER NAPKIN", "d": "PAPER CUP"}
    >>> cat.observe([Interaction(i, None, "purchase", 8.0, 0.0, name=n) for i, n in names.items()])
    >>> [item for item, _ in cat.neighbours("a")]
    ['b']
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.max_items = config.max_items
        self.tokens: dict[str, tuple[str, ...]] = {}
        #: item -> (first seen, last seen) in event time.
        self.seen: dict[str, list[float]] = {}
        self.postings: dict[str, list[str]] = {}
        self.df: dict[str, int] = {}
        self.observed = 0
        #: item -> its name neighbours, best first (at most ``catalogue_neighbours``), and when they were searched.
        self.siblings: dict[str, list[tuple[str, float]]] = {}
        self._searched_at: dict[str, int] = {}
        #: Items whose lists are to be searched again, oldest first (an ordered set of known items).
        self._stale: dict[str, None] = {}
        self._norms: dict[str, tuple[int, float]] = {}

    # --- write path ---

    def observe(self, interactions: Iterable[Interaction]) -> None:
        """Learn the names of one order's lines (purchases only: they carry the description)."""
        lines = [it for it in interactions if it.action == "purchase"]
        if not lines:
            return
        for it in lines:
            seen = self.seen.get(it.item_id)
            if seen is not None:
                seen[1] = it.ts
                if self._is_old(it.item_id):
                    self._stale[it.item_id] = None
            elif it.name:
                self._add(it.item_id, it.name, it.ts)
        self._search_stale(_SEARCHES_PER_ORDER)
        self.observed += 1
        if len(self.tokens) > self.max_items:
            self._forget_stale()

    def _add(self, item: str, name: str, ts: float) -> None:
        """Index a new item, search its siblings, and offer it to theirs (new arrivals join old lines at once)."""
        tokens = product_tokens(item, name)
        self._index(item, tokens, [ts, ts])
        for token in tokens:
            self._unlink_common(token, item)
        found = self._search(item)
        self._set_siblings(item, found)
        for other, cosine in found:
            self._offer(other, item, cosine)

    def _unlink_common(self, token: str, item: str) -> None:
        """When ``item`` makes ``token`` too common to search, the items that carried it are queued to be searched
        again: their lists were linked through a word that now names a kind of product (once per token)."""
        posting = self.postings[token]
        if len(posting) != self.config.catalogue_token_items + 1 or posting[-1] != item:
            return
        for other in posting[:-1]:
            if other in self.siblings:
                self._stale[other] = None

    def _is_old(self, item: str) -> bool:
        searched = self._searched_at.get(item)
        return searched is None or self.observed - searched >= _REFRESH_ORDERS

    def _search_stale(self, budget: int) -> None:
        """Search again the ``budget`` oldest queued lists (items forgotten meanwhile are dropped)."""
        while budget > 0 and self._stale:
            item = next(iter(self._stale))
            del self._stale[item]
            if item in self.tokens:
                self._set_siblings(item, self._search(item))
                budget -= 1

    def _set_siblings(self, item: str, found: list[tuple[str, float]]) -> None:
        self.siblings[item] = found
        self._searched_at[item] = self.observed

    def _offer(self, item: str, candidate: str, cosine: float) -> None:
        """Put ``candidate`` into ``item``'s sibling list if it is among the closest (lists not searched yet, e.g.
        after loading an older checkpoint, are left alone: their search will find it)."""
        found = self.siblings.get(item)
        if found is None:
            return
        cap = self.config.catalogue_neighbours
        if len(found) >= cap and cosine <= found[-1][1]:
            return
        found = [pair for pair in found if pair[0] != candidate]
        found.append((candidate, cosine))
        found.sort(key=itemgetter(1), reverse=True)
        self.siblings[item] = found[:cap]

    def _forget_stale(self) -> None:
        """Down to 90% of ``max_items``: the items sold longest ago go, with their tokens (the index is rebuilt,
        oldest first, as it was learned)."""
        seen = self.seen
        keep = heapq.nlargest(self.max_items - self.max_items // 10, seen, key=lambda i: seen[i][1])
        self._rebuild({item: self.tokens[item] for item in keep}, {item: seen[item] for item in keep})
        self._keep_siblings(self.siblings)

    def _rebuild(self, tokens: dict[str, tuple[str, ...]], seen: dict[str, list[float]]) -> None:
        self.tokens, self.seen, self.df, self.postings = {}, {}, {}, {}
        for item in sorted(tokens, key=lambda i: seen[i][0]):
            self._index(item, tokens[item], seen[item])
        self._norms.clear()

    def _keep_siblings(self, siblings: dict[str, list[tuple[str, float]]]) -> None:
        """Keep the lists of the items still known, without the forgotten items (no search: the write path's
        budget is a few searches per new name, not one per item)."""
        known = self.tokens
        self.siblings = {
            item: [(other, cosine) for other, cosine in found if other in known]
            for item, found in siblings.items() if item in known
        }  # fmt: skip
        self._searched_at = {item: self._searched_at.get(item, self.observed) for item in self.siblings}
        self._stale = {item: None for item in self._stale if item in self.siblings}

    def _index(self, item: str, tokens: tuple[str, ...], seen: list[float]) -> None:
        self.tokens[item] = tokens
        self.seen[item] = seen
        cap = self.config.catalogue_token_items
        for token in tokens:
            self.df[token] = self.df.get(token, 0) + 1
            posting = self.postings.setdefault(token, [])
            if len(posting) <= cap:  # one past the cap marks the token as too common to search
                posting.append(item)

    # --- read path ---

    def first_seen(self, item: str) -> float | None:
        seen = self.seen.get(item)
        return seen[0] if seen is not None else None

    def last_sold(self, item: str) -> float | None:
        seen = self.seen.get(item)
        return seen[1] if seen is not None else None

    def neighbours(self, item: str) -> list[tuple[str, float]]:
        """The items whose names are closest to this one's (IDF cosine), best first: the list kept since the write
        path searched it (searched here only for an item loaded from a checkpoint that did not keep its list)."""
        found = self.siblings.get(item)
        if found is None:
            if item not in self.tokens:
                return []
            found = self._search(item)
            self._set_siblings(item, found)
        return found

    def _search(self, item: str) -> list[tuple[str, float]]:
        """The item's closest names among those sharing one of its searchable words (at most
        ``catalogue_token_items`` items each, so one search is at most a few hundred dict updates)."""
        epoch = self.observed // _REFRESH_EVERY
        tokens = self.tokens.get(item)
        if not tokens:
            return []
        cap = self.config.catalogue_token_items
        dots: dict[str, float] = {}
        for token in tokens:
            posting = self.postings.get(token, ())
            if len(posting) > cap:
                continue
            weight = self._idf(token) ** 2
            for other in posting:
                dots[other] = dots.get(other, 0.0) + weight
        dots.pop(item, None)
        if not dots:
            return []
        norm = self._norm(item, epoch)
        cosine = ((other, dot / (norm * self._norm(other, epoch))) for other, dot in dots.items())
        return heapq.nlargest(self.config.catalogue_neighbours, cosine, key=itemgetter(1))

    def _idf(self, token: str) -> float:
        return math.log((len(self.tokens) + 1) / self.df.get(token, 1))

    def _norm(self, item: str, epoch: int) -> float:
        cached = self._norms.get(item)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        norm = math.sqrt(sum(self._idf(t) ** 2 for t in self.tokens.get(item, ()))) or 1.0
        if len(self._norms) >= self.max_items:
            self._norms.clear()
        self._norms[item] = (epoch, norm)
        return norm

    def scores(self, user: UserInterest, n: int, excluded: Collection[str]) -> list[tuple[str, float]]:
        """Content kNN over the shopper's purchase history: each of their ``catalogue_anchors`` latest purchases
        votes for its name neighbours with their cosine. The ``n`` best items not in ``excluded``, best first."""
        purchased = user.purchased
        anchors = (
            heapq.nlargest(self.config.catalogue_anchors, purchased, key=purchased.__getitem__)
            if len(purchased) > self.config.catalogue_anchors
            else purchased
        )
        totals: dict[str, float] = {}
        get = totals.get
        siblings = self.siblings
        for anchor in anchors:
            found = siblings.get(anchor)
            for item, cosine in found if found is not None else self.neighbours(anchor):
                totals[item] = get(item, 0.0) + cosine
        # The exclusions can be the shopper's whole history, far larger than the votes: filter the votes.
        votes = ((item, total) for item, total in totals.items() if item not in excluded)
        return heapq.nlargest(n, votes, key=itemgetter(1))

    # --- persistence (inside the discovery model's state) ---

    def to_state(self, in_pieces: bool = False) -> dict:
        """``in_pieces``: the tokens and the sibling lists are left to a checkpoint built in pieces (None)."""
        tokens = None if in_pieces else {item: list(t) for item, t in self.tokens.items()}
        return {"tokens": tokens, "seen": self.seen,
                "observed": self.observed, "siblings": None if in_pieces else self.siblings,
                "stale": list(self._stale)}

    def load_state(self, data: dict) -> None:
        """Rebuilds the postings and document frequencies from the items, oldest first (as they were learned).
        Checkpoints written before the sibling lists were kept have none: each is searched at its first read."""
        tokens, seen = data["tokens"], data["seen"]
        self._rebuild({item: tuple(t) for item, t in tokens.items()}, {item: list(seen[item]) for item in tokens})
        self.observed = data["observed"]
        siblings = data.get("siblings", {})
        self._searched_at = {}
        self._stale = dict.fromkeys(data.get("stale", ()))
        self._keep_siblings({item: [(other, cosine) for other, cosine in found] for item, found in siblings.items()})
