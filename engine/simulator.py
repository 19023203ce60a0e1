"""A seeded shopper simulator: SIMULATED events for machines without the real data, and a closed loop for evaluation.

Nothing here is real behaviour. The model (equations in ``docs/data.md``):

- user ``u`` has latent category preferences ``theta_u ~ Dirichlet(alpha * 1_C)`` and an activity weight
  ``a_u ~ LogNormal(0, 1)``;
- item ``i`` has a category ``c_i``, a within-category popularity ``w_i ∝ rank_i ** -zipf_exponent``, a quality
  ``q_i ~ Beta(2, 2)`` and a price ``log p_i ~ N(mu_{c_i}, 0.4)``;
- the attraction of ``i`` for ``u`` is ``A(u, i) = sigmoid(b0 + b1 * log(C * theta_u[c_i]) + b2 * (q_i - 0.5))``;
- organic sessions arrive as a Poisson process; a session views items (category ~ theta_u, item ~ popularity),
  adds a viewed item to the cart with probability ``cart_rate * A(u, i)``, buys each cart item with probability
  ``buy_rate``; an order is returned with probability ``return_rate`` a few days later;
- a shown slate (:meth:`ShopperSimulator.show`) is examined position by position with probability
  ``k ** -position_decay`` (the examination hypothesis) and an examined item is clicked with probability
  ``A(u, i)``; a clicked item is carted, then bought, with the same funnel rates.

So a recommender that learns users' category preferences earns a higher click-through rate than one that does not.

>>> sim = ShopperSimulator(seed=1, n_users=50, n_items=200, n_categories=5)
>>> [e.kind for e in sim.show("sim-u00001", ["sim-i00001"], "rec-1", now=1.7e9)][0]
'impression'
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson

from kairos.engine.datasets import CatalogItem, load_myntra_products
from kairos.schemas.events import MAX_EVENT_BYTES, ClickEvent, ImpressionEvent, PurchaseEvent, ShownItem

Event = ClickEvent | PurchaseEvent | ImpressionEvent

_ADJECTIVES = (
    "Classic Vintage Cosy Bold Minimal Rustic Urban Linen Handmade Organic Bright Soft Slim Retro Essential Everyday"
).split()
_COLOURS = "Teal Ivory Coral Navy Sage Ochre Plum Charcoal Blush Mustard Olive Rose Slate Sand".split()
_NOUNS = (
    "Mug,Candle,Scarf,Lamp,Notebook,Tote Bag,Teapot,Cushion,Photo Frame,Wall Clock,Vase,Apron,Backpack,Sneakers,"
    "Jacket,Dress,Watch,Wallet,Bowl,Blanket,Umbrella,Sunglasses,Water Bottle,Plant Pot,Doormat,Jigsaw,Kite,Hat,"
    "Gloves,Socks"
).split(",")


@dataclass(frozen=True)
class SimulatorParams:
    """The simulator's knobs; with the defaults random slates of 10 get a CTR of about 3-4 % per shown item."""

    preference_concentration: float = 0.3  # alpha: smaller = users focus on fewer categories
    zipf_exponent: float = 1.1
    sessions_per_user_per_day: float = 2.0
    mean_session_views: float = 5.0
    mean_view_gap_s: float = 40.0
    b0: float = -2.0  # attraction intercept: sigmoid(-2) = 0.12 for a neutral item of a neutral category
    b1: float = 1.0  # weight of log(C * theta_u[c]): preference
    b2: float = 2.0  # weight of quality
    position_decay: float = 0.8  # examination probability at position k is k ** -position_decay
    cart_rate: float = 0.25  # organic: P(cart | view) = cart_rate * A(u, i)
    slate_cart_rate: float = 0.3  # P(cart | click on a shown item)
    buy_rate: float = 0.5  # P(buy | in cart)
    return_rate: float = 0.03  # P(an order is returned)
    mean_return_delay_s: float = 3 * 86_400.0


