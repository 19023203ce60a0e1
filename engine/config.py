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
    #: How many recent items anchor the co-visit candidate search.
    candidate_anchors: int = 20
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
    #: Discovery (engine/discovery.py, docs/evaluation.md): the half-life of "popular now" (cold-start list and
    #: every shopper's baseline), measured best of 1 / 3 / 7 / 14 days on the Online Retail replay.
    discovery_half_life_s: float = 3 * 86_400.0
    #: Item-kNN over the purchase history: this many latest purchases vote, each for this many neighbours.
    discovery_anchors: int = 30
    discovery_neighbours: int = 30
    #: Links kept per item in the co-purchase graph, and links made per order line (within the order, and from a
    #: first-time purchase to the shopper's latest earlier purchases, with this weight).
    discovery_max_neighbours: int = 100
    discovery_basket_links: int = 15
    discovery_history_links: int = 15
    discovery_history_weight: float = 0.5
    #: Final score = ranker score + this x discovery score (kNN vote / best vote + popular-now / best popular-now).
    discovery_weight: float = 1.0
    #: Weight of popular-now inside the discovery score.
    discovery_popular_weight: float = 0.5
