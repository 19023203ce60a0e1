"""Impression-click-purchase join, position-bias weights and the online correction model."""

import pytest

from kairos.engine.feedback import (
    FeedbackCorrector,
    FeedbackJoin,
    Impression,
    Interaction,
    LabelledExample,
    PositionBias,
)


def impression(rec="r1", user="u1", items=("a", "b", "c"), ts=0.0, event=None, **kwargs):
    return Impression(event or f"imp-{rec}", rec, user, tuple(items), ts, **kwargs)


def click(item, ts, user="u1", rec=None, event=None, kind="click"):
    return Interaction(event or f"{kind}-{item}-{ts}", user, item, ts, kind=kind, rec_id=rec)


def test_click_joined_by_rec_id_with_position_delay_and_weight():
    join = FeedbackJoin(attribution_window_s=100, position_bias=PositionBias(eta=1.0))
    join.add_impression(impression(logits=(1.0, 0.5, 0.2), segment="women"))
    [example] = join.add_interaction(click("c", ts=12.0, rec="r1"))
    assert (example.item_id, example.position, example.label, example.kind) == ("c", 3, 1, "click")
    assert example.delay_s == 12.0
    assert example.weight == pytest.approx(3.0)  # prior examination of position 3 = 1/3
    assert (example.logit, example.segment) == (0.2, "women")


def test_click_without_rec_id_joins_latest_impression_of_user_showing_item():
    join = FeedbackJoin(attribution_window_s=100)
    join.add_impression(impression("r1", items=("a", "b"), ts=0.0))
    join.add_impression(impression("r2", items=("b", "a"), ts=10.0))
    join.add_impression(impression("r3", user="u2", items=("a",), ts=11.0))
    [example] = join.add_interaction(click("a", ts=20.0))
    assert (example.rec_id, example.position, example.delay_s) == ("r2", 2, 10.0)


def test_click_outside_window_or_for_unshown_item_is_unattributed():
    join = FeedbackJoin(attribution_window_s=30)
    join.add_impression(impression(ts=0.0))
    assert join.add_interaction(click("zzz", ts=5.0)) == []
    late = join.add_interaction(click("a", ts=31.0))
    # the late click is not credited; advancing past the window closes r1 with three skips
    assert [e.kind for e in late] == ["skip", "skip", "skip"]
    assert join.unattributed == 2 and join.pending == 0


def test_skips_emitted_when_window_closes_for_unclicked_items_only():
    join = FeedbackJoin(attribution_window_s=60)
    join.add_impression(impression(ts=0.0))
    join.add_interaction(click("b", ts=5.0))
    assert join.advance(60.0) == []  # still open at exactly the window
    skips = join.advance(60.5)
    assert [(e.item_id, e.position, e.label, e.delay_s) for e in skips] == [("a", 1, 0, None), ("c", 3, 0, None)]


def test_idempotent_by_event_id_and_single_label_per_shown_item():
    join = FeedbackJoin(attribution_window_s=60)
    join.add_impression(impression(ts=0.0))
    assert join.add_impression(impression(ts=0.0)) == [] and join.pending == 1
    assert len(join.add_interaction(click("a", ts=1.0, event="e1"))) == 1
    assert join.add_interaction(click("a", ts=1.0, event="e1")) == []  # replayed event
    assert join.add_interaction(click("a", ts=2.0, event="e2")) == []  # second click, same item


def test_purchase_joined_separately_from_click():
    join = FeedbackJoin(attribution_window_s=600)
    join.add_impression(impression(ts=0.0))
    join.add_interaction(click("a", ts=3.0))
    [purchase] = join.add_interaction(click("a", ts=300.0, kind="purchase"))
    assert (purchase.kind, purchase.label, purchase.delay_s, purchase.weight) == ("purchase", 1, 300.0, 1.0)


def test_memory_bounded_by_max_pending():
    join = FeedbackJoin(attribution_window_s=1e9, max_pending=2)
    join.add_impression(impression("r1", items=("a",), ts=0.0))
    join.add_impression(impression("r2", items=("b",), ts=1.0))
    closed = join.add_impression(impression("r3", items=("c",), ts=2.0))
    assert [(e.rec_id, e.kind) for e in closed] == [("r1", "skip")]
    assert join.pending == 2


def test_event_ids_forgotten_after_two_windows():
    join = FeedbackJoin(attribution_window_s=10)
    for i in range(100):
        join.add_impression(impression(f"r{i}", items=("a",), ts=float(i)))
        join.add_interaction(click("a", ts=float(i), event=f"e{i}"))
    assert len(join._seen) <= 2 * 21


