"""Ad decisions per request: variant choice (Thompson sampling), pCTR, pacing, a second-price auction.

    AdRequest -> campaigns allowed by pacing -> per campaign: shortlist creatives -> Thompson-pick a variant
              -> pCTR (variant posterior mean, shifted by the feedback corrector for this creative and segment)
              -> EV = pCTR x bid -> second-price auction with a reserve -> ScoredCreative (+ expected spend)

pCTR comes from the variant's Beta posterior (Upworthy's real CTRs as priors, updated by clicks) corrected
online per segment by the same River-optimised corrector that corrects product scores, keyed ``ad:<creative>``.
Budget pacing counts expected spend (clearing price x pCTR) at decision time: it needs no click to arrive before
the next decision is paced. Each partition's worker paces ``1 / partitions`` of every campaign's daily budget.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from kairos.engine.auction import Bid, run_auction
from kairos.engine.bandit import ThompsonSampler
from kairos.engine.copywriting import CopyBook, CopyRequest
from kairos.engine.creatives import Creative, Inventory, add_generated_variant, variant_sampler
from kairos.engine.feedback import FeedbackCorrector, sigmoid
from kairos.engine.pacing import BudgetPacer
from kairos.engine.rules import ImpressionHistory

#: Creatives each campaign bids with per request (its best by prior CTR): bounds the work per request.
SHORTLIST = 4
#: Monte Carlo draws for the logged propensity of the chosen variant.
PROPENSITY_DRAWS = 400
#: Served requests held open for a click at most (the oldest expire early beyond it): bounds memory and checkpoint.
MAX_OPEN_REQUESTS = 100_000


@dataclass(frozen=True, slots=True)
class AdDecision:
    request_id: str
    user_id: str
    campaign_id: str
    creative_id: str
    variant_id: str
    headline: str
    pctr: float
    bid: float
    expected_value: float
    clearing_price: float
    reserve: float
    won: bool
    propensity: float
    reasons: tuple[str, ...]


def variant_request(creative: Creative) -> CopyRequest:
    """The copy request for a generated variant of ``creative``: a rewrite of its best headline by prior CTR."""
    best = max(creative.variants, key=lambda v: v.prior_ctr)
    return CopyRequest(creative.creative_id, "ad", best.headline, kind="ad")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class AdSelector:
    def __init__(
        self,
        inventory: Inventory,
        *,
        reserve_ev: float = 0.002,
        corrector: FeedbackCorrector | None = None,
        budget_share: float = 1.0,
        creative_cap: int = 3,
        cap_window_s: float = 86_400.0,
        copybook: CopyBook | None = None,
        seed: int = 0,
    ):
        self.inventory = inventory
        self.reserve_ev = reserve_ev
        self.corrector = corrector or FeedbackCorrector()
        budgets = {c.campaign_id: c.daily_budget * budget_share for c in inventory.campaigns.values()}
        self.pacer = BudgetPacer(budgets, seed=seed)
        self.samplers: dict[str, ThompsonSampler] = {}
        self.seed = seed
        self.shortlists = {cid: self._shortlist(cid) for cid in inventory.campaigns}
        self.no_fill = 0
        #: Frequency cap per user x creative: a served creative counts as one impression for its user.
        self.creative_cap = creative_cap
        self.creative_views = ImpressionHistory(cap_window_s)
        #: Shared with the copy feed: generated headline variants arrive there and become arms here.
        self.copybook = copybook
        self.generated_headlines: dict[str, str] = {}
        #: request id -> (creative, variant, segment, served at): open until clicked or the window passes.
        self.served: OrderedDict[str, tuple[str, str, str, float]] = OrderedDict()
        self.attribution_window_s = 1800.0

    def _shortlist(self, campaign_id: str) -> list[Creative]:
        creatives = self.inventory.creatives_of(campaign_id)
        best = sorted(creatives, key=lambda c: max(v.prior_ctr for v in c.variants), reverse=True)
        return best[:SHORTLIST]

    def _sampler(self, creative: Creative) -> ThompsonSampler:
        sampler = self.samplers.get(creative.creative_id)
        if sampler is None:
            sampler = self.samplers[creative.creative_id] = variant_sampler(creative, seed=self.seed + len(self.samplers))
        return sampler

    def variant_ids(self, creative: Creative) -> list[str]:
        """The creative's variants: its own, plus generated headlines (new arms with a weak prior)."""
        ids = [v.variant_id for v in creative.variants]
        generated = self.copybook.ad_variants.get(creative.creative_id) if self.copybook is not None else None
        if generated:
            sampler = self._sampler(creative)
            for variant_id, text in generated.items():
                if variant_id not in self.generated_headlines:
                    add_generated_variant(sampler, creative, variant_id)
                    self.generated_headlines[variant_id] = text
                ids.append(variant_id)
        return ids

    def headline(self, creative: Creative, variant_id: str) -> str:
        text = self.generated_headlines.get(variant_id)
        return text if text is not None else next(v.headline for v in creative.variants if v.variant_id == variant_id)

    def _request_variant(self, creative: Creative) -> None:
        """Ask the copy agent for a generated headline once per creative that wins (a new arm to explore)."""
        if self.copybook is None or creative.creative_id in self.copybook.ad_variants:
            return
        self.copybook.request(variant_request(creative))

    def pctr(self, creative_id: str, variant_id: str, segment: str, sampler: ThompsonSampler) -> float:
        base = sampler.stats(variant_id).posterior_mean
        return sigmoid(_logit(base) + self.corrector._shift(f"ad:{creative_id}", segment))

    def decide(self, request_id: str, user_id: str, segment: str, now: float) -> AdDecision | None:
        bids, headlines = [], {}
        for campaign_id, shortlist in self.shortlists.items():
            if not self.pacer.should_participate(campaign_id, now):
                continue
            bid_per_click = self.inventory.campaigns[campaign_id].bid_per_click
            for creative in shortlist:
                if self.creative_views.count(user_id, creative.creative_id, now) >= self.creative_cap:
                    continue
                sampler = self._sampler(creative)
                variant_id = sampler.choose(self.variant_ids(creative))
                pctr = self.pctr(creative.creative_id, variant_id, segment, sampler)
                bids.append(Bid(campaign_id, creative.creative_id, variant_id, pctr, bid_per_click))
                headlines[variant_id] = self.headline(creative, variant_id)
        award = run_auction(bids, reserve_ev=self.reserve_ev)
        if not award.won:
            self.no_fill += 1
            return None
        winner = award.winner
        self.pacer.record_spend(winner.campaign_id, award.price_per_click * winner.pctr, now)
        creative = self.inventory.creatives[winner.creative_id]
        self._request_variant(creative)
        variants = self.variant_ids(creative)
        probabilities = self._sampler(creative).choice_probabilities(variants, draws=PROPENSITY_DRAWS)
        propensity = float(probabilities[variants.index(winner.variant_id)])
        self.served[request_id] = (winner.creative_id, winner.variant_id, segment, now)
        self.creative_views.record(user_id, winner.creative_id, now)
        self.expire(now)
        return AdDecision(
            request_id, user_id, winner.campaign_id, winner.creative_id, winner.variant_id, headlines[winner.variant_id],
            winner.pctr, winner.bid_per_click, winner.expected_value, award.price_per_click, self.reserve_ev, True,
            max(propensity, 1.0 / PROPENSITY_DRAWS), (f"auction:won_of_{len(bids)}", f"segment:{segment}"),
        )  # fmt: skip

    def record_click(self, creative_id: str, variant_id: str, clicked: bool) -> None:
        """Feedback on a served creative: updates the variant's posterior (its CTR is tracked per variant)."""
        creative = self.inventory.creatives.get(creative_id)
        if creative is not None:
            self._sampler(creative).update(variant_id, clicked)

    def on_click(self, request_id: str, now: float) -> bool:
        """A click carrying a served request id: a positive label for that variant and creative.

        A click later than the attribution window is the unclicked impression :meth:`expire` would have booked:
        each served request gets one label, whatever the order in which decisions and clicks (or, after a
        restart, a replay of clicks) reach this selector.
        """
        served = self.served.pop(request_id, None)
        if served is None:
            return False
        creative_id, variant_id, _, served_at = served
        clicked = now - served_at <= self.attribution_window_s
        self.record_click(creative_id, variant_id, clicked)
        return clicked

    def expire(self, now: float) -> None:
        """Served creatives not clicked within the attribution window count as impressions without a click."""
        while self.served:
            request_id, (creative_id, variant_id, _, served_at) = next(iter(self.served.items()))
            if now - served_at <= self.attribution_window_s and len(self.served) < MAX_OPEN_REQUESTS:
                break
            del self.served[request_id]
            self.record_click(creative_id, variant_id, False)

    # --- persistence (inside the partition checkpoint's "selection" entry, see Selector.to_state) ---

    def to_state(self) -> dict:
        """What the ad path learned and booked, JSON-able: arm posteriors, pacing spend, frequency-cap views, the
        requests still open for a click, the generated headlines. Inventory, budgets and windows are configuration.
        Bounded as in memory: samplers by the shortlisted creatives, views by one cap window, served by
        ``MAX_OPEN_REQUESTS``."""
        return {
            "samplers": {creative_id: sampler.to_state() for creative_id, sampler in self.samplers.items()},
            "pacer": self.pacer.to_state(),
            "views": self.creative_views.to_state(),
            "served": [[request_id, *entry] for request_id, entry in self.served.items()],
            "generated": dict(self.generated_headlines),
            "no_fill": self.no_fill,
        }

    def load_state(self, data: dict) -> None:
        """Restore :meth:`to_state`'s output. Creatives no longer in the inventory are dropped with their arms."""
        for creative_id, sampler_state in data["samplers"].items():
            creative = self.inventory.creatives.get(creative_id)
            if creative is not None:
                self._sampler(creative).load_state(sampler_state)
        self.pacer.load_state(data["pacer"])
        self.creative_views.load_state(data["views"])
        self.served = OrderedDict(
            (request_id, (creative_id, variant_id, segment, float(served_at)))
            for request_id, creative_id, variant_id, segment, served_at in data["served"]
        )
        self.generated_headlines = dict(data["generated"])
        self.no_fill = int(data["no_fill"])
