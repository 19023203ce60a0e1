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
    #: How many recent items feed the co-occurrence model and the candidate search.
    cooccurrence_window: int = 5
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
