"""Per-event selection: what to show a shopper, learning from what they did with what was shown.

    candidates + ranker logits (Recommender.score_candidates)
      -> feedback correction   River-optimised shift per item / segment, learned from impression-click joins
      -> business rules        hidden / out-of-stock, frequency cap per user x item, category cap (diversity)
      -> exploration           Thompson-sampled slate over the corrected scores and the correction's uncertainty,
                               with an epsilon floor of uniform slates; position propensities logged for
                               off-policy evaluation
      -> Selection             ranked items with scores, reasons and propensities

The write path (``observe``) feeds every event to the recommender (interest state, global model, online ranker)
and impressions / clicks / purchases to the feedback join, whose labelled examples train the corrector at once:
a click on X moves X (and its co-visit neighbours) up within the next events.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np
from river import optim

from kairos.engine.ads import AdSelector
from kairos.engine.bandit import ThompsonSlatePolicy, greedy_order
from kairos.engine.config import EngineConfig
from kairos.engine.copywriting import CopyBook, CopyRequest, category_interest
from kairos.engine.feedback import FeedbackCorrector, FeedbackJoin, Impression, Interaction, PositionBias
from kairos.engine.interfaces import Ranker
from kairos.engine.item_vectors import ItemVectors
from kairos.engine.recommender import Recommender, StepTimings
from kairos.engine.rules import Candidate, CategoryCap, ExcludeHidden, FrequencyCap, ImpressionHistory, RuleContext, RulePipeline
from kairos.engine.state import UserInterest
from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent

#: Click-like actions that count as a positive label for the item shown.
_ENGAGED = frozenset({"click", "add_to_cart", "favourite"})
#: Served slates remembered so an impression can be joined to the logits and exploration flag it was served with
#: (~0.3 KB each; at 75 recommendations/s a partition keeps the last ~4 minutes; an impression of an older slate is
#: still joined, with neutral logits).
_SERVED_MEMORY = 20_000
#: Slates per shopper kept in their stored state (``"v"``), so that an impression of one served before a restart
#: still joins with the logits, segment and exploration flag it was served with: the storefront shows the latest,
#: or the one before when a newer recommendation was computed meanwhile. Logits stored to 4 decimals.
SERVED_PER_USER = 2
#: Most items whose frequency-cap history a shopper's stored state keeps (the ones shown last): a day's browsing
#: shows a shopper tens to a few hundred distinct items; more than this is a crawler, not worth a larger state.
MAX_CAPPED_ITEMS_PER_USER = 500
#: Ranker scores are relative (the heuristic's are not probabilities at all); the corrector works on logits, so
#: each slate's scores are shifted to put its best candidate at this logit (CTR ~7.6%), where a click is
#: informative. Learned scale and bias then calibrate further.
TOP_LOGIT = -2.5


@dataclass(frozen=True, slots=True)
class SelectedItem:
    item_id: str
    score: float
    reasons: tuple[str, ...]
    #: P(this item at this position) under the policy that served the slate.
    propensity: float
    logit: float
    copy: str | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    rec_id: str
    user_id: str
    items: list[SelectedItem]
    segment: str
    explored: bool
    #: Probability of the whole ordered slate.
    slate_propensity: float


@dataclass(frozen=True, slots=True)
class _Served:
    items: tuple[str, ...]
    logits: array  # float32: one machine float per slot instead of a Python float object
    segment: str
    explored: bool


def segment_of(user: UserInterest, now: float) -> str:
    """The user's interest segment: their strongest category, or ``cold`` without any history."""
    top = user.categories.top(1, now)
    return category_segment(top[0][0]) if top else "cold"


def category_segment(category: str) -> str:
    """The interest segment of shoppers whose strongest category is ``category``."""
    return f"cat:{category}"


