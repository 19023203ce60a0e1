"""Train the two-headed ranker on :class:`RankerRows`, evaluate it on the held-out time slice, compare baselines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kairos.onnx_export.ranker_data import RankerRows
from kairos.onnx_export.ranker_model import DeepFMCrossRanker, RankerConfig
from kairos.schemas.features import RANKER_DENSE_FEATURES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-6
    click_loss_weight: float = 1.0
    seed: int = 0
    time_budget_s: float | None = None


def _tensors(rows: RankerRows) -> dict[str, torch.Tensor]:
    return {
        "dense": torch.from_numpy(rows.dense.astype(np.float32)),
        "category_id": torch.from_numpy(rows.category_id.astype(np.int64)),
        "item_id": torch.from_numpy(rows.item_id.astype(np.int64)),
        "position": torch.from_numpy(rows.position.astype(np.int64)),
        "label": torch.from_numpy(rows.label.astype(np.float32)),
        "weight": torch.from_numpy(rows.weight.astype(np.float32)),
        "score_mask": torch.from_numpy(rows.score_mask.astype(np.float32)),
        "click_mask": torch.from_numpy(rows.click_mask.astype(np.float32)),
    }


def train_ranker(rows: RankerRows, config: RankerConfig = RankerConfig(), train: TrainConfig = TrainConfig(),
                 progress: Callable[[int, int, float], None] | None = None) -> tuple[DeepFMCrossRanker, list[float]]:
    """Adam on the sum of the two heads' weighted BCE losses (each row trains the head its mask selects)."""
    torch.manual_seed(train.seed)
    model = DeepFMCrossRanker(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    data = _tensors(rows)
    n = len(rows)
    steps_per_epoch = max(1, (n + train.batch_size - 1) // train.batch_size)
    total, step, losses, start = train.epochs * steps_per_epoch, 0, [], time.perf_counter()
    bce = nn.BCEWithLogitsLoss(reduction="none")
    model.train()
    for _ in range(train.epochs):
        order = torch.randperm(n)
        for b in range(steps_per_epoch):
            idx = order[b * train.batch_size : (b + 1) * train.batch_size]
            batch = {k: v[idx] for k, v in data.items()}
            score, click = model(batch["dense"], batch["category_id"], batch["item_id"], batch["position"])
            w = batch["weight"]
            loss_s = (bce(score, batch["label"]) * w * batch["score_mask"]).sum() / batch["score_mask"].sum().clamp(min=1)
            loss_c = (bce(click, batch["label"]) * w * batch["click_mask"]).sum() / batch["click_mask"].sum().clamp(min=1)
            loss = loss_s + train.click_loss_weight * loss_c
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            if progress and (step % 50 == 0 or step == total):
                progress(step, total, float(np.mean(losses[-50:])))
            if train.time_budget_s is not None and time.perf_counter() - start > train.time_budget_s:
                log.warning("ranker training stopped at step %d/%d (time budget)", step, total)
                return model.eval(), losses
    return model.eval(), losses


@torch.no_grad()
def predict(model: DeepFMCrossRanker, rows: RankerRows, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(score, click_logit) for every row."""
    model.eval()
    data = _tensors(rows)
    scores, clicks = [], []
    for i in range(0, len(rows), batch):
        s, c = model(*(data[k][i : i + batch] for k in ("dense", "category_id", "item_id", "position")))
        scores.append(s.numpy())
        clicks.append(c.numpy())
    return np.concatenate(scores), np.concatenate(clicks)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the rank-sum formula (ties get average ranks); NaN with a single class."""
    labels = np.asarray(labels) > 0.5
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    p = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def logistic_regression(x: np.ndarray, y: np.ndarray, max_iter: int = 200, seed: int = 0):
    """Baseline: L2-regularised logistic regression on the dense features (full-batch LBFGS); returns a scorer."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(np.asarray(x, np.float32))
    yt = torch.from_numpy(np.asarray(y, np.float32))
    linear = nn.Linear(xt.shape[1], 1)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter)

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(linear(xt).squeeze(1), yt) + 1e-4 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda dense: linear(torch.from_numpy(np.asarray(dense, np.float32))).squeeze(1).detach().numpy()


def evaluate(model: DeepFMCrossRanker, train: RankerRows, test: RankerRows) -> dict[str, float]:
    """Held-out metrics: the score head vs a popularity baseline and logistic regression; the click head on bandit logs."""
    metrics: dict[str, float] = {}
    score_rows = test.take(np.nonzero(test.score_mask > 0)[0])
    click_rows = test.take(np.nonzero(test.click_mask > 0)[0])
    if len(score_rows):
        score, _ = predict(model, score_rows)
        pop = score_rows.dense[:, RANKER_DENSE_FEATURES.index("item_popularity_log")]
        fit = train.score_mask > 0
        lr = logistic_regression(train.dense[fit], train.label[fit])(score_rows.dense)
        metrics.update(
            ranker_auc=auc(score_rows.label, score),
            ranker_logloss=logloss(score_rows.label, score),
            popularity_auc=auc(score_rows.label, pop),
            logreg_auc=auc(score_rows.label, lr),
            logreg_logloss=logloss(score_rows.label, lr),
            heldout_rows=float(len(score_rows)),
        )
        for source in np.unique(score_rows.source):
            m = score_rows.source == source
            metrics[f"ranker_auc_{source}"] = auc(score_rows.label[m], score[m])
            metrics[f"popularity_auc_{source}"] = auc(score_rows.label[m], pop[m])
    if len(click_rows):
        _, click = predict(model, click_rows)
        metrics.update(click_auc=auc(click_rows.label, click), click_logloss=logloss(click_rows.label, click),
                       click_heldout_rows=float(len(click_rows)))
    return metrics
