"""Engine parameters as one frozen value, built from the settings by ``kairos.agents.settings``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineConfig:
    half_life_s: float = 72 * 3600.0
    purchase_exclusion_s: float = 30 * 86_400.0
    max_recent_items: int = 50
    max_affinities: int = 200
    max_purchased: int = 200
    idle_expiry_s: float = 30 * 86_400.0
    top_n: int = 10
    #: How many previous items a new interaction is linked to in the co-occurrence graph.
    cooccurrence_window: int = 5
    #: Lines of one order are linked to each other too (the strongest co-purchase signal): the first this many...
    basket_lines: int = 30
    #: ...each to at most this many other lines of the order (bounds the cost of very large orders).
    basket_links: int = 8
    #: How many recent items anchor the co-visit candidate search (20 before the discovery model: with the item-kNN
    #: over the purchase history, 10 ranked as well on the Online Retail replay and halves this source's cost).
    candidate_anchors: int = 10
    max_neighbours: int = 100
    #: Distinct items one partition's global model tracks (popularity, catalog, co-occurrence rows); the least
    #: popular are forgotten first. With ``max_neighbours`` this bounds the graph (docs/operations.md, memory).
    max_items: int = 50_000
    #: User states one partition keeps in memory; the least recently active clean ones are dropped from memory
    #: (Redis keeps them; they are read back when the shopper returns).
    max_resident_users: int = 10_000
    #: Popularity half-lives: a short one for "trending", a long one for "popular".
    trend_half_life_s: float = 6 * 3600.0
    popularity_half_life_s: float = 14 * 86_400.0
    max_candidates: int = 100
    #: Event weights of the interest model: a purchase says far more than a view.
    action_weights: dict[str, float] = field(
        default_factory=lambda: {
            "view": 1.0,
            "click": 1.5,
            "favourite": 3.0,
            "add_to_cart": 4.0,
            "remove_from_cart": -2.0,
            "purchase": 8.0,
            "return": -6.0,
        }
    )
    #: Discovery (engine/discovery.py, docs/evaluation.md): the half-life of "popular now" (the cold-start list) and
    #: "discovered now" (items bought for the first time by their buyer: a returning shopper's baseline); 7 days
    #: measured better than 3 on the Online Retail replay.
    discovery_half_life_s: float = 7 * 86_400.0
    #: "Discovered now" counts returning shoppers' first purchases only: a first order (all of it new to its buyer)
    #: is what newcomers start with, a different list (``discovery_first_order_weight``); measured in
    #: docs/evaluation.md (returning shoppers +3 % NDCG@10 on the first 8,000 events).
    discovery_returning_only: bool = True
    #: Item-kNN over the purchase history: this many latest purchases vote, each for this many neighbours
    #: (bounds the read path to anchors x neighbours dict updates).
    discovery_anchors: int = 30
    discovery_neighbours: int = 20
    #: An anchor's vote halves with the age of its purchase (0: every anchor votes 1).
    discovery_anchor_half_life_s: float = 0.0
    #: Links kept per item in the co-purchase graph, and links made per order line (within the order, and from a
    #: first-time purchase to the shopper's latest earlier purchases, with this weight: "who owned X went on to
    #: find Y" is the signal a returning shopper's discoveries follow; 0.5 / 1 / 2 / 4 measured, docs/evaluation.md).
    discovery_max_neighbours: int = 100
    discovery_basket_links: int = 10
    discovery_history_links: int = 10
    discovery_history_weight: float = 2.0
    #: Final score = z(ranker score) + this x z(discovery score), z-scored over the pool; the discovery score is
    #: kNN vote / best vote + user-kNN share + popular-now share (engine/candidates.py). 0.5 / 1 / 2 / 3 measured;
    #: 2 once the discovery score carried the history links at weight 2 (docs/evaluation.md, variants 51-52).
    discovery_weight: float = 2.0
    #: Weight of popular-now / discovered-now inside the discovery score (0.25 / 0.5 / 1.0 / 1.25 / 1.5 measured).
    discovery_popular_weight: float = 1.25
    #: User-kNN (engine/shoppers.py): its weight inside the discovery score (0: off), the most similar shoppers
    #: that vote, and its bounds: buyers remembered per item, items per shopper, shoppers.
    discovery_shopper_weight: float = 0.5
    #: The shopper's latest purchases that find similar shoppers (their buyers are counted).
    discovery_shopper_anchors: int = 20
    discovery_similar_shoppers: int = 30
    discovery_item_buyers: int = 15
    discovery_shopper_items: int = 30
    discovery_max_shoppers: int = 100_000
    #: A shopper's first order (no history): the cold-start list is popular-now + this x "first orders now", the items
    #: in the most first orders lately (what new shoppers start with), both as shares of their best item (0: off).
    discovery_first_order_weight: float = 1.0
    discovery_first_order_half_life_s: float = 14 * 86_400.0
    #: New arrivals: a returning shopper's discovered-now share is multiplied by 1 + this for items first sold within
    #: ``discovery_new_s`` (first-seen times from the catalogue; 0: off).
    discovery_new_weight: float = 0.5
    discovery_new_s: float = 14 * 86_400.0
    #: Lines that stopped selling: a returning shopper's candidate whose last sale is older than
    #: ``discovery_stale_s`` keeps this share of its discovery score (1: off). A kNN neighbour or a similar shopper's
    #: purchase that nobody bought for a week is often a line the shop no longer sells (Online Retail's catalogue
    #: turns over); last sales come from the catalogue (docs/evaluation.md, variants 56-71).
    discovery_stale_factor: float = 0.5
    discovery_stale_s: float = 7 * 86_400.0
    #: Product lines from item names (engine/catalogue.py): the content-kNN's weight inside the discovery score (0:
    #: off), the latest purchases that vote, the name neighbours each votes for, and the most items a token may
    #: carry and still be searched (more: it names a kind of product, not a line; 50 also bounds one search to a
    #: few hundred dict updates). Neighbour lists are computed when a name is first learned, so the read path is
    #: dict look-ups (docs/evaluation.md: +0.002 NDCG@10 on the whole replay).
    catalogue_weight: float = 0.5
    catalogue_anchors: int = 30
    catalogue_neighbours: int = 10
    catalogue_token_items: int = 50
    #: The online ranker learns to rank items new to the shopper (their remembered purchases are neither positives
    #: nor candidates when it learns), as discovery slots serve them.
    learn_discovery: bool = True
