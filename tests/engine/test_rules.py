"""Business rules on hand-computed cases."""

import numpy as np
import pytest

from kairos.engine.rules import (
    Candidate,
    CategoryCap,
    ExcludeHidden,
    ExcludePurchased,
    FrequencyCap,
    ImpressionHistory,
    MMRDiversify,
    PurchaseHistory,
    RuleContext,
    RulePipeline,
)

DAY = 86_400.0


def ids(candidates):
    return [c.item_id for c in candidates]


def ranked():
    return [
        Candidate("a", 5.0, "shoes", "cr1"),
        Candidate("b", 4.0, "shoes", "cr1"),
        Candidate("c", 3.0, "hats", "cr2"),
        Candidate("d", 2.0, "shoes", None),
        Candidate("e", 1.0, None, "cr3"),
    ]


def test_exclude_purchased_within_window_only():
    history = PurchaseHistory(window_s=DAY)
    history.record("u1", "a", ts=0.0)
    history.record("u1", "c", ts=DAY / 2)
    history.record("u2", "b", ts=DAY / 2)
    step = ExcludePurchased(history)
    assert ids(step.apply(ranked(), RuleContext("u1", now=DAY))) == ["b", "d", "e"]  # a at exactly 1 day: excluded
    assert ids(step.apply(ranked(), RuleContext("u1", now=DAY + 1))) == ["a", "b", "d", "e"]  # a expired
    history.prune(now=10 * DAY)
    assert history._last == {}


def test_frequency_cap_per_user_item_counts_window():
    history = ImpressionHistory(window_s=3600)
    for ts in (0.0, 100.0, 200.0):
        history.record("u1", "a", ts)
    history.record("u1", "b", 100.0)
    step = FrequencyCap(history, max_impressions=3, key="item")
    assert ids(step.apply(ranked(), RuleContext("u1", now=300.0))) == ["b", "c", "d", "e"]
    # at t = 3600 the first impression (t=0) has left the window: 2 < 3, a is back
    assert ids(step.apply(ranked(), RuleContext("u1", now=3600.0))) == ["a", "b", "c", "d", "e"]
    assert ids(step.apply(ranked(), RuleContext("u2", now=300.0))) == ["a", "b", "c", "d", "e"]


def test_frequency_cap_per_user_creative():
    history = ImpressionHistory(window_s=3600)
    history.record("u1", "cr1", 0.0)
    history.record("u1", "cr1", 10.0)
    history.record("u1", "cr2", 10.0)
    step = FrequencyCap(history, max_impressions=2, key="creative")
    # cr1 shown twice -> a and b dropped; cr2 once -> c kept; d has no creative -> kept
    assert ids(step.apply(ranked(), RuleContext("u1", now=20.0))) == ["c", "d", "e"]
    history.prune(now=1e6)
    assert history._shown == {}


def test_exclude_hidden_static_and_live():
    stock = {"b"}
    assert ids(ExcludeHidden({"a", "e"}).apply(ranked(), RuleContext("u", 0.0))) == ["b", "c", "d"]
    live = ExcludeHidden(lambda: stock)
    stock.add("c")
    assert ids(live.apply(ranked(), RuleContext("u", 0.0))) == ["a", "d", "e"]


def test_category_cap_keeps_best_per_category():
    shuffled = ranked()[::-1]
    kept = CategoryCap(max_per_category=2).apply(shuffled, RuleContext("u", 0.0))
    assert ids(kept) == ["a", "b", "c", "e"]  # third shoe d dropped; uncategorised e passes


def test_mmr_hand_computed():
    # a and b are identical directions, c is orthogonal. Scores 1.0, 0.9, 0.0 -> relevance 1.0, 0.9, 0.0.
    embeddings = {"a": np.array([1.0, 0.0]), "b": np.array([2.0, 0.0]), "c": np.array([0.0, 1.0])}
    candidates = [Candidate("a", 1.0), Candidate("b", 0.9), Candidate("c", 0.0)]
    # pick 1: a (0.5 * 1.0). pick 2: b -> 0.5*0.9 - 0.5*1 = -0.05, c -> 0 - 0 = 0 -> c
    assert ids(MMRDiversify(embeddings, k=2, lambda_=0.5).apply(candidates, RuleContext("u", 0.0))) == ["a", "c"]
    # with lambda 1 MMR is plain relevance order
    assert ids(MMRDiversify(embeddings, k=3, lambda_=1.0).apply(candidates, RuleContext("u", 0.0))) == ["a", "b", "c"]


def test_mmr_items_without_embedding_are_dissimilar():
    candidates = [Candidate("a", 1.0), Candidate("b", 0.5)]
    assert ids(MMRDiversify({}, k=2).apply(candidates, RuleContext("u", 0.0))) == ["a", "b"]
    assert MMRDiversify({}, k=2).apply([], RuleContext("u", 0.0)) == []


def test_pipeline_records_which_step_dropped_each_item():
    purchases = PurchaseHistory(window_s=DAY)
    purchases.record("u1", "b", 0.0)
    impressions = ImpressionHistory(window_s=DAY)
    impressions.record("u1", "cr2", 0.0)
    pipeline = RulePipeline([
        ExcludePurchased(purchases),
        ExcludeHidden({"e"}),
        FrequencyCap(impressions, max_impressions=1, key="creative"),
        CategoryCap(max_per_category=1),
    ])
    outcome = pipeline.apply(ranked(), RuleContext("u1", now=10.0))
    assert ids(outcome.kept) == ["a"]
    assert outcome.dropped == {
        "b": "exclude_purchased", "e": "exclude_hidden", "c": "frequency_cap_creative", "d": "category_cap",
    }


def test_frequency_cap_rejects_unknown_key():
    with pytest.raises(ValueError):
        FrequencyCap(ImpressionHistory(1.0), 1, key="campaign")


def test_impression_history_forgets_pairs_nobody_asks_about_again():
    """Every shopper is shown something once and never comes back: the map stays near one window's traffic."""
    history = ImpressionHistory(window_s=100.0)
    for n in range(50_000):
        history.record(f"user{n}", "item", ts=float(n))
    assert len(history) < 10_000  # ~100 pairs are inside the window; the rest are pruned as the map doubles
    assert history.count("user49999", "item", now=49_999.0) == 1
    assert history.count("user0", "item", now=49_999.0) == 0
