"""Off-policy evaluation of slate policies on Open Bandit Dataset logs (Saito et al., 2021).

Each logged row is one (round, position): the logging policy showed ``item_id`` at ``position`` with probability
``propensity_score`` and observed ``click``. An evaluation policy gives ``pi_e(item | context, position)`` for every
row, as an ``(rows, items, positions)`` array. Following the Open Bandit paper, every row is treated as one decision,
so a policy's value is its expected click rate per shown slot, directly comparable with the logged CTR.

Estimators, with ``w = pi_e(a_i | x_i, p_i) / pi_b(a_i | x_i, p_i)``:

* IPS: ``mean(w r)``; unbiased when the logged propensities are right and ``pi_b > 0`` wherever ``pi_e > 0``.
* SNIPS: ``sum(w r) / sum(w)``; a little biased, much less variance when a few weights are huge.
* DR: ``mean(sum_a pi_e(a | x_i, p_i) q(x_i, a, p_i) + w (r - q(x_i, a_i, p_i)))`` with ``q`` a click model fitted on
  the first time slice; unbiased if either the propensities or ``q`` are right.

95% intervals come from a seeded nonparametric bootstrap over rows (percentile method).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from river import linear_model, optim

from kairos.engine.bandit import epsilon_greedy_marginals, thompson_marginals

N_USER_FEATURES = 4


@dataclass(frozen=True)
class BanditLog:
    """Open-Bandit-shaped logs as arrays; ``positions`` are 0-based, ``affinity`` is ``(rows, items)``."""

    actions: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    pscore: np.ndarray
    user_features: np.ndarray  # (rows, N_USER_FEATURES) of hashed strings
    affinity: np.ndarray
    n_items: int
    n_positions: int

    def __len__(self) -> int:
        return len(self.actions)

    def take(self, rows: np.ndarray | slice) -> BanditLog:
        return BanditLog(self.actions[rows], self.positions[rows], self.rewards[rows], self.pscore[rows],
                         self.user_features[rows], self.affinity[rows], self.n_items, self.n_positions)


#: An evaluation policy: logged rounds -> ``(rows, items, positions)`` action probabilities.
EvaluationPolicy = Callable[[BanditLog], np.ndarray]


def load_open_bandit(data_dir: str | Path, policy: str = "bts", segment: str = "all") -> BanditLog:
    """Read ``<data_dir>/open_bandit/<policy>/<segment>/log.parquet`` (or the folder itself), in time order."""
    folder = Path(data_dir)
    if (folder / "open_bandit").exists():
        folder = folder / "open_bandit"
    frame = pd.read_parquet(folder / policy / segment / "log.parquet")
    frame = frame.assign(_ts=pd.to_datetime(frame["timestamp"], utc=True)).sort_values("_ts", kind="stable")
    affinity_cols = sorted((c for c in frame.columns if c.startswith("user-item_affinity_")),
                           key=lambda c: int(c.rsplit("_", 1)[1]))
    n_items = max(len(affinity_cols), int(frame["item_id"].max()) + 1)
    affinity = np.zeros((len(frame), n_items))
    affinity[:, : len(affinity_cols)] = frame[affinity_cols].to_numpy(dtype=float)
    return BanditLog(
        actions=frame["item_id"].to_numpy(dtype=int),
        positions=frame["position"].to_numpy(dtype=int) - 1,
        rewards=frame["click"].to_numpy(dtype=float),
        pscore=frame["propensity_score"].to_numpy(dtype=float),
        user_features=frame[[f"user_feature_{j}" for j in range(N_USER_FEATURES)]].astype(str).to_numpy(),
        affinity=affinity,
        n_items=n_items,
        n_positions=int(frame["position"].max()),
    )


class ClickModel:
    """River logistic regression of click on user features, item, position and user-item affinity.

    Learned online in time order on a training slice; scored in bulk by reading its weights back, since the model
    is linear (one River call per row x item x position would be far too slow for evaluation).
    """

    def __init__(self, learning_rate: float = 0.05, l2: float = 1e-4) -> None:
        self.learning_rate, self.l2 = learning_rate, l2
        self.model: linear_model.LogisticRegression | None = None

    def fit(self, log: BanditLog) -> ClickModel:
        base = float(np.clip(log.rewards.mean(), 1e-4, 1 - 1e-4))
        # Start the intercept at the base rate's logit: with clicks this rare, SGD from 0 would spend the whole
        # slice just walking the intercept down and the other weights would learn from miscalibrated errors.
        self.model = linear_model.LogisticRegression(
            optimizer=optim.SGD(self.learning_rate), l2=self.l2, intercept_init=math.log(base / (1 - base)))
        for i in range(len(log)):
            self.model.learn_one(_row_features(log, i), bool(log.rewards[i]))
        return self

    def item_scores(self, log: BanditLog) -> np.ndarray:
        """``(rows, items)`` position-free logits: the part of the model that ranks items for a user."""
        w = self.model.weights
        item_term = np.array([w.get(f"item={a}", 0.0) for a in range(log.n_items)])
        return item_term[None, :] + w.get("affinity", 0.0) * log.affinity

    def click_probabilities(self, log: BanditLog) -> np.ndarray:
        """``(rows, items, positions)`` predicted click probability of every item at every position."""
        w = self.model.weights
        user_term = np.array([sum(w.get(f"uf{j}={v}", 0.0) for j, v in enumerate(row)) for row in log.user_features])
        pos_term = np.array([w.get(f"pos={p}", 0.0) for p in range(log.n_positions)])
        logits = self.model.intercept + user_term[:, None, None] + self.item_scores(log)[:, :, None] + pos_term
        return 1.0 / (1.0 + np.exp(-logits))


def _row_features(log: BanditLog, i: int) -> dict[str, float]:
    a = int(log.actions[i])
    x = {f"uf{j}={v}": 1.0 for j, v in enumerate(log.user_features[i])}
    x.update({f"item={a}": 1.0, f"pos={int(log.positions[i])}": 1.0, "affinity": float(log.affinity[i, a])})
    return x


def engine_policy(model: ClickModel, epsilon: float = 0.1) -> EvaluationPolicy:
    """The engine's slate policy: epsilon-greedy over the model's item scores, exact per-position propensities."""

    def action_probabilities(log: BanditLog) -> np.ndarray:
        return epsilon_greedy_marginals(model.item_scores(log), log.n_positions, epsilon)

    return action_probabilities


def selector_policy(train: BanditLog, epsilon: float = 0.05, seed: int = 0) -> EvaluationPolicy:
    """The live engine's own feedback loop as the evaluation policy.

    A ``Selector`` is built exactly as the worker builds one, and its ``FeedbackCorrector`` (the River-optimised
    item x segment correction that serves in production) learns from the training slice as it would from joined
    impressions: every logged row is a labelled example (a click with the engine's position-bias weight from its
    ``PositionBias``, else a skip), its segment the shopper's first Open Bandit user feature (the stand-in for
    the engine's interest segment, which needs a browsing history the log does not have), its logit the row's
    user-item affinity placed as the Selector places ranker scores (best candidate at ``TOP_LOGIT``). On the
    evaluation slice the policy is the Selector's: corrected logits, then its Thompson-sampled slate policy (each
    logit drawn around the corrected one with the correction's uncertainty for that item and segment, an epsilon
    floor of uniform slates), whose position marginals are estimated from 1,000 draws per row."""
    from kairos.engine.config import EngineConfig
    from kairos.engine.feedback import LabelledExample
    from kairos.engine.selection import TOP_LOGIT, Selector

    selector = Selector(EngineConfig(), epsilon=epsilon, seed=seed)
    corrector, position_bias = selector.corrector, selector.join.position_bias

    def base_logits(log: BanditLog) -> np.ndarray:
        return log.affinity - log.affinity.max(axis=1, keepdims=True) + TOP_LOGIT

    logits = base_logits(train)
    for i in range(len(train)):
        position, item, clicked = int(train.positions[i]) + 1, int(train.actions[i]), bool(train.rewards[i])
        position_bias.observe(position, clicked)
        corrector.learn(LabelledExample(
            f"r{i}", "", str(item), position, int(clicked), "click" if clicked else "skip", None,
            position_bias.weight(position) if clicked else 1.0, f"uf0={train.user_features[i, 0]}",
            float(logits[i, item]),
        ))  # fmt: skip

    def action_probabilities(log: BanditLog) -> np.ndarray:
        items = [str(a) for a in range(log.n_items)]
        raw = base_logits(log)
        segments = [f"uf0={log.user_features[i, 0]}" for i in range(len(log))]
        corrected = np.stack([corrector.correct(items, segment, raw[i]) for i, segment in enumerate(segments)])
        sds = np.stack([corrector.uncertainty(items, segment, selector.exploration_sd) for segment in segments])
        return thompson_marginals(corrected, sds, log.n_positions, selector.policy.epsilon, draws=1_000,
                                  rng=np.random.default_rng(seed))  # fmt: skip

    return action_probabilities


def logging_policy_replay(log: BanditLog) -> np.ndarray:
    """An evaluation "policy" that puts the logged propensity on each logged action (a sanity check: IPS = CTR)."""
    probs = np.zeros((len(log), log.n_items, log.n_positions))
    probs[np.arange(len(log)), log.actions, log.positions] = log.pscore
    return probs


def ope_terms(log: BanditLog, pi_e: np.ndarray, q_hat: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-row terms the estimators average: importance weights, weighted rewards and DR terms."""
    rows = np.arange(len(log))
    w = pi_e[rows, log.actions, log.positions] / log.pscore
    terms = {"reward": log.rewards, "weight": w, "weighted_reward": w * log.rewards}
    if q_hat is not None:
        at_position = q_hat[rows, :, log.positions]  # (rows, items)
        direct = np.sum(pi_e[rows, :, log.positions] * at_position, axis=1)
        terms["dm"] = direct
        terms["dr"] = direct + w * (log.rewards - at_position[rows, log.actions])
    return terms


