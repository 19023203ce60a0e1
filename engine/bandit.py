"""Exploration on top of corrected scores: Thompson sampling, LinUCB and slate policies with logged propensities.

* :class:`ThompsonSampler` keeps a Beta-Bernoulli posterior per arm (for example the copy variants of a creative,
  including generated ones) and tracks each arm's observed impressions, clicks and CTR.
* :class:`LinUCB` is the disjoint linear UCB of Li et al. (2010) for arms with context vectors.
* :class:`PlackettLuceSlatePolicy` and :class:`EpsilonGreedySlatePolicy` pick ``k`` of ``n`` scored candidates and
  return the exact probability of the ordered slate they show, plus per-position marginals for off-policy evaluation.

Every policy takes an explicit ``seed``; the same seed and the same calls give the same choices.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kairos.engine.rng import generator_state, restore_generator


@dataclass
class ArmStats:
    """Posterior parameters and observed counts of one arm."""

    alpha: float
    beta: float
    impressions: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        """Observed click-through rate (0 before the first impression)."""
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def posterior_mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


class ThompsonSampler:
    """Beta-Bernoulli Thompson sampling over named arms.

    Parameters
    ----------
    seed
        Seed of the posterior draws.
    default_prior
        ``(alpha, beta)`` for arms first seen in :meth:`choose` without :meth:`add_arm`.

    Examples
    --------
    >>> ts = ThompsonSampler(seed=0)
    >>> ts.add_arm("v0", alpha=1, beta=1); ts.add_arm("v1", alpha=1, beta=1)
    >>> for _ in range(50):
    ...     ts.update("v1", clicked=True)
    >>> ts.choose(["v0", "v1"])
    'v1'
    >>> ts.stats("v1").ctr
    1.0
    """

    def __init__(self, seed: int = 0, default_prior: tuple[float, float] = (1.0, 1.0)) -> None:
        self._arms: dict[str, ArmStats] = {}
        self._default = default_prior
        self._rng = np.random.default_rng(seed)

    def add_arm(self, arm_id: str, alpha: float = 1.0, beta: float = 1.0) -> None:
        """Register an arm with its Beta prior (e.g. from historical CTRs); re-adding keeps existing stats."""
        if alpha <= 0 or beta <= 0:
            raise ValueError("Beta prior parameters must be > 0")
        self._arms.setdefault(arm_id, ArmStats(alpha, beta))

    def stats(self, arm_id: str) -> ArmStats:
        return self._arm(arm_id)

    def sample(self, arm_ids: Sequence[str]) -> np.ndarray:
        """One posterior draw of the click probability per arm, in the order given."""
        arms = [self._arm(a) for a in arm_ids]
        return self._rng.beta([a.alpha for a in arms], [a.beta for a in arms])

    def choose(self, arm_ids: Sequence[str]) -> str:
        """The arm with the highest posterior draw (first listed wins an exact tie)."""
        if not arm_ids:
            raise ValueError("no arms to choose from")
        return arm_ids[int(np.argmax(self.sample(arm_ids)))]

    def update(self, arm_id: str, clicked: bool) -> None:
        """Book one impression of ``arm_id`` and whether it was clicked."""
        arm = self._arm(arm_id)
        arm.impressions += 1
        arm.clicks += int(clicked)
        arm.alpha += float(clicked)
        arm.beta += 1.0 - float(clicked)

    def choice_probabilities(self, arm_ids: Sequence[str], draws: int = 2000) -> np.ndarray:
        """Monte Carlo estimate of each arm's probability of being chosen (Thompson has no closed form).

        Uses its own generator seeded from ``draws`` so estimating does not shift the serving draws.
        """
        arms = [self._arm(a) for a in arm_ids]
        rng = np.random.default_rng(draws)
        samples = rng.beta([a.alpha for a in arms], [a.beta for a in arms], size=(draws, len(arms)))
        return np.bincount(samples.argmax(axis=1), minlength=len(arms)) / draws

    def _arm(self, arm_id: str) -> ArmStats:
        if arm_id not in self._arms:
            self.add_arm(arm_id, *self._default)
        return self._arms[arm_id]

    def to_state(self) -> dict:
        """Every arm as ``[alpha, beta, impressions, clicks]`` and the draw stream's position (JSON-able)."""
        arms = {a: [float(s.alpha), float(s.beta), s.impressions, s.clicks] for a, s in self._arms.items()}
        return {"arms": arms, "rng": generator_state(self._rng)}

    def load_state(self, data: dict) -> None:
        """Take the saved arms' posteriors and counts (other arms keep theirs) and continue the saved draws."""
        for arm_id, (alpha, beta, impressions, clicks) in data["arms"].items():
            self._arms[arm_id] = ArmStats(float(alpha), float(beta), int(impressions), int(clicks))
        restore_generator(self._rng, data["rng"])