class Selector:
    def __init__(
        self,
        config: EngineConfig,
        *,
        ranker: Ranker | None = None,
        feedback: bool = True,
        exploration: bool = True,
        epsilon: float = 0.05,
        exploration_sd: float = 0.15,
        exploration_draws: int = 128,
        frequency_cap: int = 6,
        frequency_window_s: float = 86_400.0,
        max_per_category: int = 4,
        attribution_window_s: float = 1800.0,
        hidden: Collection[str] = (),
        ads: AdSelector | None = None,
        copybook: CopyBook | None = None,
        feedback_rate: float = 0.1,
        item_vectors: ItemVectors | None = None,
        item_level_feedback: bool = False,
        max_position_weight: float = 3.0,
        seed: int = 0,
    ) -> None:
        self.config = config
        # Content-based candidates (nearest item texts to the user's interest) when an embedder is available.
        sources = [("similar_text", item_vectors.similar_items)] if item_vectors is not None else []
        self.recommender = Recommender(config, ranker, extra_sources=sources, seed=seed)
        self.item_vectors = item_vectors
        self.feedback = feedback
        self.exploration = exploration
        self.join = FeedbackJoin(attribution_window_s, position_bias=PositionBias(max_weight=max_position_weight))
        # Defaults measured in the closed loop with the simulator (docs/evaluation.md): item x segment shifts only,
        # SGD 0.1, click weights capped at 3 (higher rates or global per-item shifts lowered CTR there).
        self.corrector = FeedbackCorrector(
            optimizer=optim.SGD(feedback_rate), similarity=self._neighbours, calibration_share=0.005,
            item_level=item_level_feedback, learn_scale=False,
        )
        # Thompson sampling on the corrected scores: each candidate's logit drawn from N(score, sd^2), sd the
        # correction's posterior for its item x segment (``exploration_sd`` before any feedback on it).
        self.policy = ThompsonSlatePolicy(epsilon=epsilon if exploration else 0.0, draws=exploration_draws, seed=seed)
        self.exploration_sd = exploration_sd
        #: Per user, kept with the user's stored state (``user_state``), not in the partition checkpoint.
        self.impressions = ImpressionHistory(frequency_window_s, max_per_key=frequency_cap)
        self.hidden: set[str] = set(hidden)
        self.rules = RulePipeline(
            [ExcludeHidden(lambda: self.hidden), FrequencyCap(self.impressions, frequency_cap), CategoryCap(max_per_category)]
        )
        self._served: OrderedDict[str, _Served] = OrderedDict()
        #: user -> rec ids of their last ``SERVED_PER_USER`` slates (stored with the user, ``user_state``).
        self._served_by_user: dict[str, deque[str]] = {}
        self.ads = ads
        self.copybook = copybook
        if ads is not None:
            ads.corrector = self.corrector  # one online correction model for products and creatives
        self.examples_learned = 0
        self.last_timings: StepTimings | None = None
        self.correction_s = 0.0

    # --- delegation: the rest of the system sees one object per partition ---

    @property
    def model(self):
        return self.recommender.model

    @property
    def online(self):
        return self.recommender.online

    @property
    def model_version(self) -> str:
        return self.recommender.model_version + ("+feedback" if self.feedback else "")

    @property
    def ranker_failures(self) -> int:
        return self.recommender.ranker_failures

    def observe_global_only(self, user: UserInterest, event) -> None:
        """Replay an event the user's state already holds (after a restart, between the partition checkpoint and
        the user offsets) into what the checkpoint holds: the global model, the ads, the feedback join. The
        frequency-cap history is the user's own (restored with their state) and is not touched."""
        self.recommender.observe_global_only(user, event)
        if self.ads is not None and isinstance(event, ClickEvent) and event.rec_id:
            # The ad state is the checkpoint's, so a request it still holds open had no label then; crediting it
            # now is its only one.
            self.ads.on_click(event.rec_id, event.ts)
        if self.feedback:
            self._replay_feedback(event)

    def _replay_feedback(self, event) -> None:
        """The join and the corrector are the checkpoint's: a click or purchase joining an impression the join
        holds open had no label in them, so this is its only one. The window's own impressions are not opened
        (their slates' logits and segment died with the process, and the replay reads each topic's window as a
        block, so a click could come before its impression and leave a skip for the clicked item): they and their
        clicks are missing whole, as in the ads. They still move the event clock, so impressions close when they
        did."""
        if isinstance(event, ImpressionEvent):
            self._learn(self.join.advance(event.ts))
            return
        for interaction in _interactions(event):
            self._learn(self.join.add_interaction(interaction))

    # --- write path ---

    def observe(self, user: UserInterest, event, source: int = -1) -> None:
        """``source``: the record the event came from, kept with its id in the user's state (replays use it)."""
        if user.has_applied(event.event_id):
            return
        self.recommender.observe(user, event, source=source)
        if self.item_vectors is not None and isinstance(event, PurchaseEvent):
            for line in event.lines:
                self.item_vectors.queue(line.item_id, line.name)
        if self.ads is not None and isinstance(event, ClickEvent) and event.rec_id:
            self.ads.on_click(event.rec_id, event.ts)
        if isinstance(event, ImpressionEvent):
            self._on_impression(event)
        elif self.feedback:
            for interaction in _interactions(event):
                self._learn(self.join.add_interaction(interaction))

    def _on_impression(self, event: ImpressionEvent) -> None:
        shown = sorted(event.items, key=lambda item: item.position)
        for item in shown:
            self.impressions.record(event.user_id, item.item_id, event.ts)
        if not self.feedback:
            return
        served = self._served.get(event.rec_id)
        ids = tuple(item.item_id for item in shown)
        logits = _logits_for(served, ids)
        impression = Impression(
            event_id=event.event_id, rec_id=event.rec_id, user_id=event.user_id, item_ids=ids, ts=event.ts,
            segment=served.segment if served else "all", logits=logits, randomized=bool(served and served.explored),
        )  # fmt: skip
        self._learn(self.join.add_impression(impression))

    def _learn(self, examples) -> None:
        for example in examples:
            self.corrector.learn(example)
            self.examples_learned += 1

    # --- read path ---

    def select(
        self, user: UserInterest, now: float, n: int | None = None, rec_id: str | None = None,
        exclude: Collection[str] = (),
    ) -> Selection:
        """``exclude``: items the caller does not want shown (e.g. everything the shopper owns)."""
        pool, scores = self.recommender.score_candidates(user, now, exclude)
        return self.finish(user, pool, scores, now, n, rec_id)

    def prepare(self, user: UserInterest, now: float, exclude: Collection[str] = ()):
        """First half of :meth:`select`: candidates and ranker features (scored by the caller, batched)."""
        return self.recommender.candidates_and_features(user, now, exclude)

    def finish(self, user: UserInterest, pool, scores: np.ndarray, now: float, n: int | None = None, rec_id: str | None = None) -> Selection:
        """Second half: feedback correction, business rules, exploration, copy."""
        n = n or self.config.top_n
        scores = self.recommender.final_scores(user, pool, scores)  # ranker + discovery blend
        logits = scores - scores.max() + TOP_LOGIT if len(scores) else scores
        timings = self.recommender.last_timings
        t0 = time.perf_counter()
        segment = segment_of(user, now)
        corrected = self.corrector.correct(pool.items, segment, logits) if self.feedback and pool.items else logits
        t1 = time.perf_counter()
        kept, ruled = self._apply_rules(user, pool, corrected, now, n)
        rec_id = rec_id or f"{user.user_id}.{user.version}"
        # The logits of the candidates the rules saw (every kept one is among them), not of the whole pool: a dict
        # of 500 per recommendation to read ten. Python floats (``tolist``): cheaper than numpy scalars.
        items = pool.items
        ruled_logits = dict(zip([items[i] for i in ruled.tolist()], logits[ruled].tolist()))
        selection = self._explore(user, rec_id, segment, kept, pool.reasons, ruled_logits, n)
        if self.copybook is not None:
            selection = self._with_copy(selection, user, now)
        t2 = time.perf_counter()
        self.correction_s = t1 - t0
        if timings is not None:
            self.last_timings = StepTimings(timings.retrieve, timings.features, timings.rank, t2 - t1)
        self._remember(selection)
        return selection

    def _apply_rules(self, user: UserInterest, pool, scores: np.ndarray, now: float, n: int) -> tuple[list[Candidate], np.ndarray]:
        """Rules on the best ``4 n`` by score first (they rarely drop that many); the full list only if too few
        survive. Building a rule candidate per item of the pool was a tenth of the hot path. Returns the kept
        candidates and the pool indices the rules saw."""
        order = np.argsort(-scores, kind="stable")
        ruled = order[: 4 * n]
        kept = self._rule_pass(user, pool, scores, ruled, now)
        if len(kept) < n and len(order) > 4 * n:
            ruled = order
            kept = self._rule_pass(user, pool, scores, order, now)
        return kept, ruled

    def _rule_pass(self, user: UserInterest, pool, scores: np.ndarray, order: np.ndarray, now: float) -> list[Candidate]:
        catalog, items = self.model.catalog, pool.items
        candidates = []
        for i, score in zip(order.tolist(), scores[order].tolist()):
            item = items[i]
            info = catalog.get(item)
            candidates.append(Candidate(item, score, info.category_id if info is not None else None))
        return self.rules.apply(candidates, RuleContext(user.user_id, now)).kept

    def _explore(self, user, rec_id, segment, kept: list[Candidate], reasons, logits, n: int) -> Selection:
        if not kept:
            return Selection(rec_id, user.user_id, [], segment, False, 1.0)
        ids = [c.item_id for c in kept]
        scores = np.array([c.score for c in kept])
        if self.exploration:
            slate = self.policy.sample(ids, scores, n, self.corrector.uncertainty(ids, segment, self.exploration_sd))
            order, explored = [ids.index(i) for i in slate.item_ids], slate.explored
            position_p, slate_p = slate.position_propensities, slate.propensity
        else:
            order, explored = greedy_order(scores, n), False
            position_p, slate_p = (1.0,) * len(order), 1.0
        items = [
            SelectedItem(ids[i], float(scores[i]), tuple(reasons.get(ids[i], ())), float(p), float(logits.get(ids[i], 0.0)))
            for i, p in zip(order, position_p)
        ]
        return Selection(rec_id, user.user_id, items, segment, explored, float(slate_p))

    def _with_copy(self, selection: Selection, user: UserInterest, now: float) -> Selection:
        """Attach cached copy (or the template, queueing a request): never waits for generation."""
        interests = tuple(category_interest(category) for category, _ in user.categories.top(3, now))
        catalog = self.model.catalog

        def name_of(item_id: str) -> str | None:
            info = catalog.get(item_id)
            return info.name if info is not None else None

        items = []
        for item in selection.items:
            info = catalog.get(item.item_id)
            name = (info.name if info and info.name else item.item_id)
            request = CopyRequest(
                item.item_id, selection.segment, name, (info.category_id or "") if info else "",
                info.price if info else None, interests,
            )  # fmt: skip
            text = self.copybook.lookup(request, item.reasons, name_of)
            items.append(SelectedItem(item.item_id, item.score, item.reasons, item.propensity, item.logit, text))
        return replace(selection, items=items)

    def _remember(self, selection: Selection) -> None:
        served = _Served(
            tuple(i.item_id for i in selection.items), array("f", [i.logit for i in selection.items]), selection.segment, selection.explored
        )
        self._keep_served(selection.user_id, selection.rec_id, served)

    def _keep_served(self, user_id: str, rec_id: str, served: _Served) -> None:
        self._served[rec_id] = served
        while len(self._served) > _SERVED_MEMORY:
            self._served.popitem(last=False)
        recent = self._served_by_user.get(user_id)
        if recent is None:
            recent = self._served_by_user[user_id] = deque(maxlen=SERVED_PER_USER)
        if rec_id not in recent:
            recent.append(rec_id)

    def _neighbours(self, item_id: str) -> list[str]:
        return [item for item, _ in self.model.neighbours_of(item_id, 5)]

    def decide_ad(self, request_id: str, user: UserInterest | None, now: float):
        """The creative for an ad request (None: no campaign cleared the reserve, or no inventory)."""
        if self.ads is None:
            return None
        segment = segment_of(user, now) if user is not None else "cold"
        return self.ads.decide(request_id, user.user_id if user else "", segment, now)

    # --- persistence of what the feedback loop learned (partition checkpoint) ---

    def to_state(self, discovery_in_pieces: bool = False) -> dict:
        # The discovery model rides along here (it is the Recommender's, but the checkpoint format is owned by
        # engine/partition.py, which stores this dict as "selection"). The feedback join rides with the corrector
        # it feeds: both must stand at the same offsets, or a label is learned twice or never (docs/state.md).
        # ``discovery_in_pieces``: the discovery model's large maps are left out (PurchaseGraph.to_state).
        state = {"corrector": dict(self.corrector._weights), "information": dict(self.corrector.information),
                 "examples": self.examples_learned,
                 "discovery": self.recommender.discovery.to_state(discovery_in_pieces), "join": self.join.to_state()}
        if self.ads is not None:
            state["ads"] = self.ads.to_state()
        return state

    def load_state(self, data: dict) -> None:
        self.corrector.load_weights(data["corrector"])
        # Checkpoints written before exploration knew the correction's uncertainty have none: every learned item
        # starts again from the prior width and narrows with the next examples.
        self.corrector.load_information(data.get("information", {}))
        self.examples_learned = data["examples"]
        if "discovery" in data:  # checkpoints written before the discovery model have none: it relearns
            self.recommender.discovery.load_state(data["discovery"])
        if self.ads is not None and "ads" in data:  # nor the ad state before it was kept: the ads start from priors
            self.ads.load_state(data["ads"])
        if "join" in data:  # nor the join before it was kept: impressions shown before the restart join nothing
            self.join.load_state(data["join"])

    # --- persistence of what belongs to one shopper (their stored state, written with every commit) ---

    def user_state(self, user_id: str, now: float) -> dict:
        """Entries for the user's stored state beside ``UserInterest.to_state``: ``"f"``, the frequency-cap history
        inside its window at ``now`` (engine/rules.py ``ImpressionHistory.user_state``), none without one."""
        caps = self.impressions.user_state(user_id, now, MAX_CAPPED_ITEMS_PER_USER)
        entries: dict = {"f": caps} if caps is not None else {}
        slates = []
        for rec_id in self._served_by_user.get(user_id, ()):
            served = self._served.get(rec_id)
            if served is not None:
                logits = [round(x, 4) for x in served.logits]
                slates.append([rec_id, list(served.items), logits, served.segment, served.explored])
        if slates:
            entries["v"] = slates
        return entries

    def load_user_state(self, user_id: str, data: dict) -> None:
        """Take a stored user's entries back (a state written before ``"f"`` or ``"v"`` existed: none of them)."""
        self.impressions.load_user(user_id, data.get("f"))
        for rec_id, items, logits, segment, explored in data.get("v", ()):
            # After a restart the slates come from here; a shopper read back after eviction finds theirs in memory.
            served = self._served.get(rec_id) or _Served(tuple(items), array("f", logits), segment, explored)
            self._keep_served(user_id, rec_id, served)

    def forget_user(self, user_id: str) -> None:
        """The user left memory (evicted or expired): what :meth:`user_state` wrote comes back with them."""
        self.impressions.forget(user_id)
        self._served_by_user.pop(user_id, None)


def _logits_for(served: _Served | None, ids: tuple[str, ...]) -> tuple[float, ...]:
    if served is None:
        return tuple(0.0 for _ in ids)
    by_item = dict(zip(served.items, served.logits))
    return tuple(by_item.get(i, 0.0) for i in ids)


def _interactions(event) -> list[Interaction]:
    if isinstance(event, ClickEvent):
        if event.action.value not in _ENGAGED:
            return []
        return [Interaction(event.event_id, event.user_id, event.item_id, event.ts, "click", event.rec_id)]
    if isinstance(event, PurchaseEvent) and not event.is_return:
        return [
            Interaction(f"{event.event_id}#{n}", event.user_id, line.item_id, event.ts, "purchase", event.rec_id)
            for n, line in enumerate(event.lines)
        ]
    return []
