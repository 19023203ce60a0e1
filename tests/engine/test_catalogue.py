"""Product lines from item names (engine/catalogue.py) and the first-order cold-start list (engine/discovery.py):
siblings and product-line mates are found from the stream's names, common words do not link everything, memory
is bounded, both survive the checkpoint and older checkpoints without them still load."""

from __future__ import annotations

import json

from factories import T0

from kairos.engine.catalogue import ProductCatalogue, product_tokens
from kairos.engine.config import EngineConfig
from kairos.engine.recommender import Recommender
from kairos.engine.selection import Selector
from kairos.engine.state import Interaction, UserInterest
from kairos.schemas.events import OrderLine, PurchaseEvent

_ids = iter(range(10**9))


def _order(recommender: Recommender, users: dict, user_id: str, lines: dict[str, str], ts: float) -> UserInterest:
    """One order of ``lines`` (item id -> description) by ``user_id``, learned by the recommender."""
    user = users.setdefault(user_id, UserInterest.new(user_id, recommender.config))
    event = PurchaseEvent(
        event_id=f"c{next(_ids)}", user_id=user_id, order_id=f"o{next(_ids)}", ts=ts,
        lines=[OrderLine(item_id=i, quantity=1, unit_price=1.0, category_id="c", name=n) for i, n in lines.items()],
    )  # fmt: skip
    recommender.observe(user, event)
    return user


def _learn(catalogue: ProductCatalogue, names: dict[str, str], ts: float = T0) -> None:
    catalogue.observe([Interaction(i, None, "purchase", 8.0, ts, name=n) for i, n in names.items()])


def test_tokens_drop_colours_and_keep_the_stock_code_family():
    assert product_tokens("85099B", "JUMBO BAG RED RETROSPOT") == ("JUMBO", "BAG", "RETROSPOT", "#85099")
    assert product_tokens("85099F", "JUMBO BAG STRAWBERRY")[-1] == "#85099"
    assert "#" not in "".join(product_tokens("22386", "JUMBO BAG PINK POLKADOT"))  # not a variant code


def test_colour_variants_and_product_line_mates_are_neighbours_and_common_words_are_not_searched():
    catalogue = ProductCatalogue(EngineConfig(catalogue_token_items=5))
    _learn(catalogue, {
        "22697": "GREEN REGENCY TEACUP AND SAUCER", "22699": "ROSES REGENCY TEACUP AND SAUCER",
        "22423": "REGENCY CAKESTAND 3 TIER", "85099B": "JUMBO BAG RED RETROSPOT", "85099F": "JUMBO BAG STRAWBERRY",
    })  # fmt: skip
    _learn(catalogue, {f"9{n}": f"GIFT BAG DESIGN {w}" for n, w in enumerate(["ONE", "TWO", "THREE", "FOUR"])})
    _learn(catalogue, {"22698": "PINK REGENCY TEACUP AND SAUCER"})
    neighbours = [item for item, _ in catalogue.neighbours("22698")]
    assert neighbours[:2] == ["22697", "22699"]  # the same teacup in other colours first
    assert "22423" in neighbours  # the regency line
    assert [item for item, _ in catalogue.neighbours("85099B")][0] == "85099F"  # the stock-code family
    assert len(catalogue.postings["BAG"]) == 6  # one past the cap: "BAG" names a kind of product, not a line
    assert not {"90", "91", "92", "93"} & {item for item, _ in catalogue.neighbours("85099B")}


def test_a_new_sibling_is_recommended_before_anyone_bought_them_together():
    recommender, users = Recommender(EngineConfig(catalogue_weight=0.5)), {}
    ts = T0
    for n in range(30):  # a busy shop: other items sell, none with the teacups
        ts += 60
        _order(recommender, users, f"o{n}", {f"x{n}": f"THING NUMBER {n} BOX", "best": "BEST SELLER MUG"}, ts)
    me = _order(recommender, users, "me", {"22698": "PINK REGENCY TEACUP AND SAUCER"}, ts + 60)
    _order(recommender, users, "other", {"22697": "GREEN REGENCY TEACUP AND SAUCER"}, ts + 120)  # a new arrival
    recs = recommender.recommend(me, ts + 180, 10)
    reasons = {r.item_id: r.reasons for r in recs}
    assert "22697" in reasons and "similar_products" in reasons["22697"]


