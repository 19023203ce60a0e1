"""Second-price (GSP-style) auction of creatives on expected value per impression.

Pricing convention (also in ``docs/selection.md``):

* A bid is per click (CPC). Its **expected value** per impression is ``EV = pCTR x bid``.
* Bids are ranked by EV, highest first. Ties are broken by higher pCTR, then by ``campaign_id``,
  ``creative_id`` and ``variant_id`` in ascending string order, so the outcome never depends on input order.
* A bid takes part only when ``EV >= reserve_ev`` and ``EV > 0``; with none left there is no winner.
* The winner of slot ``i`` clears at ``clearing_ev = max(EV of the bid ranked i + 1, reserve_ev)`` per
  impression and pays, **only when clicked**, ``price_per_click = clearing_ev / pCTR_winner``. The expected
  payment per impression is then exactly ``clearing_ev``, and the price never exceeds the winner's bid.

Examples
--------
>>> bids = [Bid("k1", "c1", "c1:0", pctr=0.10, bid_per_click=1.0),   # EV 0.10
...         Bid("k2", "c2", "c2:0", pctr=0.05, bid_per_click=1.6)]   # EV 0.08
>>> result = run_auction(bids, reserve_ev=0.02)
>>> result.winner.campaign_id, round(result.clearing_ev, 4), round(result.price_per_click, 4)
('k1', 0.08, 0.8)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Bid:
    """One creative variant's bid: a per-click bid and the predicted click probability of this impression."""

    campaign_id: str
    creative_id: str
    variant_id: str
    pctr: float
    bid_per_click: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.pctr <= 1.0:
            raise ValueError(f"pctr must be in [0, 1], got {self.pctr}")
        if self.bid_per_click < 0.0:
            raise ValueError(f"bid_per_click must be >= 0, got {self.bid_per_click}")

    @property
    def expected_value(self) -> float:
        """Expected revenue per impression if charged the full bid on click."""
        return expected_value(self.pctr, self.bid_per_click)


@dataclass(frozen=True)
class SlotAward:
    """The outcome of one slot: who won, the per-impression clearing value and the per-click price."""

    slot: int
    winner: Bid | None
    clearing_ev: float
    price_per_click: float
    reserve_ev: float

    @property
    def won(self) -> bool:
        return self.winner is not None


def expected_value(pctr: float, bid_per_click: float) -> float:
    """Expected value per impression of a per-click bid.

    >>> expected_value(0.05, 2.0)
    0.1
    """
    return pctr * bid_per_click


def rank_bids(bids: Sequence[Bid]) -> list[Bid]:
    """Bids in auction order: EV descending, then pCTR descending, then ids ascending (deterministic)."""
    return sorted(bids, key=lambda b: (-b.expected_value, -b.pctr, b.campaign_id, b.creative_id, b.variant_id))


def run_gsp(bids: Sequence[Bid], n_slots: int = 1, reserve_ev: float = 0.0) -> list[SlotAward]:
    """Generalised second-price auction over ``n_slots`` ordered slots.

    Each campaign wins at most one slot (its best-ranked bid), so an advertiser never competes with itself
    and never sets its own price. Slots without an eligible bid are returned with ``winner=None``.

    >>> awards = run_gsp([Bid("a", "x", "x0", 0.1, 1.0), Bid("b", "y", "y0", 0.1, 0.5)], n_slots=2)
    >>> [(a.winner.campaign_id, round(a.price_per_click, 2)) for a in awards]
    [('a', 0.5), ('b', 0.0)]
    """
    if n_slots < 1:
        raise ValueError("n_slots must be >= 1")
    if reserve_ev < 0.0:
        raise ValueError("reserve_ev must be >= 0")
    ranked = [b for b in rank_bids(bids) if b.expected_value > 0.0 and b.expected_value >= reserve_ev]
    eligible = _best_per_campaign(ranked)
    awards = []
    for slot in range(n_slots):
        if slot >= len(eligible):
            awards.append(SlotAward(slot, None, 0.0, 0.0, reserve_ev))
            continue
        runner_up_ev = eligible[slot + 1].expected_value if slot + 1 < len(eligible) else 0.0
        awards.append(_award(slot, eligible[slot], max(runner_up_ev, reserve_ev), reserve_ev))
    return awards


def run_auction(bids: Sequence[Bid], reserve_ev: float = 0.0) -> SlotAward:
    """Single-slot second-price auction; see the module docstring for the pricing convention."""
    return run_gsp(bids, n_slots=1, reserve_ev=reserve_ev)[0]


def _best_per_campaign(ranked_bids) -> list[Bid]:
    seen: set[str] = set()
    best = []
    for bid in ranked_bids:
        if bid.campaign_id not in seen:
            seen.add(bid.campaign_id)
            best.append(bid)
    return best


def _award(slot: int, winner: Bid, clearing_ev: float, reserve_ev: float) -> SlotAward:
    # clearing_ev <= winner EV by construction, so the per-click price is at most the bid; min() guards rounding.
    price = min(clearing_ev / winner.pctr, winner.bid_per_click)
    return SlotAward(slot, winner, clearing_ev, price, reserve_ev)
