"""Per-user online interest state, updated one event at a time.

``UserInterest`` is what the engine knows about one shopper: time-decayed affinities to categories and items,
the most recent items, what they bought (excluded from recommendations for a while), a few running statistics
(River) and the ids of the last events applied (so a redelivered event is not applied twice). Everything is bounded.
"""

from __future__ import annotations

from collections import deque
from sys import intern
from dataclasses import dataclass, field

from river import stats

from kairos.engine.config import EngineConfig
from kairos.engine.decay import DecayedScores
from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent

#: Redelivered events arrive within a few batches of the original; this many ids catch them.
_SEEN_EVENT_IDS = 64


@dataclass(frozen=True, slots=True)
class Interaction:
    """One (user, item) signal extracted from an event: what the interest model and the global model learn from."""

    item_id: str
    category_id: str | None
    action: str
    weight: float
    ts: float
    price: float | None = None
    name: str | None = None


def interactions_of(event: ClickEvent | PurchaseEvent, config: EngineConfig) -> list[Interaction]:
    """Split an event into weighted item interactions (an order has one per line). Item and category ids are
    interned: the same id is a key in many maps (user affinities, popularity, co-occurrence rows), and one string
    object per id instead of one per event is most of the memory those maps take."""
    weights = config.action_weights
    if isinstance(event, ClickEvent):
        action = event.action.value
        return [Interaction(intern(event.item_id), _intern(event.category_id), action, weights[action], event.ts)]
    action = "return" if event.is_return else "purchase"
    return [
        Interaction(
            intern(line.item_id), _intern(line.category_id), action, weights[action], event.ts, float(line.unit_price), line.name
        )
        for line in event.lines
    ]


def _intern(value: str | None) -> str | None:
    return None if value is None else intern(value)


@dataclass(slots=True)
class UserInterest:
    user_id: str
    config: EngineConfig
    categories: DecayedScores
    items: DecayedScores
    recent: deque[str]
    #: item -> time of the last purchase (returns remove the entry).
    purchased: dict[str, float]
    seen_event_ids: deque[str]
    #: The record each of ``seen_event_ids`` was applied from, as one integer (the caller's encoding of topic and
    #: offset; -1: not known), so a replay after a restart applies the copy that was applied live and skips the
    #: others (agents/pipeline.py ``record_source``).
    seen_sources: deque[int]
    price_mean: stats.Mean = field(default_factory=stats.Mean)
    event_count: int = 0
    purchase_count: int = 0
    last_ts: float = 0.0
    #: Number of events applied: the state version carried by recommendations.
    version: int = 0

    @classmethod
    def new(cls, user_id: str, config: EngineConfig) -> "UserInterest":
        return cls(
            user_id=user_id,
            config=config,
            categories=DecayedScores(config.half_life_s, config.max_affinities),
            items=DecayedScores(config.half_life_s, config.max_affinities),
            recent=deque(maxlen=config.max_recent_items),
            purchased={},
            seen_event_ids=deque(maxlen=_SEEN_EVENT_IDS),
            seen_sources=deque(maxlen=_SEEN_EVENT_IDS),
        )

    def has_applied(self, event_id: str) -> bool:
        return event_id in self.seen_event_ids

    def applied_source(self, event_id: str) -> int | None:
        """The record ``event_id`` was applied from (as given to :meth:`apply`): None when it is not among the last
        ids applied, -1 when it was applied without one (or stored before sources were)."""
        ids = self.seen_event_ids
        if event_id not in ids:
            return None
        return self.seen_sources[ids.index(event_id)]

    def apply(self, event: ClickEvent | PurchaseEvent | ImpressionEvent, source: int = -1) -> list[Interaction]:
        """Learn from one event; returns the interactions it contained (empty for a duplicate or an impression).
        ``source``: the record it came from, kept with its id (:meth:`applied_source`).

        >>> from kairos.schemas.events import ClickEvent
        >>> user = UserInterest.new("u1", EngineConfig())
        >>> _ = user.apply(ClickEvent(event_id="e1", user_id="u1", item_id="i1", category_id="c", action="view", ts=1.7e9))
        >>> round(user.categories.get("c", now=1.7e9), 3), list(user.recent)
        (1.0, ['i1'])
        """
        if self.has_applied(event.event_id):
            return []
        self.seen_event_ids.append(event.event_id)
        self.seen_sources.append(source)
        self.version += 1
        if isinstance(event, ImpressionEvent):
            return []
        found = interactions_of(event, self.config)
        for interaction in found:
            self._learn(interaction)
        self.event_count += 1
        self.last_ts = max(self.last_ts, event.ts)
        return found

    def _learn(self, it: Interaction) -> None:
        self.items.add(it.item_id, it.weight, it.ts)
        if it.category_id is not None:
            self.categories.add(it.category_id, it.weight, it.ts)
        if it.action == "purchase":
            self._record_purchase(it)
        elif it.action == "return":
            self.purchased.pop(it.item_id, None)
        if it.weight > 0 and (not self.recent or self.recent[-1] != it.item_id):
            if it.item_id in self.recent:
                self.recent.remove(it.item_id)
            self.recent.append(it.item_id)

    def _record_purchase(self, it: Interaction) -> None:
        self.purchased[it.item_id] = it.ts
        self.purchase_count += 1
        if it.price is not None:
            self.price_mean.update(it.price)
        if len(self.purchased) > self.config.max_purchased:
            oldest = min(self.purchased, key=self.purchased.__getitem__)
            del self.purchased[oldest]

    def excluded_items(self, now: float) -> set[str]:
        """Items bought within the exclusion window."""
        window = self.config.purchase_exclusion_s
        return {item for item, t in self.purchased.items() if now - t < window}

    def is_idle(self, now: float) -> bool:
        return now - self.last_ts > self.config.idle_expiry_s

    # --- persistence: a compact JSON-friendly form (see docs/state.md) ---

    def to_state(self) -> dict:
        return {
            "c": self.categories.to_state(),
            "i": self.items.to_state(),
            "r": list(self.recent),
            "p": self.purchased,
            "s": list(self.seen_event_ids),
            "so": list(self.seen_sources),
            "pm": [self.price_mean.n, self.price_mean.get()],
            "n": [self.event_count, self.purchase_count, self.version],
            "t": self.last_ts,
        }

    @classmethod
    def from_state(cls, user_id: str, data: dict, config: EngineConfig) -> "UserInterest":
        user = cls.new(user_id, config)
        user.categories = DecayedScores(config.half_life_s, config.max_affinities, data["c"])
        user.items = DecayedScores(config.half_life_s, config.max_affinities, data["i"])
        user.recent.extend(data["r"])
        user.purchased = data["p"]
        user.seen_event_ids.extend(data["s"])
        user.seen_sources.extend(data.get("so") or [-1] * len(data["s"]))  # a state stored before sources were
        n, mean = data["pm"]
        user.price_mean.n, user.price_mean._mean = n, mean
        user.event_count, user.purchase_count, user.version = data["n"]
        user.last_ts = data["t"]
        return user