def test_only_interactions_that_joined_are_remembered_and_ids_are_bounded():
    """Clicks that join nothing (most of a stream) cost no memory; the id set also has a hard cap."""
    join = FeedbackJoin(attribution_window_s=1e9, max_pending=5)
    for i in range(1000):
        join.add_interaction(click("z", ts=float(i), event=f"e{i}"))
    assert len(join._seen) == 0
    for i in range(100):
        join.add_impression(impression(f"r{i}", items=("a",), ts=float(i)))
    assert len(join._seen) <= 4 * 5


def test_position_bias_prior_and_online_estimate():
    bias = PositionBias(eta=1.0, prior_strength=100, prior_ctr=0.1, max_weight=5.0)
    assert bias.examination(1) == 1.0 and bias.examination(4) == pytest.approx(0.25)
    assert bias.weight(10) == 5.0  # capped
    # randomized traffic: position 2 clicked as often as position 1 -> examination moves towards 1
    for _ in range(900):
        bias.observe(1, clicked=False)
        bias.observe(2, clicked=False)
    for _ in range(100):
        bias.observe(1, clicked=True)
        bias.observe(2, clicked=True)
    # smoothed CTRs: p1 = (100 + 10) / 1100, p2 = (100 + 5) / 1100 -> 105 / 110
    assert bias.examination(2) == pytest.approx(105 / 110)


def test_only_randomized_impressions_update_examination():
    bias = PositionBias()
    join = FeedbackJoin(attribution_window_s=10, position_bias=bias)
    join.add_impression(impression("r1", ts=0.0))
    join.add_interaction(click("c", ts=1.0, rec="r1"))
    join.advance(100.0)
    assert bias._impressions == {}
    join.add_impression(impression("r2", ts=200.0, randomized=True))
    join.add_interaction(click("c", ts=201.0, rec="r2"))
    join.advance(300.0)
    assert bias._impressions == {1: 1, 2: 1, 3: 1}
    assert {p: c for p, c in bias._clicks.items() if c} == {3: 1}


def example(item, label, segment="all", logit=0.0, weight=1.0):
    return LabelledExample("r", "u", item, 1, label, "click" if label else "skip", None, weight, segment, logit)


def test_untrained_corrector_is_identity():
    corrector = FeedbackCorrector()
    assert corrector.correct(["a", "b"], "all", [1.5, -0.5]).tolist() == [1.5, -0.5]


def test_clicks_on_item_raise_its_corrected_score():
    corrector = FeedbackCorrector()
    logits = [0.0, 0.2]
    before = corrector.correct(["x", "y"], "all", logits)
    for _ in range(4):
        corrector.learn(example("x", 1))
        corrector.learn(example("y", 0))
    after = corrector.correct(["x", "y"], "all", logits)
    assert after[0] > before[0]
    assert after[0] > after[1]  # x now outranks y, which the ranker preferred


def test_clicks_raise_similar_items_too():
    neighbours = {"x": ["z"]}
    corrector = FeedbackCorrector(similarity=lambda item: neighbours.get(item, []))
    for _ in range(4):
        corrector.learn(example("x", 1))
    x, y, z = corrector.correct(["x", "y", "z"], "all", [0.0, 0.0, 0.0])
    assert x > z > y


def test_correction_is_per_segment_and_purchases_ignored():
    corrector = FeedbackCorrector()
    for _ in range(5):
        corrector.learn(example("x", 1, segment="men"))
        corrector.learn(example("x", 0, segment="women"))
    men, women = corrector.correct(["x"], "men", [0.0])[0], corrector.correct(["x"], "women", [0.0])[0]
    assert men > women
    snapshot = dict(corrector._weights)
    corrector.learn(LabelledExample("r", "u", "x", 1, 1, "purchase", 1.0, 1.0, "men", 0.0))
    assert corrector._weights == snapshot


def test_position_weight_scales_the_update():
    light, heavy = FeedbackCorrector(), FeedbackCorrector()
    light.learn(example("x", 1, weight=1.0))
    heavy.learn(example("x", 1, weight=3.0))
    assert heavy.correct(["x"], "all", [0.0])[0] == pytest.approx(3 * light.correct(["x"], "all", [0.0])[0])


def test_shift_is_clipped():
    """The item part (item + item x segment) and the shared segment part are each clipped to +-max_shift."""
    corrector = FeedbackCorrector(max_shift=1.0)
    for _ in range(200):
        corrector.learn(example("x", 1, weight=10.0))
    bias = corrector._weights["bias"]
    assert corrector.correct(["x"], "all", [0.0])[0] == pytest.approx(bias + 1.0 + 1.0)