def estimates(terms: dict[str, np.ndarray]) -> dict[str, float]:
    """Point estimates from :func:`ope_terms`."""
    out = {"logged_ctr": float(terms["reward"].mean()), "ips": float(terms["weighted_reward"].mean()),
           "snips": float(terms["weighted_reward"].sum() / max(terms["weight"].sum(), 1e-12))}
    for key in ("dm", "dr"):
        if key in terms:
            out[key] = float(terms[key].mean())
    return out


def bootstrap_ci(terms: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap interval of every estimate in :func:`estimates`, resampling rows with replacement."""
    rng = np.random.default_rng(seed)
    n = len(terms["reward"])
    samples: dict[str, list[float]] = {}
    for start in range(0, n_boot, 100):  # chunks of 100 resamples bound memory at 100 x rows indices
        idx = rng.integers(0, n, size=(min(100, n_boot - start), n))
        for key, value in _resampled_estimates(terms, idx).items():
            samples.setdefault(key, []).extend(value.tolist())
    tail = (1 - level) / 2 * 100
    return {key: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for key, v in samples.items()}


def _resampled_estimates(terms: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    out = {"logged_ctr": terms["reward"][idx].mean(axis=1), "ips": terms["weighted_reward"][idx].mean(axis=1),
           "snips": terms["weighted_reward"][idx].sum(axis=1) / np.maximum(terms["weight"][idx].sum(axis=1), 1e-12)}
    for key in ("dm", "dr"):
        if key in terms:
            out[key] = terms[key][idx].mean(axis=1)
    return out


def evaluate_policy(log: BanditLog, pi_e: np.ndarray, q_hat: np.ndarray | None = None, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """Point estimates and bootstrap intervals of an evaluation policy's value on ``log``."""
    terms = ope_terms(log, pi_e, q_hat)
    return {"estimates": estimates(terms), "ci95": bootstrap_ci(terms, n_boot, seed),
            "max_weight": float(terms["weight"].max())}


def evaluate_open_bandit(data_dir: str | Path, policy: str = "bts", segment: str = "all", seed: int = 0,
                         train_fraction: float = 0.3, epsilon: float = 0.1, n_boot: int = 1000,
                         make_policy: Callable[[ClickModel], EvaluationPolicy] | None = None,
                         engine: str = "selector") -> dict:
    """Fit a click model on the first ``train_fraction`` of the log (time order) and evaluate the engine policy
    (or ``make_policy(model)``) on the rest with IPS, SNIPS, DM and DR. ``engine``: ``"selector"`` (the live
    engine's feedback corrector and slate policy, :func:`selector_policy`) or ``"click-model"`` (epsilon-greedy
    over the click model's item scores); the click model is DR's and DM's outcome model either way.

    Returns ``logged_ctr``, ``engine_ips``, ``engine_snips``, ``engine_dm``, ``engine_dr``, ``ci95`` (estimator ->
    ``[lo, hi]``, keys ``logged_ctr``, ``ips``, ``snips``, ``dm``, ``dr``), ``rounds`` (evaluated rows),
    ``train_rounds``, ``max_weight`` and the settings used.
    """
    log = load_open_bandit(data_dir, policy, segment)
    split = int(len(log) * train_fraction)
    train, test = log.take(slice(0, split)), log.take(slice(split, None))
    model = ClickModel().fit(train)
    q_hat = model.click_probabilities(test)
    if make_policy is not None:
        evaluation_policy = make_policy(model)
    elif engine == "selector":
        evaluation_policy = selector_policy(train, epsilon, seed)
    else:
        evaluation_policy = engine_policy(model, epsilon)
    result = evaluate_policy(test, evaluation_policy(test), q_hat, n_boot, seed)
    point = result["estimates"]
    out = {
        "logged_ctr": point["logged_ctr"], "engine_ips": point["ips"], "engine_snips": point["snips"],
        "engine_dm": point["dm"], "engine_dr": point["dr"], "ci95": result["ci95"], "rounds": len(test),
        "train_rounds": len(train), "max_weight": result["max_weight"], "policy": policy, "segment": segment,
        "epsilon": epsilon, "seed": seed, "engine": engine if make_policy is None else "custom",
    }
    if make_policy is None and engine == "selector":
        # The earlier stand-in (epsilon-greedy over the click model's item scores), for comparison.
        reference = evaluate_policy(test, engine_policy(model, epsilon)(test), q_hat, n_boot, seed)["estimates"]
        out["click_model_policy"] = {k: reference[k] for k in ("ips", "snips", "dm", "dr")}
    return out
