"""Offline evaluation: metrics on hand-computed cases, test-then-train without leakage, the popularity baseline,
the closed loop with the simulator and the off-policy evaluation wiring."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest

from factories import T0, click, purchase
from kairos.engine.config import EngineConfig
from kairos.engine.evaluation import (
    LoopTrace,
    MetricTotals,
    PopularityBaseline,
    PrequentialReplay,
    RecommenderLoopArm,
    RecommenderBackend,
    ReplayArms,
    ShardedBackend,
    hit_rate_at_k,
    loop_summary,
    ndcg_at_k,
    novel_items,
    simulate_closed_loop,
)
from kairos.engine.recommender import Recommender
from kairos.engine.simulator import ShopperSimulator

DAY = 86_400.0


def order(user, items, ts, event_id=None):
    return purchase(user=user, items=[(i, "c1", 1.0) for i in items], ts=ts, event_id=event_id)


# --- metrics -----------------------------------------------------------------------------------------------------


def test_hit_rate_counts_any_relevant_item_in_the_first_k():
    assert hit_rate_at_k(["a", "b", "c"], {"c"}, k=3) == 1.0
    assert hit_rate_at_k(["a", "b", "c"], {"c"}, k=2) == 0.0
    assert hit_rate_at_k([], {"a"}) == 0.0


def test_ndcg_matches_hand_computed_values():
    # one relevant item at position 3 of 10: (1 / log2 4) / 1
    assert ndcg_at_k(list("xyazzzzzzz"), {"a"}) == pytest.approx(0.5)
    # relevant {a, b} at positions 1 and 3: (1 + 1/2) / (1 + 1/log2 3)
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # all relevant items first: perfect
    assert ndcg_at_k(["a", "b", "x"], {"a", "b"}) == pytest.approx(1.0)
    # more relevant items than k: the ideal has k hits
    assert ndcg_at_k(["a", "b"], set("abcdef"), k=2) == pytest.approx(1.0)
    # relevant only beyond k, or nothing relevant
    assert ndcg_at_k(list("xxxxxxxxxxa"), {"a"}) == 0.0
    assert ndcg_at_k(["a"], set()) == 0.0


def test_metric_totals_average_over_events():
    totals = MetricTotals(k=10)
    totals.add(["a"], {"a"})  # hr 1, ndcg 1
    totals.add(["x", "a"], {"a"})  # hr 1, ndcg 1/log2(3)
    totals.add(["x"], {"a"})  # hr 0, ndcg 0
    assert totals.summary() == pytest.approx({"hr@10": 2 / 3, "ndcg@10": (1 + 1 / math.log2(3)) / 3})


def test_relevant_items_are_the_distinct_items_new_to_the_shopper():
    event = order("u1", ["a", "b", "a", "c"], T0)
    assert novel_items(event, {"b"}) == ["a", "c"]


# --- popularity baseline ------------------------------------------------------------------------------------------


def test_popularity_counts_orders_with_decay_and_ignores_returns():
    pop = PopularityBaseline(half_life_s=DAY)
    pop.learn(order("u1", ["old", "old", "x"], T0))  # a repeated line counts once
    pop.learn(order("u2", ["old"], T0))
    pop.learn(order("u3", ["new"], T0 + 2 * DAY))
    pop.learn(purchase(user="u4", items=[("ret", "c1", 1.0)] * 1, ts=T0 + 2 * DAY, is_return=True))
    # at T0 + 2 days: old = 2 * 0.25 = 0.5, x = 0.25, new = 1
    assert pop.top(3) == ["new", "old", "x"]
    assert pop.top(2, exclude={"new"}) == ["old", "x"]
    assert "ret" not in pop.top(10)


def test_popularity_survives_rebasing_over_long_streams():
    pop = PopularityBaseline(half_life_s=1.0)
    pop.learn(order("u1", ["a"], T0))
    pop.learn(order("u1", ["b"], T0 + 500.0))  # 2 ** 500 would overflow float64 without rebasing
    pop.learn(order("u2", ["a"], T0 + 1000.0))
    assert pop.top(2) == ["a", "b"]
    assert np.isfinite(pop._scores).all()


# --- prequential replay -------------------------------------------------------------------------------------------


def test_prequential_replay_never_sees_an_event_before_predicting_it():
    """A spy learner records what was learned; each ranker call checks the event it predicts is not among them."""
    events = [order("u1", ["a", "b"], T0), order("u2", ["a", "c"], T0 + 10), click(user="u1", item="c", ts=T0 + 20),
              order("u1", ["c", "d"], T0 + 30), order("u1", ["a"], T0 + 40), order("u2", ["b"], T0 + 50)]
    learned: list[str] = []
    calls: list[tuple[str, float, int]] = []

    def spy(user_id, now, k, exclude):
        calls.append((user_id, now, len(learned)))
        return ["a", "b", "c", "d"]

    replay = PrequentialReplay({"spy": spy}, [lambda e: learned.append(e.event_id)])
    result = replay.run(events)
    # predicted: e0, e1, e3, e5 (e2 is a click; e4 only repeats what u1 bought in e0). When event n is predicted,
    # exactly events 0..n-1 have been learned: never the event itself, never a later one.
    assert [c[2] for c in calls] == [0, 1, 3, 5]
    assert [(c[0], c[1]) for c in calls] == [(events[n].user_id, events[n].ts) for n in (0, 1, 3, 5)]
    assert result.purchases_all_repeats == 1 and result.purchases_evaluated == 4
    assert learned == [e.event_id for e in events]


def test_the_engine_has_not_learned_the_order_it_is_asked_to_predict():
    config = EngineConfig()
    arms = ReplayArms(config)
    seen_by_model: list[int] = []

    def engine(user_id, now, k, exclude):
        user = arms.users.get(user_id)
        assert user is None or not user.has_applied(current[0].event_id)
        seen_by_model.append(arms.recommender.model.events)
        return arms.engine(user_id, now, k, exclude)

    replay = PrequentialReplay({"engine": engine, "popularity": arms.popular}, arms.learners())
    events = [order(f"u{n % 3}", [f"i{n % 5}", f"i{(n + 1) % 5}"], T0 + 60 * n, f"e{n}") for n in range(12)]
    current = [events[0]]
    for n, event in enumerate(events):
        current[0] = event
        replay.step(event)
    assert seen_by_model == sorted(seen_by_model) and seen_by_model[0] == 0
    assert arms.recommender.model.events == len(events)


def test_lists_exclude_past_purchases_for_every_method():
    def echo(user_id, now, k, exclude):
        return ["a", "b", "c"]

    replay = PrequentialReplay({"echo": echo}, [])
    replay.bought["u1"] = {"a"}
    replay.step(order("u1", ["b"], T0))
    # "a" was bought before: removed, so "b" is at position 1 -> perfect score
    assert replay.result.metrics["echo"].summary() == {"hr@10": 1.0, "ndcg@10": 1.0}


def test_replay_on_a_small_stream_scores_popularity_as_expected():
    """Two shoppers buy the same best seller; the third new shopper buys it too: popularity ranks it first."""
    config = EngineConfig()
    arms = ReplayArms(config)
    replay = PrequentialReplay(arms.rankers(), arms.learners())
    replay.run([order("u1", ["best", "x"], T0), order("u2", ["best", "y"], T0 + 60), order("u3", ["best"], T0 + 120)])
    result = replay.result.to_dict()
    assert result["purchases_evaluated"] == 3
    # first order: nothing known, all miss; second: best or x in top 2 of 2 known items; third: best first
    pop = replay.result.metrics["popularity"]
    assert pop.events == 3 and pop.hits == 2.0
    assert set(result) >= {"engine", "popularity", "river_only", "events", "purchases_evaluated"}
    for name in ("engine", "popularity", "river_only"):
        assert 0.0 <= result[name]["ndcg@10"] <= result[name]["hr@10"] <= 1.0


def test_sharded_backend_learns_only_from_the_shoppers_of_its_partition():
    """Split as deployed, a partition's engine knows only what its own shoppers did: the same order teaches the
    shopper's partition and leaves the other one knowing nothing; one engine over both knows it everywhere."""
    config = EngineConfig()
    shards = [RecommenderBackend(Recommender(config)) for _ in range(2)]
    arms = ReplayArms(config, ShardedBackend(shards, lambda user: 0 if user.startswith("a") else 1))
    arms.learn(order("a1", ["x", "y"], T0))
    assert set(shards[0].recommender.model.catalog) == {"x", "y"} and not shards[1].recommender.model.catalog
    assert {"x", "y"} <= set(arms.engine("a2", T0 + 60, 10, ()))
    assert {"x", "y"} <= set(arms.river_only("a2", T0 + 60, 10, ()))
    assert arms.engine("b1", T0 + 60, 10, ()) == [] and arms.river_only("b1", T0 + 60, 10, ()) == []

    whole = ReplayArms(config)
    whole.learn(order("a1", ["x", "y"], T0))
    assert {"x", "y"} <= set(whole.engine("b1", T0 + 60, 10, ()))


