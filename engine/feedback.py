"""The impression-click-purchase join and the online score correction learned from its labelled examples.

Three pieces, each usable alone:

* :class:`FeedbackJoin` joins impressions with later clicks and purchases -- by recommendation id when the
  interaction carries one, else by user + item within the attribution window -- into :class:`LabelledExample` s.
  A click (or purchase) is emitted as soon as it is attributed; the items of an impression that were not clicked
  become ``skip`` examples (label 0) when the impression closes, i.e. once the event clock is past its attribution
  window. Memory is bounded: closed impressions are dropped, at most ``max_pending`` stay open (the oldest are
  closed early), and duplicate event ids are ignored for as long as they could still join.
* :class:`PositionBias` holds the examination probability of each slot and turns it into inverse-propensity
  weights for clicks (see ``docs/selection.md``: prior ``1 / position ** eta``, re-estimated online from
  impressions served by an exploration branch, where relevance does not depend on position).
* :class:`FeedbackCorrector` is a River-optimised logistic correction on top of the ranker's logit:
  ``corrected = scale x logit + bias + w[item] + w[segment] + w[item, segment]``, learned online from examples,
  starting as the identity so an untrained corrector never reorders the ranker.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from river import optim


@dataclass(frozen=True)
class Impression:
    """Items shown together for one recommendation, in display order (position = index + 1).

    ``logits`` are the ranker logits at display time (one per item) and ``segment`` the user segment, both
    carried through to the examples the corrector learns from. ``randomized`` marks slates from an exploration
    branch, the only ones used to estimate examination probabilities.
    """

    event_id: str
    rec_id: str
    user_id: str
    item_ids: tuple[str, ...]
    ts: float
    segment: str = "all"
    logits: tuple[float, ...] | None = None
    randomized: bool = False


@dataclass(frozen=True)
class Interaction:
    """A click or purchase; ``rec_id`` is set when the client echoed the recommendation id back."""

    event_id: str
    user_id: str
    item_id: str
    ts: float
    kind: Literal["click", "purchase"] = "click"
    rec_id: str | None = None


@dataclass(frozen=True)
class LabelledExample:
    """One shown item with its outcome: ``kind`` is click / purchase (label 1) or skip (label 0).

    ``delay_s`` is the time from impression to interaction (``None`` for skips); ``weight`` the position-bias
    weight to learn with.
    """

    rec_id: str
    user_id: str
    item_id: str
    position: int
    label: int
    kind: Literal["click", "purchase", "skip"]
    delay_s: float | None
    weight: float
    segment: str
    logit: float


class PositionBias:
    """Examination probability per position, from a power-law prior refined by randomized traffic.

    Parameters
    ----------
    eta
        Prior examination ``theta_p = 1 / p ** eta`` (``eta = 1`` is the usual starting point; 0 = no bias).
    prior_strength
        Pseudo-impressions per position behind the prior; real counts outweigh it after that many impressions.
    prior_ctr
        Click rate at position 1 assumed by the prior's pseudo-counts.
    max_weight
        Cap of the inverse-propensity weight, bounding the variance a click at a deep position adds.

    Examples
    --------
    >>> bias = PositionBias(eta=1.0)
    >>> bias.examination(2), bias.weight(2)
    (0.5, 2.0)
    """

    def __init__(self, eta: float = 1.0, prior_strength: float = 200.0, prior_ctr: float = 0.05,
                 max_weight: float = 10.0) -> None:
        self.eta, self.prior_strength, self.prior_ctr, self.max_weight = eta, prior_strength, prior_ctr, max_weight
        self._impressions: dict[int, int] = {}
        self._clicks: dict[int, int] = {}

    def observe(self, position: int, clicked: bool) -> None:
        """Count one randomized impression at ``position`` (clicked or not)."""
        self._impressions[position] = self._impressions.get(position, 0) + 1
        self._clicks[position] = self._clicks.get(position, 0) + int(clicked)

    def examination(self, position: int) -> float:
        """Estimated probability that a user looks at ``position`` relative to position 1 (in (0, 1])."""
        if position <= 1:
            return 1.0
        return min(self._smoothed_ctr(position) / self._smoothed_ctr(1), 1.0)

    def weight(self, position: int) -> float:
        """Inverse-propensity weight of a click at ``position``, capped at ``max_weight``."""
        return min(1.0 / self.examination(position), self.max_weight)

    def _smoothed_ctr(self, position: int) -> float:
        prior_clicks = self.prior_strength * self.prior_ctr / position**self.eta
        clicks = self._clicks.get(position, 0) + prior_clicks
        return clicks / (self._impressions.get(position, 0) + self.prior_strength)

    def to_state(self) -> list[list[int]]:
        """The randomized counts as ``[[position, impressions, clicks], ...]`` (the prior is configuration)."""
        return [[position, n, self._clicks.get(position, 0)] for position, n in sorted(self._impressions.items())]

    def load_state(self, data: list[list[int]]) -> None:
        self._impressions = {int(position): int(n) for position, n, _ in data}
        self._clicks = {int(position): int(clicks) for position, _, clicks in data}


@dataclass
class _OpenImpression:
    impression: Impression
    clicked: set[str] = field(default_factory=set)
    purchased: set[str] = field(default_factory=set)


class FeedbackJoin:
    """Joins impressions with clicks and purchases into labelled examples, with bounded memory.

    Parameters
    ----------
    attribution_window_s
        How long after an impression a click or purchase is credited to it.
    max_pending
        Most impressions kept open at once; beyond it the oldest is closed early (its skips emitted).
    position_bias
        Examination model giving the click weights; a default :class:`PositionBias` when ``None``.

    Examples
    --------
    >>> join = FeedbackJoin(attribution_window_s=60)
    >>> join.add_impression(Impression("e1", "r1", "u1", ("x", "y"), ts=0.0))
    []
    >>> [(e.item_id, e.kind, e.position) for e in join.add_interaction(Interaction("e2", "u1", "y", ts=5.0))]
    [('y', 'click', 2)]
    >>> [(e.item_id, e.kind) for e in join.advance(61.0)]
    [('x', 'skip')]
    """

    def __init__(self, attribution_window_s: float = 1800.0, max_pending: int = 100_000,
                 position_bias: PositionBias | None = None) -> None:
        self.window = attribution_window_s
        self.max_pending = max_pending
        self.position_bias = position_bias or PositionBias()
        self._open: OrderedDict[str, _OpenImpression] = OrderedDict()  # rec_id -> open impression, oldest first
        self._by_user: dict[str, deque[str]] = {}  # user -> rec_ids, oldest first
        self._seen: OrderedDict[str, float] = OrderedDict()  # event_id -> ts, for idempotence
        self._watermark = float("-inf")
        self.unattributed = 0

    @property
    def pending(self) -> int:
        """Impressions still open (waiting for clicks)."""
        return len(self._open)

    def add_impression(self, impression: Impression) -> list[LabelledExample]:
        """Open an impression; returns skip examples of impressions this closes (old or over capacity)."""
        if not self._first_sight(impression.event_id, impression.ts) or impression.rec_id in self._open:
            return []
        self._open[impression.rec_id] = _OpenImpression(impression)
        self._by_user.setdefault(impression.user_id, deque()).append(impression.rec_id)
        closed = self.advance(impression.ts)
        while len(self._open) > self.max_pending:
            closed.extend(self._close(next(iter(self._open))))
        return closed

    def add_interaction(self, event: Interaction) -> list[LabelledExample]:
        """Attribute a click or purchase; returns its example (if attributed) and skips of closed impressions."""
        if event.event_id in self._seen:
            return []
        examples = self._attribute(event)
        if examples:  # only an interaction that joined can be counted twice: only those ids are remembered
            self._remember_id(event.event_id, event.ts)
        return examples + self.advance(event.ts)

    def advance(self, now: float) -> list[LabelledExample]:
        """Move the event clock to ``now`` and close every impression whose window has passed."""
        self._watermark = max(self._watermark, now)
        closed: list[LabelledExample] = []
        while self._open:
            rec_id, open_imp = next(iter(self._open.items()))
            if self._watermark - open_imp.impression.ts <= self.window:
                break
            closed.extend(self._close(rec_id))
        self._forget_old_event_ids()
        return closed

    def _attribute(self, event: Interaction) -> list[LabelledExample]:
        open_imp = self._find(event)
        if open_imp is None:
            self.unattributed += 1
            return []
        done = open_imp.clicked if event.kind == "click" else open_imp.purchased
        if event.item_id in done:
            return []  # a second click on the same shown item adds no label
        done.add(event.item_id)
        position = open_imp.impression.item_ids.index(event.item_id) + 1
        if event.kind == "click" and open_imp.impression.randomized:
            self.position_bias.observe(position, clicked=True)
        weight = self.position_bias.weight(position) if event.kind == "click" else 1.0
        return [_example(open_imp.impression, position, 1, event.kind, event.ts - open_imp.impression.ts, weight)]

    def _find(self, event: Interaction) -> _OpenImpression | None:
        if event.rec_id is not None and event.rec_id in self._open:
            candidate = self._open[event.rec_id]
            return candidate if event.item_id in candidate.impression.item_ids else None
        # No (known) rec id: credit the user's most recent impression that showed the item within the window.
        for rec_id in reversed(self._by_user.get(event.user_id, ())):
            imp = self._open[rec_id].impression
            if event.item_id in imp.item_ids and 0.0 <= event.ts - imp.ts <= self.window:
                return self._open[rec_id]
        return None

    def _close(self, rec_id: str) -> list[LabelledExample]:
        open_imp = self._open.pop(rec_id)
        imp = open_imp.impression
        user_recs = self._by_user[imp.user_id]
        user_recs.remove(rec_id)
        if not user_recs:
            del self._by_user[imp.user_id]
        skips = []
        for position, item_id in enumerate(imp.item_ids, start=1):
            clicked = item_id in open_imp.clicked
            if imp.randomized and not clicked:
                self.position_bias.observe(position, clicked=False)
            if not clicked:
                skips.append(_example(imp, position, 0, "skip", None, 1.0))
        return skips

    def _first_sight(self, event_id: str, ts: float) -> bool:
        if event_id in self._seen:
            return False
        self._remember_id(event_id, ts)
        return True

    def _remember_id(self, event_id: str, ts: float) -> None:
        self._seen[event_id] = ts
        if len(self._seen) > 4 * self.max_pending:  # a hard bound besides the time horizon
            self._seen.popitem(last=False)

    def _forget_old_event_ids(self) -> None:
        # An id older than two windows can no longer join anything, so a duplicate of it would be unattributed
        # anyway; forgetting it bounds the set by the traffic of two windows.
        horizon = self._watermark - 2 * self.window
        while self._seen and next(iter(self._seen.values())) < horizon:
            self._seen.popitem(last=False)

    # --- persistence (inside the partition checkpoint, with the corrector it feeds: see Selector.to_state) ---

    def to_state(self) -> dict:
        """What a restarted join needs to label every impression once, JSON-able: the open impressions, oldest
        first, column by column (``randomized``: their rec ids; ``clicked`` / ``purchased``: rec id -> items, only
        for those with any), the event ids remembered for idempotence (``seen``, ``seen_ts``), the event clock, the
        position-bias counts and ``unattributed``. Bounded as in memory (``max_pending`` impressions, ``4 x
        max_pending`` ids); columns of shared tuples, so the partition's checkpoint stays quick at the bound."""
        opens = [o.impression for o in self._open.values()]
        clicked, purchased = {}, {}
        for rec_id, o in self._open.items():  # one pass: most impressions have neither
            if o.clicked:
                clicked[rec_id] = sorted(o.clicked)
            if o.purchased:
                purchased[rec_id] = sorted(o.purchased)
        return {
            "rec": [i.rec_id for i in opens], "user": [i.user_id for i in opens],
            "event": [i.event_id for i in opens], "ts": [i.ts for i in opens], "segment": [i.segment for i in opens],
            "items": [i.item_ids for i in opens], "logits": [i.logits for i in opens],
            "randomized": [i.rec_id for i in opens if i.randomized],
            "clicked": clicked, "purchased": purchased,
            "seen": list(self._seen), "seen_ts": list(self._seen.values()),
            "watermark": self._watermark if self._watermark != float("-inf") else None,
            "position_bias": self.position_bias.to_state(), "unattributed": self.unattributed,
        }  # fmt: skip

    def load_state(self, data: dict) -> None:
        """Restore :meth:`to_state`'s output (the window and ``max_pending`` are configuration)."""
        randomized, clicked, purchased = set(data["randomized"]), data["clicked"], data["purchased"]
        self._open, self._by_user = OrderedDict(), {}
        columns = zip(data["rec"], data["user"], data["event"], data["ts"], data["segment"], data["items"],
                      data["logits"])  # fmt: skip
        for rec_id, user_id, event_id, ts, segment, items, logits in columns:
            impression = Impression(event_id, rec_id, user_id, tuple(items), ts, segment,
                                    tuple(logits) if logits is not None else None, rec_id in randomized)  # fmt: skip
            opened = _OpenImpression(impression, set(clicked.get(rec_id, ())), set(purchased.get(rec_id, ())))
            self._open[rec_id] = opened
            self._by_user.setdefault(user_id, deque()).append(rec_id)
        self._seen = OrderedDict(zip(data["seen"], data["seen_ts"]))
        self._watermark = float("-inf") if data["watermark"] is None else data["watermark"]
        self.position_bias.load_state(data["position_bias"])
        self.unattributed = data["unattributed"]