def test_first_orders_lift_what_newcomers_start_with():
    recommender, users = Recommender(EngineConfig()), {}
    regulars = [_order(recommender, users, f"r{n}", {"warmup": "WARM UP"}, T0) for n in range(10)]
    for n, regular in enumerate(regulars):  # regulars buy "staple" as often as newcomers buy "starter"...
        _order(recommender, users, regular.user_id, {"staple": "STAPLE JAR", "both": "BOTH BOX"}, T0 + 100 + n)
        _order(recommender, users, f"new{n}", {"starter": "STARTER KIT", "both": "BOTH BOX"}, T0 + 100 + n)
    cold = [item for item, _ in recommender.discovery.cold_start(T0 + 200)]
    assert cold.index("starter") < cold.index("staple")  # ...but newcomers start with "starter"
    plain = Recommender(EngineConfig(discovery_first_order_weight=0.0))
    assert plain.discovery.cold_start(T0) == plain.discovery.popular(T0)


def test_catalogue_is_bounded():
    cfg = EngineConfig(max_items=50, catalogue_token_items=7)
    catalogue = ProductCatalogue(cfg)
    for n in range(40):
        _learn(catalogue, {f"{n}{k}A": f"LINE{chr(65 + n % 26)} WORD{k} ITEM" for k in range(8)}, T0 + n)
    assert len(catalogue.tokens) <= 50 and len(catalogue.seen) <= 50
    assert max(len(posting) for posting in catalogue.postings.values()) <= 7 + 1
    assert "390A" in catalogue.tokens and "00A" not in catalogue.tokens  # the items sold longest ago went
    for item in list(catalogue.tokens)[:10]:
        assert len(catalogue.neighbours(item)) <= cfg.catalogue_neighbours
    assert set(catalogue.siblings) <= set(catalogue.tokens)  # no list of a forgotten item...
    assert all(other in catalogue.tokens for found in catalogue.siblings.values() for other, _ in found)  # ...or to one
    assert all(len(found) <= cfg.catalogue_neighbours for found in catalogue.siblings.values())


def test_siblings_are_found_when_a_name_is_learned_and_reading_them_searches_nothing(monkeypatch):
    catalogue = ProductCatalogue(EngineConfig())
    _learn(catalogue, {"22697": "GREEN REGENCY TEACUP AND SAUCER", "90": "PAPER NAPKIN"})
    _learn(catalogue, {"22698": "PINK REGENCY TEACUP AND SAUCER"})  # a new arrival of the line
    assert [item for item, _ in catalogue.siblings["22697"]] == ["22698"]  # joined the old item's list at once

    def no_search(item: str) -> list:
        raise AssertionError("the read path must not search")

    monkeypatch.setattr(catalogue, "_search", no_search)
    user = UserInterest.new("u", EngineConfig())
    user.purchased["22697"] = T0
    assert [item for item, _ in catalogue.scores(user, 5, excluded=set())] == ["22698"]


def test_a_word_turning_common_is_unlinked_a_few_lists_per_order():
    catalogue = ProductCatalogue(EngineConfig(catalogue_token_items=4))
    _learn(catalogue, {f"{n}": f"ZEBRA THING{n}" for n in range(4)})  # "ZEBRA" still names a line: all linked
    assert len(catalogue.siblings["0"]) == 3
    _learn(catalogue, {"4": "ZEBRA THING4"})  # five items: "ZEBRA" is too common to search now
    linked = [item for item in "0123" if catalogue.siblings[item]]
    assert len(linked) == 2  # two lists searched again in that order (the write path's budget), two queued
    _learn(catalogue, {"x": "OTHER"})
    assert not any(catalogue.siblings[item] for item in "01234")