def test_shared_discovery_teaches_every_partition_what_sells_while_the_rest_stays_split():
    """Shared discovery, as deployed by default: an order of partition 0's shopper reaches partition 1's discovery
    model (a newcomer there is offered it) and its catalog the products, while the co-occurrence model and the
    shoppers' states stay split."""
    config = EngineConfig()
    shards = [RecommenderBackend(Recommender(config)) for _ in range(2)]
    arms = ReplayArms(config, ShardedBackend(shards, lambda user: 0 if user.startswith("a") else 1, shared_discovery=True))
    arms.learn(order("a1", ["x", "y"], T0))
    arms.learn(order("a1", ["z"], T0 + 30))
    other = shards[1].recommender
    assert other.discovery.orders == shards[0].recommender.discovery.orders == {"x": 1.0, "y": 1.0, "z": 1.0}
    assert "z" in other.discovery.links and set(other.discovery.links["z"]) == {"x", "y"}  # linked to a1's history
    # the global model is still the partition's own: it only knows what the products are (for copy, rules and
    # features), with no popularity or co-occurrence from the other partition's order
    assert set(other.model.catalog) == {"x", "y", "z"} and not other.model.neighbours
    assert other.model.popular.get("x", T0 + 30) == 0.0 and other.model.catalog["z"].name == "name of z"
    assert {"x", "y", "z"} <= set(arms.engine("b1", T0 + 60, 10, ()))