def _example(imp: Impression, position: int, label: int, kind: str, delay: float | None,
             weight: float) -> LabelledExample:
    logit = imp.logits[position - 1] if imp.logits is not None else 0.0
    return LabelledExample(imp.rec_id, imp.user_id, imp.item_ids[position - 1], position, label, kind, delay,
                           weight, imp.segment, float(logit))


class FeedbackCorrector:
    """Online logistic correction of ranker logits per item, per segment and per item x segment.

    ``corrected = scale x logit + bias + w[item] + w[segment] + w[item, segment]``, with ``scale = 1`` and every
    other weight 0 at the start. Each click / skip example takes one step of a River optimizer on the weighted
    log loss of ``sigmoid(corrected)``. With a ``similarity`` hook (item -> neighbour ids), a click's item-level
    step is also applied, scaled by ``neighbour_share``, to the neighbours' item weights, so evidence spreads to
    similar items. The total shift per item is clipped to ``+-max_shift`` logits.

    Examples
    --------
    >>> corrector = FeedbackCorrector()
    >>> example = LabelledExample("r", "u", "x", 1, 1, "click", 2.0, 1.0, "all", 0.0)
    >>> for _ in range(3):
    ...     corrector.learn(example)
    >>> before, after = 0.0, corrector.correct(["x"], "all", [0.0])[0]
    >>> bool(after > before)
    True
    """

    def __init__(self, optimizer: optim.base.Optimizer | None = None,
                 similarity: Callable[[str], Sequence[str]] | None = None, neighbour_share: float = 0.5,
                 max_shift: float = 4.0, calibration_share: float = 1.0, item_level: bool = True,
                 learn_scale: bool = True) -> None:
        self._optimizer = optimizer or optim.SGD(0.1)
        # The scale's gradient is g x logit: with a fast per-item rate and logits far from 0 it would diverge,
        # so the global calibration weights can learn at a fraction of the optimizer's rate.
        self.calibration_share = calibration_share
        # item_level=False learns only item x segment shifts: what shoppers of one segment do with an item says
        # little about shoppers of another (a global per-item shift overrides their interests).
        self.item_level = item_level
        # With logits that are all on one side of 0 (e.g. shifted so the best candidate sits at a CTR-like logit),
        # the scale's gradient acts as a second bias and can flatten the ranker's order: keep it fixed then.
        self.learn_scale = learn_scale
        self._loss = optim.losses.Log()
        self._weights: dict[str, float] = {"scale": 1.0, "bias": 0.0}
        #: Segments that may hold item x segment weights: a slate of another segment needs no lookup per candidate
        #: (a superset after :meth:`load_weights`, see there).
        self._pair_segments: set[str] = set()
        self.similarity = similarity
        self.neighbour_share = neighbour_share
        self.max_shift = max_shift
        #: Per item x segment (per item with ``item_level``): the Fisher information the examples gave about its
        #: weight, the sum of ``weight x p (1 - p)`` over them (``p`` the corrected click probability then). With a
        #: normal prior on the weight, ``1 / (1 / prior_sd^2 + information)`` is its posterior variance (Laplace):
        #: what exploration needs to know about how sure the correction is (:meth:`uncertainty`).
        self._information: dict[str, float] = {}

    def correct(self, item_ids: Sequence[str], segment: str, logits: Sequence[float]) -> np.ndarray:
        """Corrected logits for ``item_ids`` (aligned with ``logits``) in ``segment``."""
        logits = np.asarray(logits, dtype=float)
        if not self.item_level:
            return self._correct_pairs(item_ids, segment, logits)
        shifts = np.array([self._shift(item, segment) for item in item_ids])
        return self._weights["scale"] * logits + self._weights["bias"] + shifts

    def learn(self, example: LabelledExample) -> None:
        """One optimizer step on a click or skip example (purchases are ignored here: they are not clicks)."""
        if example.kind == "purchase":
            return
        raw = self.correct([example.item_id], example.segment, [example.logit])[0]
        g = self._loss.gradient(example.label, raw) * example.weight
        share = self.calibration_share
        grad = {"bias": g * share}
        if self.learn_scale:
            grad["scale"] = g * example.logit * share
        item_key, segment_key, pair_key = _keys(example.item_id, example.segment)
        for key in (item_key, segment_key, pair_key) if self.item_level else (segment_key, pair_key):
            grad[key] = g
        for neighbour in self._neighbours(example.item_id):
            key = f"i:{neighbour}" if self.item_level else _keys(neighbour, example.segment)[2]
            grad[key] = grad.get(key, 0.0) + self.neighbour_share * g
        for key in grad:
            self._weights.setdefault(key, 0.0)
        self._pair_segments.add(example.segment)
        self._optimizer.step(self._weights, grad)
        p = sigmoid(raw)
        information = example.weight * p * (1.0 - p)
        info = self._information
        key = item_key if self.item_level else pair_key
        info[key] = info.get(key, 0.0) + information

    def uncertainty(self, item_ids: Sequence[str], segment: str, prior_sd: float) -> np.ndarray:
        """The posterior standard deviation of each item's corrected logit in ``segment``: ``prior_sd`` for an
        item nothing was learned about, narrower with every example about it (Laplace approximation of the
        logistic correction's item x segment weight; of the item weight with ``item_level``, which every example
        of the item, whatever its segment, informs).

        >>> corrector = FeedbackCorrector()
        >>> corrector.learn(LabelledExample("r", "u", "x", 1, 0, "skip", None, 1.0, "all", 0.0))
        >>> [round(float(s), 3) for s in corrector.uncertainty(["x", "y"], "all", prior_sd=1.0)]
        [0.894, 1.0]
        """
        if prior_sd <= 0.0:
            return np.zeros(len(item_ids))
        info, prior = self._information, 1.0 / (prior_sd * prior_sd)
        suffix = f"|{segment}"
        if self.item_level:
            known = [info.get(f"i:{item}", 0.0) for item in item_ids]
        elif segment in self._pair_segments:
            known = [info.get(f"is:{item}{suffix}", 0.0) for item in item_ids]
        else:
            return np.full(len(item_ids), prior_sd)
        return 1.0 / np.sqrt(prior + np.array(known, dtype=float))

    @property
    def information(self) -> dict[str, float]:
        """Per key, the information learned (checkpointed with the weights; :meth:`load_information`)."""
        return self._information

    def load_information(self, information: Mapping[str, float]) -> None:
        self._information.update(information)

    def load_weights(self, weights: Mapping[str, float]) -> None:
        """Take learned weights back (a checkpoint's). The segments of the item x segment keys
        (``is:<item>|<segment>``) are read back from the keys; an item id containing ``|`` makes the split
        ambiguous, so every possible segment is taken (a superset only costs lookups)."""
        self._weights.update(weights)
        for key in weights:
            if key.startswith("is:"):
                parts = key[3:].split("|")
                self._pair_segments.update("|".join(parts[k:]) for k in range(1, len(parts)))

    def _correct_pairs(self, item_ids: Sequence[str], segment: str, logits: np.ndarray) -> np.ndarray:
        """The item x segment-only correction, one dict lookup per item (it runs on every candidate)."""
        w, limit = self._weights, self.max_shift
        if segment in self._pair_segments:
            suffix = f"|{segment}"
            pair = np.array([w.get(f"is:{item}{suffix}", 0.0) for item in item_ids], dtype=float)
        else:  # nothing learned for this segment's shoppers yet
            pair = np.zeros(len(item_ids), dtype=float)
        common = self._weights["bias"] + min(max(w.get(f"s:{segment}", 0.0), -limit), limit)
        return self._weights["scale"] * logits + common + np.clip(pair, -limit, limit)

    def _shift(self, item_id: str, segment: str) -> float:
        # The item-level part is clipped on its own: the segment weight is shared by every item of the segment, and
        # clipping the sum would erase the differences between items once the segment weight is large.
        item_key, segment_key, pair_key = _keys(item_id, segment)
        w = self._weights
        limit = self.max_shift  # plain min/max: np.clip on scalars costs ~3 us, and this runs per candidate
        item_shift = min(max(w.get(item_key, 0.0) + w.get(pair_key, 0.0), -limit), limit)
        return item_shift + min(max(w.get(segment_key, 0.0), -limit), limit)

    def _neighbours(self, item_id: str) -> list[str]:
        if self.similarity is None:
            return []
        return [n for n in self.similarity(item_id) if n != item_id]


def sigmoid(x: float) -> float:
    """The logistic function, clamped to +-30 so that no logit overflows ``math.exp``."""
    return 1.0 / (1.0 + math.exp(-min(max(x, -30.0), 30.0)))


def _keys(item_id: str, segment: str) -> tuple[str, str, str]:
    return f"i:{item_id}", f"s:{segment}", f"is:{item_id}|{segment}"
