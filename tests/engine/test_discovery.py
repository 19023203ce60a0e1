"""The discovery model (engine/discovery.py) and how the Recommender uses it: item-kNN over the whole purchase
history with cosine normalisation, "discovered now" popularity for cold starts, bounded memory, caller exclusions."""

from __future__ import annotations

import orjson
from factories import T0, purchase

from kairos.engine.config import EngineConfig
from kairos.engine.discovery import PurchaseGraph
from kairos.engine.recommender import Recommender
from kairos.engine.selection import Selector
from kairos.engine.state import UserInterest

DAY = 86_400.0


def _order(recommender, users, user_id, items, ts):
    user = users.setdefault(user_id, UserInterest.new(user_id, recommender.config))
    recommender.observe(user, purchase(user=user_id, items=[(i, "c", 1.0) for i in items], ts=ts))
    return user


def test_cold_shopper_gets_what_is_discovered_now_in_that_order():
    recommender, users = Recommender(EngineConfig()), {}
    for n in range(30):  # "hit" is bought by 3 new shoppers per round, "steady" by 2, "rare" by 1
        for k, item in enumerate(["hit"] * 3 + ["steady"] * 2 + ["rare"]):
            _order(recommender, users, f"s{n}-{k}", [item], T0 + n)
    recs = recommender.recommend(UserInterest.new("new", recommender.config), now=T0 + 100)
    assert [r.item_id for r in recs[:3]] == ["hit", "steady", "rare"]
    assert "popular_now" in recs[0].reasons


def test_restocking_does_not_count_as_discovered():
    cfg = EngineConfig()
    graph, user = PurchaseGraph(cfg), UserInterest.new("u", cfg)
    recommender = Recommender(cfg)
    recommender.discovery = graph
    for n in range(5):
        recommender.observe(user, purchase(user="u", items=[("staple", "c", 1.0)], ts=T0 + n))
    assert graph.discovered_now.get("staple", T0 + 5) < 1.01  # the first purchase only
    assert graph.popular_now.get("staple", T0 + 5) > 4.9  # every order
    assert graph.orders["staple"] == 5


def test_discovered_now_counts_returning_shoppers_discoveries_only():
    recommender, users = Recommender(EngineConfig()), {}
    _order(recommender, users, "u", ["starter"], T0)  # a first order: what newcomers start with
    _order(recommender, users, "u", ["found"], T0 + 1)  # a returning shopper's discovery
    graph = recommender.discovery
    assert graph.discovered_now.get("starter", T0 + 2) == 0.0 and graph.discovered_now.get("found", T0 + 2) > 0.99
    assert graph.first_orders_now.get("starter", T0 + 2) > 0.99
    every, users = Recommender(EngineConfig(discovery_returning_only=False)), {}
    _order(every, users, "u", ["starter"], T0)
    assert every.discovery.discovered_now.get("starter", T0 + 2) > 0.99


def test_knn_reaches_past_the_recent_items_and_normalises_best_sellers():
    """An item bought long ago (beyond the recent items the co-visit source anchors on) still votes, and a best
    seller bought with everything does not outrank a true companion (cosine, not raw counts)."""
    recommender, users = Recommender(EngineConfig()), {}
    ts = T0
    for n in range(40):  # others: "lamp" goes with "shade"; "bag" is in every order
        ts += 60
        _order(recommender, users, f"o{n}", ["lamp", "shade", "bag"] if n % 4 == 0 else [f"x{n}", "bag"], ts)
    shopper = _order(recommender, users, "me", ["lamp"], ts + 60)
    for n in range(25):  # then many unrelated purchases (fewer than the kNN's 30 anchors)
        ts += 60
        _order(recommender, users, "me", [f"y{n}"], ts + 60)
    assert "lamp" not in list(shopper.recent)[-2 * recommender.config.candidate_anchors :]
    scored = dict(recommender.discovery.scores(shopper, ts + 120, 50, excluded=set(shopper.purchased)))
    assert scored["shade"] > scored.get("bag", 0.0)


def test_memory_is_bounded():
    cfg = EngineConfig(max_items=50, discovery_max_neighbours=5)
    recommender, users = Recommender(cfg), {}
    for n in range(400):
        _order(recommender, users, f"u{n % 37}", [f"i{(n * 7 + k) % 300}" for k in range(6)], T0 + n)
    graph = recommender.discovery
    assert len(graph.orders) <= 50 and len(graph.links) <= 50
    assert len(graph.popular_now) <= 50 and len(graph.discovered_now) <= 50
    assert max(len(row) for row in graph.links.values()) <= 5 + 2  # pruned back to 5 once past 5 + 5 // 2
    for anchor in list(graph.links)[:10]:
        assert len(graph.neighbours(anchor)) <= cfg.discovery_neighbours


