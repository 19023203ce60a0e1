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