def test_end_to_end_join_then_learn():
    join, corrector = FeedbackJoin(attribution_window_s=60), FeedbackCorrector()
    examples = []
    for i in range(3):
        examples += join.add_impression(impression(f"r{i}", ts=100.0 * i, items=("a", "b"), logits=(0.3, 0.3)))
        examples += join.add_interaction(click("b", ts=100.0 * i + 5, rec=f"r{i}"))
    examples += join.advance(1e6)
    for ex in examples:
        corrector.learn(ex)
    a, b = corrector.correct(["a", "b"], "all", [0.3, 0.3])
    assert b > a


def test_join_round_trips_through_its_checkpoint_and_labels_each_impression_once():
    """A join restored from its JSON state emits exactly the examples the original emits from the same events:
    clicks on impressions shown before the save, the skips of their window, nothing for a click it already
    labelled or an event id it already saw."""
    import orjson

    def fill() -> FeedbackJoin:
        join = FeedbackJoin(attribution_window_s=100, position_bias=PositionBias(prior_strength=2.0))
        join.add_impression(impression("r1", items=("a", "b", "c"), ts=0.0, logits=(-2.5, -3.0, -3.25),
                                       segment="cat:x", randomized=True))  # fmt: skip
        join.add_impression(impression("r2", user="u2", items=("a", "d"), ts=5.0))
        join.add_impression(impression("r3", items=("e",), ts=6.0))
        join.add_interaction(click("b", ts=7.0, rec="r1", event="c1"))
        join.add_interaction(click("d", ts=8.0, user="u2", event="c2", kind="purchase"))
        join.add_interaction(click("zz", ts=9.0, event="c3"))  # joins nothing
        return join

    def rest_of_stream(join: FeedbackJoin) -> list[LabelledExample]:
        return [
            *join.add_interaction(click("b", ts=20.0, rec="r1", event="c1")),  # a redelivery: already labelled
            *join.add_interaction(click("b", ts=21.0, rec="r1", event="c4")),  # a second click on b: no label
            *join.add_interaction(click("c", ts=22.0, rec="r1", event="c5")),
            *join.add_interaction(click("a", ts=30.0, user="u2", event="c6")),  # no rec id: by user and item
            *join.add_impression(impression("r1", items=("a",), ts=31.0, event="imp-r1")),  # a redelivered impression
            *join.add_interaction(click("x", ts=200.0, user="u9", event="c7")),  # closes r1, r2, r3
        ]

    original = fill()
    saved = orjson.loads(orjson.dumps(original.to_state()))
    restored = FeedbackJoin(attribution_window_s=100, position_bias=PositionBias(prior_strength=2.0))
    restored.load_state(saved)
    assert (restored.pending, restored.unattributed) == (3, 1)
    expected = rest_of_stream(original)
    assert rest_of_stream(restored) == expected
    assert [(e.rec_id, e.item_id, e.kind) for e in expected] == [
        ("r1", "c", "click"), ("r2", "a", "click"), ("r1", "a", "skip"), ("r2", "d", "skip"), ("r3", "e", "skip"),
    ]  # fmt: skip
    assert expected[0].logit == -3.25 and expected[0].segment == "cat:x" and expected[0].delay_s == 22.0
    examined = restored.position_bias.examination(3)
    assert examined == original.position_bias.examination(3) != PositionBias(prior_strength=2.0).examination(3)
    assert restored.to_state() == original.to_state()


def test_empty_join_round_trips():
    import orjson

    join = FeedbackJoin()
    restored = FeedbackJoin()
    restored.load_state(orjson.loads(orjson.dumps(join.to_state())))
    assert restored.to_state() == join.to_state()
    assert restored.pending == 0 and restored.advance(1e9) == []


def test_item_x_segment_correction_survives_a_weight_round_trip_even_with_separators_in_ids():
    """The corrector skips the per-candidate lookup for segments it learned nothing about; weights taken back from
    a checkpoint must still apply, including ids whose ``|`` makes the stored key ambiguous."""
    learned = FeedbackCorrector(item_level=False)
    for _ in range(5):
        learned.learn(example("x|1", 1, segment="cat:a|b"))
        learned.learn(example("y", 0, segment="cat:c"))
    items, logits = ["x|1", "y", "z"], [0.0, 0.0, 0.0]
    restored = FeedbackCorrector(item_level=False)
    restored.load_weights(dict(learned._weights))
    for segment in ("cat:a|b", "cat:c", "cold"):
        assert restored.correct(items, segment, logits).tolist() == learned.correct(items, segment, logits).tolist()
    assert learned.correct(items, "cat:a|b", logits)[0] > learned.correct(items, "cold", logits)[0]
    assert learned.correct(items, "cat:c", logits)[1] < learned.correct(items, "cold", logits)[1]