# --- closed loop ---------------------------------------------------------------------------------------------------


def test_rolling_ctr():
    trace = LoopTrace(shown=[10, 10, 10, 10], clicks=[0, 2, 4, 0])
    assert trace.ctr == pytest.approx(6 / 40)
    assert trace.rolling_ctr(2).tolist() == pytest.approx([0.0, 0.1, 0.3, 0.2])


def test_closed_loop_runs_and_returns_ctrs_in_unit_interval():
    config = EngineConfig()
    arms = {"with_feedback": lambda: _selector_arm(config, True), "without": lambda: _selector_arm(config, False)}
    traces = simulate_closed_loop(arms, lambda: ShopperSimulator(seed=3, n_users=50, n_items=200, n_categories=5),
                                  steps=300, config=config)
    summary = loop_summary(traces, window=100)
    for name in arms:
        assert len(traces[name].shown) == 300
        assert 0.0 <= summary[name]["ctr"] <= 1.0 and summary[name]["shown"] > 0
    assert sum(traces["with_feedback"].clicks) > 0


def _selector_arm(config, on: bool):
    try:
        from kairos.engine.evaluation import SelectorLoopArm
        from kairos.engine.selection import Selector
    except ImportError:
        return RecommenderLoopArm(Recommender(config))
    return SelectorLoopArm(Selector(config, feedback=on, exploration=on, seed=0))