def test_callers_exclusions_are_never_recommended():
    selector, users = Selector(EngineConfig(), exploration=False), {}
    for n in range(20):
        _order(selector.recommender, users, f"s{n}", ["a", "b", "c", f"z{n}"], T0 + n)
    user = UserInterest.new("new", selector.config)
    shown = [item.item_id for item in selector.select(user, T0 + 30, 10, exclude={"a", "b"}).items]
    assert shown and not {"a", "b"} & set(shown)
    plain = [item.item_id for item in selector.recommender.recommend(user, T0 + 30, 10, exclude={"c"})]
    assert plain and "c" not in plain


def test_similar_shoppers_vote_and_stay_bounded():
    from kairos.engine.shoppers import SimilarShoppers

    cfg = EngineConfig(max_items=40, discovery_max_shoppers=10, discovery_item_buyers=4, discovery_shopper_items=5)
    shoppers = SimilarShoppers(cfg)
    shoppers.observe("twin", ["a", "b", "c", "gift"])
    shoppers.observe("stranger", ["x", "y", "other"])
    scored = [item for item, _ in shoppers.scores("me", ["a", "b"], 5, excluded={"a", "b"})]
    assert scored[:2] == ["c", "gift"] and "other" not in scored
    for n in range(300):
        shoppers.observe(f"s{n}", [f"i{(n + k) % 97}" for k in range(8)])
    assert len(shoppers.baskets) <= 10 and len(shoppers.buyers) <= 40
    assert max(len(b) for b in shoppers.baskets.values()) <= 5
    assert max(len(b) for b in shoppers.buyers.values()) <= 4


def test_discovery_model_rides_in_the_selection_checkpoint():
    import json

    selector, users = Selector(EngineConfig(), exploration=False), {}
    for n in range(20):
        _order(selector.recommender, users, f"s{n}", ["a", "b", f"z{n % 3}"], T0 + n)
    state = json.loads(json.dumps(selector.to_state()))  # what the checkpoint stores
    restored = Selector(EngineConfig(), exploration=False)
    restored.load_state(state)
    shopper = users["s1"]
    before = selector.recommender.discovery
    after = restored.recommender.discovery
    assert after.popular(T0 + 30) == before.popular(T0 + 30)
    assert after.scores(shopper, T0 + 30, 5, set()) == before.scores(shopper, T0 + 30, 5, set())
    assert after.similar_shoppers_scores(shopper, 5, set()) == before.similar_shoppers_scores(shopper, 5, set())
    legacy = {"corrector": {}, "examples": 0}  # a checkpoint from before the discovery model
    Selector(EngineConfig(), exploration=False).load_state(legacy)


# --- shared discovery: another partition learns an order from its published facts ---


def _two_partitions(orders):
    """One engine whose discovery model learns every order itself, and a second one (another partition) that
    learns the same orders only from the facts the first one computes, through JSON as they travel."""
    import json

    from kairos.engine.discovery import OrderFacts
    from kairos.engine.state import interactions_of

    owner, peer, users = Recommender(EngineConfig()), PurchaseGraph(EngineConfig()), {}
    for offset, (user_id, items, ts) in enumerate(orders):
        user = users.setdefault(user_id, UserInterest.new(user_id, owner.config))
        event = purchase(user=user_id, items=[(i, "c", 1.0) for i in items], ts=ts)
        facts = owner.discovery.facts(user, interactions_of(event, owner.config))
        owner.observe(user, event)
        wire = OrderFacts.from_json(json.loads(json.dumps(facts.to_json())))
        assert wire == facts
        assert peer.learn_peer(wire, "0:kairos.purchases", offset)
    return owner, peer, users


def test_an_order_learned_from_its_facts_teaches_what_the_order_itself_does():
    orders = [(f"s{n % 7}", ["a", "b", f"z{n % 5}", f"y{n % 3}"][: 2 + n % 3], T0 + n * 3600) for n in range(60)]
    import json

    owner, peer, users = _two_partitions(orders)
    mine = PurchaseGraph(EngineConfig())  # the owner's model without its read caches (refreshed per 1,000 orders)
    mine.load_state(json.loads(json.dumps(owner.discovery.to_state())))
    assert peer.to_state()["links"] == mine.links and peer.orders == mine.orders
    for counts in ("popular_now", "discovered_now", "first_orders_now"):
        assert getattr(peer, counts).top(20, T0 + 1e6) == getattr(mine, counts).top(20, T0 + 1e6)
    shopper = users["s3"]
    assert peer.scores(shopper, T0 + 1e6, 10, set()) == mine.scores(shopper, T0 + 1e6, 10, set())
    assert peer.similar_shoppers_scores(shopper, 10, set()) == mine.similar_shoppers_scores(shopper, 10, set())
    assert peer.catalogue.tokens == mine.catalogue.tokens