def test_catalogue_and_first_orders_ride_in_the_checkpoint_and_older_checkpoints_load():
    config = EngineConfig(catalogue_weight=0.5)
    selector, users = Selector(config, exploration=False), {}
    names = {"22697": "GREEN REGENCY TEACUP", "22698": "PINK REGENCY TEACUP", "22423": "REGENCY CAKESTAND"}
    for n, (item, name) in enumerate(names.items()):
        _order(selector.recommender, users, f"s{n}", {item: name, f"z{n}": f"OTHER THING {n}"}, T0 + n)
    state = json.loads(json.dumps(selector.to_state()))  # what the checkpoint stores
    restored = Selector(config, exploration=False)
    restored.load_state(state)
    before, after = selector.recommender.discovery, restored.recommender.discovery
    shopper = users["s1"]
    assert after.similar_products_scores(shopper, 5, set()) == before.similar_products_scores(shopper, 5, set())
    assert after.cold_start(T0 + 30) == before.cold_start(T0 + 30)
    assert after.catalogue.first_seen("22423") == T0 + 2
    no_lists = json.loads(json.dumps(selector.to_state()))
    del no_lists["discovery"]["catalogue"]["siblings"], no_lists["discovery"]["catalogue"]["stale"]  # older format
    searched = Selector(config, exploration=False)
    searched.load_state(no_lists)
    assert "22697" in {i for i, _ in searched.recommender.discovery.similar_products_scores(shopper, 5, set())}
    legacy = json.loads(json.dumps(selector.to_state()))
    del legacy["discovery"]["catalogue"], legacy["discovery"]["first_orders"]  # written before both existed
    old = Selector(config, exploration=False)
    old.load_state(legacy)
    assert old.recommender.discovery.popular(T0 + 30) == before.popular(T0 + 30)
    assert old.recommender.discovery.similar_products_scores(shopper, 5, set()) == []  # relearns from the stream


def test_new_arrivals_are_the_discovered_items_first_sold_lately():
    day = 86_400.0
    recommender, users = Recommender(EngineConfig()), {}
    for n in range(5):
        _order(recommender, users, f"a{n}", {"old": "OLD FAVOURITE"}, T0 + n)
    for n in range(5):  # returning shoppers discover the new arrival, others (later) the old favourite
        _order(recommender, users, f"a{n}", {"old": "OLD FAVOURITE", "fresh": "FRESH ARRIVAL"}, T0 + 30 * day + n)
        _order(recommender, users, f"b{n}", {"warm": "WARM UP"}, T0 + 30 * day + n)
        _order(recommender, users, f"b{n}", {"old": "OLD FAVOURITE"}, T0 + 30 * day + 10 + n)
    assert {item for item, _ in recommender.discovery.popular(T0 + 31 * day, discovered=True)} == {"fresh", "old"}
    assert recommender.discovery.new_arrivals(T0 + 31 * day) == frozenset({"fresh"})
    off = Recommender(EngineConfig(discovery_new_weight=0.0))
    assert off.discovery.new_arrivals(T0) == frozenset()


def test_a_line_that_stopped_selling_keeps_a_share_of_its_discovery_score():
    day = 86_400.0
    recommender, users = Recommender(EngineConfig()), {}
    # Two lines bought with "base" by the same shoppers; "gone" is never sold again after the first week.
    for n in range(4):
        _order(recommender, users, f"s{n}", {"base": "BASE", "gone": "GONE LINE", "live": "LIVE LINE"}, T0 + n)
    for n in range(4):
        _order(recommender, users, f"t{n}", {"live": "LIVE LINE"}, T0 + 20 * day + n)
    shopper = _order(recommender, users, "me", {"base": "BASE"}, T0 + 20 * day + 10)
    now = T0 + 21 * day
    assert recommender.discovery.stale_items(["gone", "live", "unknown"], now) == ["gone"]  # unknown: not judged
    from kairos.engine.candidates import retrieve_candidates

    def discovery_scores(config: EngineConfig) -> dict[str, float]:
        recommender.discovery.config = config
        pool = retrieve_candidates(shopper, recommender.model, now, 100, {"base"}, (), recommender.discovery)
        return pool.discovery

    on = discovery_scores(EngineConfig())
    off = discovery_scores(EngineConfig(discovery_stale_factor=1.0))
    assert on["gone"] == 0.5 * off["gone"] and on["live"] == off["live"]
    assert off["gone"] > 0 and on["gone"] < on["live"]
