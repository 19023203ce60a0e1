"""Business rules on hand-computed cases."""

import numpy as np
import orjson
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


def test_one_users_history_round_trips_compactly_and_keeps_the_caps():
    """A shopper's history as stored with their state: the same cap decisions after the round trip, only what
    the window and the cap need, and loading it replaces what memory held for them."""
    history = ImpressionHistory(window_s=DAY, max_per_key=3)
    for n in range(5):  # "a" shown 5 times: the 3 newest are enough for a cap of 3
        history.record("u1", "a", 1000.0 + n * 60.0 + 0.1234)
    history.record("u1", "b", 1000.1234)  # shown with "a"'s first slate, a day ago at the save below
    history.record("u1", "c", 1180.1234)
    history.record("u2", "a", 1000.0)
    now = 1000.1234 + DAY
    saved = orjson.loads(orjson.dumps(history.user_state("u1", now, max_keys=500)))
    assert saved["k"] == ["a", "c"] and saved["n"] == [3, 1]  # "b" left the window (and memory: forgotten here)
    assert history.count("u1", "b", now) == 0 and len(history) == 3
    assert len(saved["a"]) == 3  # "c" was shown with "a"'s 4th slate: one time stored for both

    restored = ImpressionHistory(window_s=DAY, max_per_key=3)
    restored.record("u1", "stale", 5.0)  # replaced by the stored history
    restored.load_user("u1", saved)
    cap = FrequencyCap(restored, max_impressions=3)
    assert ids(cap.apply(ranked(), RuleContext("u1", now))) == ["b", "c", "d", "e"]
    for item, expected in (("a", 3), ("c", 1), ("stale", 0)):
        assert restored.count("u1", item, now) == history.count("u1", item, now) == expected
    assert [round(ts, 3) for ts in restored._shown["u1"]["a"]] == [1120.123, 1180.123, 1240.123]  # to the ms
    # "a" leaves the cap when its oldest kept impression leaves the window, as it does in the original
    later = 1120.1234 + DAY + 0.01
    assert restored.count("u1", "a", later) == history.count("u1", "a", later) == 2
    assert restored.user_state("u1", later, max_keys=500)["n"] == [2, 1]


def test_stored_history_keeps_the_items_shown_last_and_none_for_no_history():
    history = ImpressionHistory(window_s=DAY)
    for n in range(10):
        history.record("u1", f"i{n}", float(n))
    saved = history.user_state("u1", now=100.0, max_keys=4)
    assert saved["k"] == ["i6", "i7", "i8", "i9"]
    assert history.user_state("u2", now=100.0, max_keys=4) is None
    assert history.user_state("u1", now=10 * DAY, max_keys=4) is None  # all outside the window
    history.load_user("u1", None)  # a stored state written before the history was kept
    assert history.count("u1", "i9", now=100.0) == 0