def test_a_peer_order_published_twice_is_learned_once():
    """A source partition that restarts from its checkpoint applies its uncommitted records again and publishes
    their facts again: the highest offset learned per source (kept in the checkpoint) drops the copies."""
    _, peer, _ = _two_partitions([("u", ["a", "b"], T0), ("v", ["a", "c"], T0 + 1)])
    from kairos.engine.discovery import OrderFacts

    again = OrderFacts("v", T0 + 1, (("a", None), ("c", None)), True, frozenset(), ())
    assert not peer.learn_peer(again, "0:kairos.purchases", 1)  # the same record, published again
    assert not peer.learn_peer(again, "0:kairos.purchases", 0)
    assert peer.orders["a"] == 2.0
    assert peer.learn_peer(again, "0:kairos.events.by-user", 0)  # another source topic: its own offsets
    assert peer.orders["a"] == 3.0
    restored = PurchaseGraph(EngineConfig())
    peer.peer_positions[2] = 17
    import json

    restored.load_state(json.loads(json.dumps(peer.to_state())))
    assert restored.peer_sources == {"0:kairos.purchases": [0, 1], "0:kairos.events.by-user": [0]}
    assert restored.peer_positions == {2: 17}
    assert not restored.learn_peer(again, "0:kairos.purchases", 1)


def test_malformed_facts_are_refused():
    import pytest

    from kairos.engine.discovery import OrderFacts

    good = {"user_id": "u", "ts": T0, "lines": [["a", "A"]], "first_order": False, "known": [], "previous": ["b"]}
    assert OrderFacts.from_json(good).lines == (("a", "A"),)
    for bad in ({**good, "lines": []}, {**good, "ts": "soon"}, {k: v for k, v in good.items() if k != "known"},
                {**good, "lines": [["a"]]}, {**good, "details": [["a", "c"]]}, {**good, "details": [["a", "c", "inf"]]},
                {**good, "details": [["a", "c", -1.0]]}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            OrderFacts.from_json(bad)


def test_a_peer_order_missed_before_later_ones_is_still_learned_and_the_memory_is_bounded():
    """A source's record whose first publication failed while a later one was written comes back when the source
    restarts: it is learned then, once. Only the latest PEER_OFFSETS_KEPT offsets per source are kept; older
    ones count as learned."""
    from kairos.engine.discovery import PEER_OFFSETS_KEPT, OrderFacts

    graph = PurchaseGraph(EngineConfig())
    order = OrderFacts("v", T0, (("a", None),), False, frozenset(), ())
    assert graph.learn_peer(order, "1:p", 10) and graph.learn_peer(order, "1:p", 12)
    assert graph.learn_peer(order, "1:p", 11)  # the gap, filled after the restart
    assert not graph.learn_peer(order, "1:p", 11) and not graph.learn_peer(order, "1:p", 12)
    assert graph.orders["a"] == 3.0 and graph.peer_sources["1:p"] == [10, 11, 12]
    for offset in range(13, 13 + PEER_OFFSETS_KEPT):
        graph.learn_peer(order, "1:p", offset)
    kept = graph.peer_sources["1:p"]
    assert kept == list(range(13, 13 + PEER_OFFSETS_KEPT))  # 10, 11 and 12 dropped, the oldest
    assert not graph.learn_peer(order, "1:p", 5)  # older than everything remembered: learned long ago


def test_order_facts_carry_each_products_category_and_price_and_older_records_still_read():
    from kairos.engine.discovery import OrderFacts

    graph = PurchaseGraph(EngineConfig())
    user = UserInterest.new("s1", EngineConfig())
    facts = graph.event_facts(user, purchase(user="s1", items=[("a", "c1", 2.5), ("b", "c2", 4.0), ("a", "c1", 2.5)]))
    assert facts.details == (("a", "c1", 2.5), ("b", "c2", 4.0))  # distinct items, in line order
    assert OrderFacts.from_json(orjson.loads(orjson.dumps(facts.to_json()))) == facts
    older = {k: v for k, v in facts.to_json().items() if k != "details"}  # written before the details were
    assert OrderFacts.from_json(older).details == () and OrderFacts.from_json(older).lines == facts.lines


def test_a_catalog_takes_other_partitions_products_up_to_nine_tenths_of_its_room():
    from kairos.engine.global_model import GlobalModel

    model = GlobalModel(EngineConfig(max_items=20))
    for n in range(30):
        model.learn_product(f"p{n}", "c", f"product {n}", 1.0)
    assert len(model.catalog) == 18 and "p17" in model.catalog and "p18" not in model.catalog
    assert model.catalog["p3"].name == "product 3" and not model.popular.keys()