# --- off-policy evaluation wiring ------------------------------------------------------------------------------------


def _tiny_open_bandit(root, rows=400, n_items=5, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "open_bandit" / "bts" / "all"
    folder.mkdir(parents=True)
    frame = pd.DataFrame({
        "timestamp": pd.date_range("2019-11-24", periods=rows, freq="min", tz="UTC"),
        "item_id": rng.integers(0, n_items, rows),
        "position": rng.integers(1, 4, rows),
        "click": (rng.random(rows) < 0.2).astype(int),
        "propensity_score": np.full(rows, 1.0 / n_items),
        **{f"user_feature_{j}": rng.choice(["a", "b"], rows) for j in range(4)},
        **{f"user-item_affinity_{i}": rng.random(rows) for i in range(n_items)},
    })
    frame.to_parquet(folder / "log.parquet")
    return root


def test_ope_command_prints_the_keys_on_a_tiny_log(tmp_path, capsys):
    from kairos.agents.evaluation import ope_command

    data_dir = _tiny_open_bandit(tmp_path)
    args = argparse.Namespace(data_dir=data_dir, policy="bts", segment="all", seed=0, epsilon=0.1, n_boot=50, engine_policy="selector")
    assert ope_command(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"logged_ctr", "engine_snips", "engine_dr", "ci95", "engine_ips", "rounds"} <= set(result)
    assert 0.0 <= result["logged_ctr"] <= 1.0
    lo, hi = result["ci95"]["snips"]
    assert lo <= result["engine_snips"] <= hi


def test_simulate_command_writes_a_png_plot_and_prints_both_ctrs(tmp_path, capsys):
    from kairos.agents.cli import build_parser

    plot = tmp_path / "ctr.png"
    args = build_parser().parse_args(["eval", "simulate", "--steps", "200", "--users", "40", "--items", "150",
                                      "--window", "50", "--plot", str(plot)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= out["ctr_with_feedback"] <= 1.0 and 0.0 <= out["ctr_without"] <= 1.0
    assert out["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5_000


def test_replay_command_splits_the_engine_into_partitions(tmp_path, capsys):
    """``kairos eval replay --partitions P`` runs the whole stream through P engines routed by the shopper's key
    and reports it; every purchase is still scored once."""
    from kairos.agents.cli import build_parser

    folder = tmp_path / "online_retail"
    folder.mkdir()
    rows = []
    for n in range(60):  # 20 shoppers, three orders each, from a catalogue of 8 products
        customer = 12000.0 + n % 20
        when = pd.Timestamp("2011-01-03 09:00") + pd.Timedelta(minutes=30 * n)
        for line in range(3):
            code = str(22000 + (n + line * 3) % 8)
            rows.append({"InvoiceNo": str(540000 + n), "StockCode": code, "Description": f"PRODUCT {code}",
                         "Quantity": 2, "InvoiceDate": when, "UnitPrice": 1.25, "CustomerID": customer})
    frame = pd.DataFrame(rows)
    frame["CustomerID"] = frame["CustomerID"].astype("Float64")
    frame.to_parquet(folder / "slice.parquet")

    outs = {}
    for partitions in (1, 3):
        args = build_parser().parse_args(["eval", "replay", "--data-dir", str(tmp_path), "--partitions",
                                          str(partitions), "--engine", "recommender"])
        assert args.func(args) == 0
        outs[partitions] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for partitions, out in outs.items():
        assert out["partitions"] == partitions and out["events"] == 60
        assert out["purchases_evaluated"] == outs[1]["purchases_evaluated"] > 0  # the same orders scored
        for name in ("engine", "popularity", "river_only"):
            assert 0.0 <= out[name]["ndcg@10"] <= out[name]["hr@10"] <= 1.0
    # The popularity baseline is one model over the whole stream either way; the engine differs when split.
    assert outs[1]["popularity"] == outs[3]["popularity"]