class LinUCB:
    """Disjoint LinUCB: one ridge regression per arm, score = estimate + ``alpha`` x its standard error.

    >>> bandit = LinUCB(dim=2, alpha=0.0)
    >>> for _ in range(20):
    ...     bandit.update("a", np.array([1.0, 0.0]), 1.0)
    ...     bandit.update("b", np.array([1.0, 0.0]), 0.0)
    >>> bandit.choose(["a", "b"], np.array([1.0, 0.0]))
    'a'
    """

    def __init__(self, dim: int, alpha: float = 1.0, ridge: float = 1.0) -> None:
        self.dim, self.alpha, self.ridge = dim, alpha, ridge
        self._a_inv: dict[str, np.ndarray] = {}
        self._b: dict[str, np.ndarray] = {}

    def ucb(self, arm_ids: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Upper confidence bound of each arm's reward for context ``x``."""
        return np.array([self._ucb_one(a, np.asarray(x, dtype=float)) for a in arm_ids])

    def choose(self, arm_ids: Sequence[str], x: np.ndarray) -> str:
        return arm_ids[int(np.argmax(self.ucb(arm_ids, x)))]

    def update(self, arm_id: str, x: np.ndarray, reward: float) -> None:
        a_inv, b = self._state(arm_id)
        x = np.asarray(x, dtype=float)
        # Sherman-Morrison keeps the inverse current in O(d^2) instead of re-inverting in O(d^3).
        ax = a_inv @ x
        a_inv -= np.outer(ax, ax) / (1.0 + x @ ax)
        b += reward * x

    def _ucb_one(self, arm_id: str, x: np.ndarray) -> float:
        a_inv, b = self._state(arm_id)
        theta = a_inv @ b
        return float(theta @ x + self.alpha * math.sqrt(max(x @ a_inv @ x, 0.0)))

    def _state(self, arm_id: str) -> tuple[np.ndarray, np.ndarray]:
        if arm_id not in self._a_inv:
            self._a_inv[arm_id] = np.eye(self.dim) / self.ridge
            self._b[arm_id] = np.zeros(self.dim)
        return self._a_inv[arm_id], self._b[arm_id]


@dataclass(frozen=True)
class Slate:
    """The ordered items shown and the probability that the policy shows exactly this ordered slate."""

    item_ids: tuple[str, ...]
    propensity: float
    position_propensities: tuple[float, ...]  # P(item at that position), the per-slot propensity logged for OPE
    explored: bool = False


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``scores / temperature`` along the last axis."""
    z = np.asarray(scores, dtype=float) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def plackett_luce_probability(weights: np.ndarray, order: Sequence[int]) -> float:
    """Probability of drawing the ordered indices ``order`` without replacement, proportional to ``weights``.

    >>> round(plackett_luce_probability(np.array([0.5, 0.3, 0.2]), [1, 0]), 4)   # 0.3 * 0.5 / 0.7
    0.2143
    """
    remaining = float(np.sum(weights))
    prob = 1.0
    for index in order:
        prob *= float(weights[index]) / remaining
        remaining -= float(weights[index])
    return prob


class PlackettLuceSlatePolicy:
    """Samples a slate position by position from softmax(score / temperature) without replacement.

    Low temperatures approach the greedy top-k; high ones approach uniform. The slate probability is the
    Plackett-Luce product, exact. Per-position marginals are exact by enumeration for small ``n``, Monte Carlo
    (seeded Gumbel top-k) otherwise.
    """

    def __init__(self, temperature: float = 1.0, seed: int = 0, exact_limit: int = 5000) -> None:
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature
        self.exact_limit = exact_limit
        self._rng = np.random.default_rng(seed)

    def sample(self, item_ids: Sequence[str], scores: np.ndarray, k: int, with_marginals: bool = True) -> Slate:
        """Draw a slate. ``with_marginals=False`` skips the per-position marginals (empty tuple), which cost a
        Monte Carlo pass when ``P(n, k)`` is above ``exact_limit``; the slate propensity is always exact."""
        weights = softmax(scores, self.temperature)
        k = min(k, len(item_ids))
        order = self._rng.choice(len(item_ids), size=k, replace=False, p=weights).tolist()
        marginals = self.position_marginals(scores, k) if with_marginals else None
        return Slate(
            item_ids=tuple(item_ids[i] for i in order),
            propensity=plackett_luce_probability(weights, order),
            position_propensities=() if marginals is None else tuple(
                float(marginals[i, pos]) for pos, i in enumerate(order)),
        )

    def position_marginals(self, scores: np.ndarray, k: int) -> np.ndarray:
        """``(n, k)`` matrix: probability that item ``i`` is shown at position ``p``."""
        weights = softmax(scores, self.temperature)
        n = len(weights)
        if math.perm(n, k) <= self.exact_limit:
            return _enumerated_marginals(weights, k)
        return _gumbel_marginals(weights, k, draws=20_000, seed=n * 7919 + k)


class EpsilonGreedySlatePolicy:
    """Shows the top-``k`` by score with probability ``1 - epsilon``, else a uniformly random ordered slate.

    Exact propensities in closed form: the greedy slate has ``1 - epsilon + epsilon / P(n, k)``, every other
    ordered slate ``epsilon / P(n, k)``; item ``i`` sits at position ``p`` with probability
    ``(1 - epsilon) [rank(i) = p] + epsilon / n``. Ties in score go to the lower index.
    """

    def __init__(self, epsilon: float = 0.1, seed: int = 0) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon = epsilon
        self._rng = np.random.default_rng(seed)

    def sample(self, item_ids: Sequence[str], scores: np.ndarray, k: int) -> Slate:
        n, k = len(item_ids), min(k, len(item_ids))
        explored = bool(self._rng.random() < self.epsilon)
        greedy = greedy_order(scores, k)
        order = self._rng.permutation(n)[:k].tolist() if explored else greedy
        marginals = self.position_marginals(scores, k)
        return Slate(
            item_ids=tuple(item_ids[i] for i in order),
            propensity=self.slate_probability(scores, order, k),
            position_propensities=tuple(float(marginals[i, pos]) for pos, i in enumerate(order)),
            explored=explored,
        )

    def position_marginals(self, scores: np.ndarray, k: int) -> np.ndarray:
        """``(n, k)`` matrix: probability that item ``i`` is shown at position ``p``."""
        return epsilon_greedy_marginals(np.asarray(scores, dtype=float)[None, :], k, self.epsilon)[0]

    def slate_probability(self, scores: np.ndarray, order: Sequence[int], k: int) -> float:
        """Exact probability of showing the ordered slate ``order`` (indices into ``scores``)."""
        uniform = self.epsilon / math.perm(len(scores), k)
        return uniform + (1.0 - self.epsilon) * (list(order) == greedy_order(scores, k))


class ThompsonSlatePolicy:
    """Thompson sampling of a slate over candidates whose click logits are uncertain.

    Each candidate's logit is drawn from its posterior, a normal with the corrected score as mean and the
    candidate's own standard deviation (``sds``: how little the feedback loop knows about it; a candidate shown
    often has a narrow one), and the slate is the top-``k`` of the draw, in the order drawn. So a candidate whose
    score may well be better than its neighbours' gets shown in proportion to that chance, and one that has been
    shown enough without clicks stops being. With probability ``epsilon`` a uniformly random ordered slate is
    shown instead (``explored``: a randomised slate, from which the position bias is learned, and a floor of
    ``epsilon / n`` under every propensity, so importance weights stay bounded by ``n / epsilon``).

    Thompson sampling has no closed-form slate probability. Position marginals are estimated from ``draws``
    further draws of the same posterior, independent of the one served (as the Open Bandit logs' propensities
    of their Bernoulli Thompson sampling policy were): ``P(i at p) = (1 - epsilon) P_TS(i at p) + epsilon / n``.
    The slate propensity is estimated the same way. With every ``sds`` 0 there is nothing to estimate: the
    marginals are the closed form of epsilon-greedy, computed from the one deterministic top-``k``. On the hot
    path fresh normals for those draws (5,120 for 40 candidates) cost more than the rest of the step, so the
    estimate reads them from a window at a random offset of a bank of ``BANK`` standard normals drawn once: within
    a window they are independent normals, so each estimate is unbiased; estimates of successive slates share
    values and are correlated. The served draw is always fresh.

    >>> policy = ThompsonSlatePolicy(epsilon=0.1, draws=512, seed=0)
    >>> slate = policy.sample(["a", "b", "c"], np.array([0.0, -0.1, -5.0]), 2, sds=np.array([1.0, 1.0, 0.01]))
    >>> sorted(slate.item_ids), bool(0.1 / 3 <= min(slate.position_propensities))
    (['a', 'b'], True)
    >>> marginals = policy.position_marginals(np.array([0.0, -0.1, -5.0]), np.array([1.0, 1.0, 0.01]), 2)
    >>> [round(float(s), 6) for s in marginals.sum(axis=0)]     # every position holds exactly one item
    [1.0, 1.0]
    """

    #: Standard normals in the bank the Monte Carlo estimates read from (256 KB).
    BANK = 1 << 16

    def __init__(self, epsilon: float = 0.05, draws: int = 128, seed: int = 0) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        if draws < 1:
            raise ValueError("draws must be >= 1")
        self.epsilon = epsilon
        self.draws = draws
        self._rng = np.random.default_rng(seed)
        self._bank = self._rng.standard_normal(self.BANK).astype(np.float32)

    def sample(self, item_ids: Sequence[str], scores: np.ndarray, k: int, sds: np.ndarray | None = None) -> Slate:
        """Draw a slate. ``sds``: each candidate's posterior standard deviation (none: 0, the greedy top-``k``
        but for the epsilon branch)."""
        scores = np.asarray(scores, dtype=float)
        n, k = len(item_ids), min(k, len(item_ids))
        sds = np.zeros(n) if sds is None else np.asarray(sds, dtype=float)
        explored = bool(self._rng.random() < self.epsilon)
        if explored:
            order = self._rng.permutation(n)[:k]
        else:
            order = _ordered_top(scores + sds * self._rng.standard_normal(n), k)
        if sds.any():
            # Further draws, independent of the one served, estimate what the policy shows where.
            same = _ordered_top(self._estimation_draws(scores, sds), k) == order
        else:
            # No uncertainty: every draw is the scores' own top-k, so the estimate is exact with that one row
            # (the propensities of EpsilonGreedySlatePolicy).
            same = _ordered_top(scores, k)[None, :] == order
        at_position = same.mean(axis=0)  # P_TS(order[p] at p), per position
        uniform = self.epsilon / n
        slate_ts = float(same.all(axis=1).mean())
        return Slate(
            item_ids=tuple(item_ids[i] for i in order.tolist()),
            propensity=(1.0 - self.epsilon) * slate_ts + self.epsilon / math.perm(n, k),
            position_propensities=tuple(((1.0 - self.epsilon) * at_position + uniform).tolist()),
            explored=explored,
        )

    def _estimation_draws(self, scores: np.ndarray, sds: np.ndarray) -> np.ndarray:
        """``(draws, n)`` draws of the posterior for the estimates: a window of the bank at a random offset."""
        n = len(scores)
        size = self.draws * n
        if size > self.BANK:
            noise = self._rng.standard_normal((self.draws, n)).astype(np.float32)
        else:
            offset = int(self._rng.integers(0, self.BANK - size + 1))
            noise = self._bank[offset : offset + size].reshape(self.draws, n)
        return scores.astype(np.float32) + sds.astype(np.float32) * noise

    def position_marginals(self, scores: np.ndarray, sds: np.ndarray, k: int) -> np.ndarray:
        """``(n, k)`` matrix: the estimated probability that item ``i`` is shown at position ``p``."""
        return thompson_marginals(np.asarray(scores, dtype=float)[None, :], np.asarray(sds, dtype=float)[None, :],
                                  k, self.epsilon, self.draws, self._rng)[0]  # fmt: skip

    def slate_distribution(self, scores: np.ndarray, sds: np.ndarray, k: int) -> dict[tuple[int, ...], float]:
        """The estimated probability of every ordered slate (indices into ``scores``) the policy can show: the
        epsilon branch can show any of the ``P(n, k)``; their probabilities sum to 1."""
        scores, sds = np.asarray(scores, dtype=float), np.asarray(sds, dtype=float)
        n, k = len(scores), min(k, len(scores))
        tops = _ordered_top(scores + sds * self._rng.standard_normal((self.draws, n)), k)
        drawn, counts = np.unique(tops, axis=0, return_counts=True)
        out = dict.fromkeys(itertools.permutations(range(n), k), self.epsilon / math.perm(n, k))
        for slate, count in zip(map(tuple, drawn.tolist()), counts.tolist()):
            out[slate] += (1.0 - self.epsilon) * count / self.draws
        return out


def thompson_marginals(scores: np.ndarray, sds: np.ndarray, k: int, epsilon: float, draws: int,
                       rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Position marginals of :class:`ThompsonSlatePolicy` for a batch of rounds, by Monte Carlo.

    ``scores`` and ``sds`` are ``(rounds, n)``; returns ``(rounds, n, k)`` whose ``[r, i, p]`` is the estimated
    P(item i at position p). Every position's marginals sum to 1 exactly.
    """
    rounds, n = scores.shape
    k = min(k, n)
    marginals = np.full((rounds, n, k), epsilon / n)
    for r in range(rounds):
        tops = _ordered_top(scores[r] + sds[r] * rng.standard_normal((draws, n)), k)
        marginals[r] += (1.0 - epsilon) * _position_shares(tops, n)
    return marginals