class ShopperSimulator:
    """Simulated users and items, an organic event stream and shoppers who respond to recommendations.

    Ids: users ``sim-u00001``, items ``sim-i00001``, categories ``sim-c01`` (or ``sim-<noun>`` with Myntra names).
    Given the same arguments, :meth:`events` yields the same stream and a given sequence of :meth:`show` calls the
    same responses.
    """

    def __init__(
        self,
        seed: int = 0,
        n_users: int = 1_000,
        n_items: int = 2_000,
        n_categories: int = 20,
        start_ts: float = 1_700_000_000.0,
        data_dir: Path | str | None = None,
        params: SimulatorParams | None = None,
    ) -> None:
        if n_users < 1 or n_items < n_categories or n_categories < 1:
            raise ValueError("need n_users >= 1 and n_items >= n_categories >= 1")
        self.seed, self.start_ts = seed, float(start_ts)
        self.params = params or SimulatorParams()
        rng = np.random.default_rng([seed, 0])
        self.users = [f"sim-u{n:05d}" for n in range(1, n_users + 1)]
        self.items = [f"sim-i{n:05d}" for n in range(1, n_items + 1)]
        self._user_index = {u: n for n, u in enumerate(self.users)}
        self._item_index = {i: n for n, i in enumerate(self.items)}
        self.preferences = rng.dirichlet(np.full(n_categories, self.params.preference_concentration), size=n_users)
        self.activity = rng.lognormal(0.0, 1.0, size=n_users)
        self.item_category = rng.permutation(np.arange(n_items) % n_categories)
        self.quality = rng.beta(2.0, 2.0, size=n_items)
        self._popularity = self._within_category_popularity(rng)
        self.catalog = self._make_catalog(rng, data_dir)
        self._show_rng = np.random.default_rng([seed, 2])

    # ---- latent model -------------------------------------------------------------------------------------------

    @property
    def n_categories(self) -> int:
        return self.preferences.shape[1]

    def true_affinity(self, user_id: str, item_id: str) -> float:
        """A(u, i): the probability that ``user_id`` clicks ``item_id`` when it is examined (position 1)."""
        return float(self._attraction(self._user_index[user_id], np.array([self._item_index[item_id]]))[0])

    def _attraction(self, user: int, items: np.ndarray) -> np.ndarray:
        p = self.params
        preference = self.preferences[user, self.item_category[items]] * self.n_categories
        logit = p.b0 + p.b1 * np.log(np.maximum(preference, 1e-12)) + p.b2 * (self.quality[items] - 0.5)
        return 1.0 / (1.0 + np.exp(-logit))

    def _within_category_popularity(self, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per category: (item indices, cumulative Zipf weights over a random popularity ranking)."""
        by_category = []
        for category in range(self.n_categories):
            members = rng.permutation(np.flatnonzero(self.item_category == category))
            weights = np.arange(1, len(members) + 1, dtype=float) ** -self.params.zipf_exponent
            by_category.append((members, np.cumsum(weights / weights.sum())))
        return by_category

    def _make_catalog(self, rng: np.random.Generator, data_dir: Path | str | None) -> dict[str, CatalogItem]:
        log_mean = rng.uniform(math.log(3.0), math.log(60.0), size=self.n_categories)
        prices = np.exp(rng.normal(log_mean[self.item_category], 0.4))
        names, categories = _myntra_names(rng, self.item_category, data_dir) if data_dir else (None, None)
        if names is None:
            names, categories = _word_list_names(rng, self.item_category)
        self.category_ids: list[str] = categories  # latent category k is category_ids[k]
        return {
            item: CatalogItem(item, names[n], categories[self.item_category[n]], round(float(prices[n]), 2), "GBP")
            for n, item in enumerate(self.items)
        }

    def category_of(self, item_id: str) -> str:
        return self.catalog[item_id].category_id

    # ---- organic stream ------------------------------------------------------------------------------------------

    def events(self, n: int) -> Iterator[Event]:
        """The first ``n`` events of the organic stream, in time order (the same ones on every call)."""
        rng = np.random.default_rng([self.seed, 1])
        session_rate = len(self.users) * self.params.sessions_per_user_per_day / 86_400.0
        user_weights = np.cumsum(self.activity / self.activity.sum())
        pending: list[tuple[float, int, Event]] = []  # heap of (ts, sequence, event) not yet released
        clock, sequence, emitted = self.start_ts, 0, 0
        while emitted < n:
            clock += rng.exponential(1.0 / session_rate)
            while pending and pending[0][0] <= clock and emitted < n:
                yield heapq.heappop(pending)[2]
                emitted += 1
            user = int(np.searchsorted(user_weights, rng.random(), side="right").clip(max=len(self.users) - 1))
            for event in self._session(rng, user, clock, sequence):
                heapq.heappush(pending, (event.ts, sequence, event))
                sequence += 1

    def _session(self, rng: np.random.Generator, user: int, start: float, number: int) -> list[Event]:
        p, user_id = self.params, self.users[user]
        session_id, ts, events, cart = f"sim-s{number}", start, [], []
        for view in range(rng.geometric(1.0 / p.mean_session_views)):  # >= 1 view, mean mean_session_views
            item = self._pick_item(rng, user)
            events.append(self._click(user_id, item, "view", ts, f"{session_id}-v{view}", session_id))
            if rng.random() < p.cart_rate * self._attraction(user, np.array([item]))[0]:
                cart.append(item)
                events.append(self._click(user_id, item, "add_to_cart", ts + 5, f"{session_id}-c{view}", session_id))
            ts += rng.exponential(p.mean_view_gap_s)
        bought = [item for item in cart if rng.random() < p.buy_rate]
        if bought:
            order = self._order(user_id, bought, ts + 30, f"{session_id}-o", rng)
            events.append(order)
            if rng.random() < p.return_rate:
                events.append(self._return(order, ts + 30 + rng.exponential(p.mean_return_delay_s)))
        return events

    def _pick_item(self, rng: np.random.Generator, user: int) -> int:
        category = int(rng.choice(self.n_categories, p=self.preferences[user]))
        members, cumulative = self._popularity[category]
        return int(members[min(np.searchsorted(cumulative, rng.random(), side="right"), len(members) - 1)])

    # ---- event factories -----------------------------------------------------------------------------------------

    def _click(self, user_id, item: int, action, ts, event_id, session_id=None, rec_id=None, position=None):
        item_id = self.items[item]
        return ClickEvent(
            event_id=event_id, user_id=user_id, item_id=item_id, action=action, ts=ts,
            category_id=self.catalog[item_id].category_id, session_id=session_id, rec_id=rec_id, position=position,
        )

    def _order(self, user_id, items: Sequence[int], ts, event_id, rng, rec_id=None) -> PurchaseEvent:
        lines = [
            {
                "item_id": self.items[item],
                "quantity": int(rng.integers(1, 3)),
                "unit_price": Decimal(f"{self.catalog[self.items[item]].price:.2f}"),
                "currency": "GBP",
                "category_id": self.catalog[self.items[item]].category_id,
                "name": self.catalog[self.items[item]].name,
            }
            for item in items
        ]
        return PurchaseEvent.model_validate(
            {"event_id": event_id, "user_id": user_id, "ts": ts, "order_id": event_id, "lines": lines, "rec_id": rec_id}
        )

    def _return(self, order: PurchaseEvent, ts: float) -> PurchaseEvent:
        line = order.lines[0]
        return PurchaseEvent(
            event_id=f"{order.event_id}-r", user_id=order.user_id, ts=ts, order_id=order.order_id, is_return=True,
            lines=[line.model_copy(update={"quantity": -line.quantity})],
        )

    # ---- closed loop ---------------------------------------------------------------------------------------------

    def show(self, user_id: str, item_ids: Sequence[str], rec_id: str, now: float) -> list[Event]:
        """Show ``item_ids`` (position 1 first) to ``user_id``: the impression, then what the shopper does with it.

        Items unknown to the simulator are shown but never clicked. Clicks, carts and purchases carry ``rec_id``
        and the position, a second or more after ``now``; the list is in time order. Event ids are derived from
        ``rec_id``, so give every call its own.
        """
        p, rng, user = self.params, self._show_rng, self._user_index[user_id]
        shown = list(dict.fromkeys(item_ids))  # a slate shows an item once
        events: list[Event] = [
            ImpressionEvent(
                event_id=f"{rec_id}-imp", user_id=user_id, ts=now, rec_id=rec_id,
                items=[ShownItem(item_id=item, position=k) for k, item in enumerate(shown, start=1)],
            )
        ]
        for k, item_id in enumerate(shown, start=1):
            item = self._item_index.get(item_id)
            if item is None or rng.random() >= k ** -p.position_decay * self._attraction(user, np.array([item]))[0]:
                continue
            ts = now + 1.0 + k
            events.append(self._click(user_id, item, "click", ts, f"{rec_id}-click-{k}", rec_id=rec_id, position=k))
            if rng.random() < p.slate_cart_rate:
                events.append(
                    self._click(user_id, item, "add_to_cart", ts + 5, f"{rec_id}-cart-{k}", rec_id=rec_id, position=k)
                )
                if rng.random() < p.buy_rate:
                    events.append(self._order(user_id, [item], ts + 30, f"{rec_id}-buy-{k}", rng, rec_id=rec_id))
        return sorted(events, key=lambda event: event.ts)  # stable: the impression stays first


def _word_list_names(rng: np.random.Generator, item_category: np.ndarray) -> tuple[list[str], list[str]]:
    n_categories = int(item_category.max()) + 1
    # more categories than nouns: "Mug", ..., "Mug 2", ...
    nouns = [_NOUNS[c % len(_NOUNS)] + (f" {c // len(_NOUNS) + 1}" if c >= len(_NOUNS) else "")
             for c in range(n_categories)]
    names = [
        f"{rng.choice(_ADJECTIVES)} {rng.choice(_COLOURS)} {nouns[category]}" for category in item_category.tolist()
    ]
    return names, [f"sim-c{c + 1:02d}" for c in range(n_categories)]


def _myntra_names(rng, item_category: np.ndarray, data_dir) -> tuple[list[str] | None, list[str] | None]:
    """Real Myntra product names for simulated items: simulated category k takes the k-th most common Myntra noun."""
    try:
        products = load_myntra_products(data_dir)
    except (FileNotFoundError, OSError):
        return None, None
    n_categories = int(item_category.max()) + 1
    top = products["category"].value_counts().index[:n_categories].tolist()
    if len(top) < n_categories:
        return None, None
    pools = [products.loc[products["category"] == category, "name"].tolist() for category in top]
    names = [str(rng.choice(pools[category])) for category in item_category.tolist()]
    return names, [f"sim-{category.removeprefix('my-')}" for category in top]


# --------------------------------------------------------------------------------------------------------------------
# Malformed payloads for the dead-letter path

MALFORMED_FAULTS = (
    "not_json", "not_an_object", "missing_ids", "negative_price", "absurd_timestamp", "wrong_types", "oversize",
    "unknown_kind",
)


def malformed_payload(fault: str, rng: np.random.Generator) -> bytes:
    """One raw Kafka value that must be dead-lettered, with the given fault (one of :data:`MALFORMED_FAULTS`)."""
    n = int(rng.integers(1_000_000))
    click = {"kind": "click", "event_id": f"bad-{n}", "user_id": f"sim-u{n % 997:05d}", "item_id": "sim-i00001",
             "action": "view", "ts": 1_700_000_000.0}
    line = {"item_id": "sim-i00001", "quantity": 1, "unit_price": "9.99"}
    purchase = {"kind": "purchase", "event_id": f"bad-{n}", "user_id": "sim-u00001", "ts": 1_700_000_000.0,
                "order_id": f"o-{n}", "lines": [line]}
    builders = {
        "not_json": lambda: b'{"kind": "click", "event_id": "bad-' + str(n).encode() + b'", "user_id": ',
        "not_an_object": lambda: orjson.dumps([click]),
        "missing_ids": lambda: orjson.dumps({k: v for k, v in click.items() if k not in ("user_id", "event_id")}),
        "negative_price": lambda: orjson.dumps(purchase | {"lines": [line | {"unit_price": "-4.50"}]}),
        "absurd_timestamp": lambda: orjson.dumps(click | {"ts": 1_700_000_000_000.0}),  # milliseconds
        "wrong_types": lambda: orjson.dumps(purchase | {"lines": [line | {"quantity": "lots"}], "ts": "yesterday"}),
        "oversize": lambda: orjson.dumps(click | {"session_id": "x" * (MAX_EVENT_BYTES + 10)}),
        "unknown_kind": lambda: orjson.dumps(click | {"kind": "refund"}),
    }
    if fault not in builders:
        raise ValueError(f"unknown fault {fault!r}: expected one of {MALFORMED_FAULTS}")
    return builders[fault]()


def malformed_payloads(rng: np.random.Generator | int, n: int) -> list[bytes]:
    """``n`` malformed payloads cycling through every fault in a random order (all faults appear once n >= 8)."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    order = rng.permutation(len(MALFORMED_FAULTS))
    return [malformed_payload(MALFORMED_FAULTS[order[k % len(order)]], rng) for k in range(n)]


def with_malformed(events: Iterable[Event], fraction: float, seed: int = 0) -> Iterator[Event | bytes]:
    """The events with a malformed payload (bytes) slipped in after each one with probability ``fraction``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError("fraction must be in [0, 1)")
    rng = np.random.default_rng([seed, 3])
    order, k = rng.permutation(len(MALFORMED_FAULTS)), 0
    for event in events:
        yield event
        if fraction and rng.random() < fraction:
            yield malformed_payload(MALFORMED_FAULTS[order[k % len(order)]], rng)
            k += 1
