"""Product lines from item names: which items are variants or companions of one another by their description.

A wholesaler's shopper who bought "PINK REGENCY TEACUP AND SAUCER" often goes on to the green one, the regency
cake stand or the regency sugar bowl: items of one product line share rare words of their descriptions ("REGENCY")
and colour variants share a stock-code base (85099B, 85099C, 85099F). The co-purchase graph finds such items only
once enough orders linked them; a new arrival of a line the shopper collects has no links yet. This index reads the
names instead, learned from the stream (order lines carry the description, ``Interaction.name``; no offline pass):

- each item's tokens: the words of its name (three letters or more) minus colour words and stop words, plus
  ``#<numeric base>`` when its code is a variant (digits followed by letters);
- an inverted index token -> items, at most ``catalogue_token_items`` per token; a token carried by more items than
  that names a kind of product ("BAG", "CARD"), not a line, and is skipped when searching (it still weighs in the
  norms);
- content neighbours: IDF-weighted cosine over the token sets, ``sum_t idf(t)^2 / (|a| |b|)``, cached per item and
  refreshed every 1,000 observed orders (the IDFs move slowly).

Bounded: at most ``max_items`` items (the ones sold longest ago are forgotten first), a few tokens each, the
postings capped per token. Read path per recommendation: at most ``catalogue_anchors`` x ``catalogue_neighbours``
dict updates (cached neighbour lists). Learned inside :meth:`PurchaseGraph.observe`, so the streaming worker and
the replay learn it the same way, and checkpointed inside the discovery model's state.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Collection, Iterable
from operator import itemgetter

from kairos.engine.config import EngineConfig
from kairos.engine.state import Interaction, UserInterest

#: Neighbour lists are recomputed after this many observed orders (as the co-purchase graph's).
_REFRESH_EVERY = 1000

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
        self._cache: dict[str, tuple[int, list[tuple[str, float]]]] = {}
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
            elif it.name:
                self._add(it.item_id, it.name, it.ts)
        self.observed += 1
        if len(self.tokens) > self.max_items:
            self._forget_stale()

    def _add(self, item: str, name: str, ts: float) -> None:
        self._index(item, product_tokens(item, name), [ts, ts])

    def _forget_stale(self) -> None:
        """Down to 90% of ``max_items``: the items sold longest ago go, with their tokens (the index is rebuilt,
        oldest first, as it was learned)."""
        seen = self.seen
        keep = heapq.nlargest(self.max_items - self.max_items // 10, seen, key=lambda i: seen[i][1])
        self._rebuild({item: self.tokens[item] for item in keep}, {item: seen[item] for item in keep})

    def _rebuild(self, tokens: dict[str, tuple[str, ...]], seen: dict[str, list[float]]) -> None:
        self.tokens, self.seen, self.df, self.postings = {}, {}, {}, {}
        for item in sorted(tokens, key=lambda i: seen[i][0]):
            self._index(item, tokens[item], seen[item])
        self._cache.clear()
        self._norms.clear()

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

    def neighbours(self, item: str) -> list[tuple[str, float]]:
        """The items whose names are closest to this one's (IDF cosine), best first; cached per 1,000 orders."""
        epoch = self.observed // _REFRESH_EVERY
        cached = self._cache.get(item)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        found = self._search(item, epoch)
        if len(self._cache) >= self.max_items:
            self._cache.clear()
        self._cache[item] = (epoch, found)
        return found

    def _search(self, item: str, epoch: int) -> list[tuple[str, float]]:
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
        for anchor in anchors:
            for item, cosine in self.neighbours(anchor):
                totals[item] = totals.get(item, 0.0) + cosine
        for item in excluded:
            totals.pop(item, None)
        return heapq.nlargest(n, totals.items(), key=itemgetter(1))

    # --- persistence (inside the discovery model's state) ---

    def to_state(self) -> dict:
        return {"tokens": {item: list(tokens) for item, tokens in self.tokens.items()}, "seen": self.seen,
                "observed": self.observed}

    def load_state(self, data: dict) -> None:
        """Rebuilds the postings and document frequencies from the items, oldest first (as they were learned)."""
        tokens, seen = data["tokens"], data["seen"]
        self._rebuild({item: tuple(t) for item, t in tokens.items()}, {item: list(seen[item]) for item in tokens})
        self.observed = data["observed"]