def _position_shares(tops: np.ndarray, n: int) -> np.ndarray:
    """``(n, k)``: the share of the rows of ``tops`` (ordered slates of ``k`` indices below ``n``) that put item
    ``i`` at position ``p``."""
    shares = np.empty((n, tops.shape[1]))
    for pos in range(tops.shape[1]):
        shares[:, pos] = np.bincount(tops[:, pos], minlength=n) / len(tops)
    return shares


def _ordered_top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, largest first, along the last axis (1-D or 2-D ``values``). A full
    sort: for rows of tens of candidates it is faster than a partition followed by a sort of the ``k``. Ties go
    to the lower index in one row (a stable sort); the rows of Monte Carlo draws, continuous, use the default
    sort, 2-3x faster on them."""
    return np.argsort(-values, axis=-1, kind="stable" if values.ndim == 1 else None)[..., :k]


def greedy_order(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the top-``k`` scores, highest first; ties go to the lower index (stable sort)."""
    return _ordered_top(np.asarray(scores, dtype=float), k).tolist()


def epsilon_greedy_marginals(scores: np.ndarray, k: int, epsilon: float) -> np.ndarray:
    """Vectorised position marginals of :class:`EpsilonGreedySlatePolicy` for a batch of rounds.

    ``scores`` is ``(rounds, n)``; returns ``(rounds, n, k)`` whose ``[r, i, p]`` is P(item i at position p).
    """
    rounds, n = scores.shape
    marginals = np.full((rounds, n, k), epsilon / n)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    marginals[np.arange(rounds)[:, None], top, np.arange(k)[None, :]] += 1.0 - epsilon
    return marginals


def _enumerated_marginals(weights: np.ndarray, k: int) -> np.ndarray:
    marginals = np.zeros((len(weights), k))
    for order in itertools.permutations(range(len(weights)), k):
        prob = plackett_luce_probability(weights, order)
        for pos, index in enumerate(order):
            marginals[index, pos] += prob
    return marginals


def _gumbel_marginals(weights: np.ndarray, k: int, draws: int, seed: int) -> np.ndarray:
    # Gumbel top-k of log-weights draws exactly from Plackett-Luce; a fixed seed keeps logged marginals stable.
    rng = np.random.default_rng(seed)
    keys = np.log(np.maximum(weights, 1e-300)) + rng.gumbel(size=(draws, len(weights)))
    return _position_shares(_ordered_top(keys, k), len(weights))
