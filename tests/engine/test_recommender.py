import random

import pytest
from factories import T0, click, purchase

from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.recommender import Recommender
from kairos.engine.selection import Selector
from kairos.engine.state import UserInterest
from kairos.engine.store import InMemoryStateStore, ServingRecord, newer


def _warm(recommender: Recommender, n_users=60, seed=0):
    """Background shoppers: each sticks to one of 5 categories of 20 items."""
    rng = random.Random(seed)
    users = {}
    for n in range(3000):
        uid = f"bg{rng.randrange(n_users)}"
        cat = int(uid[2:]) % 5
        user = users.setdefault(uid, UserInterest.new(uid, recommender.config))
        recommender.observe(user, click(user=uid, item=f"c{cat}-i{rng.randrange(20)}", category=f"c{cat}", ts=T0 + n))
    return users


@pytest.fixture
def recommender():
    return Recommender(EngineConfig(top_n=10))


def test_cold_user_gets_popular_items(recommender):
    _warm(recommender)
    recs = recommender.recommend(UserInterest.new("new", recommender.config), now=T0 + 4000)
    assert len(recs) == 10
    assert all({"trending", "popular"} & {r.split(":")[0] for r in item.reasons} for item in recs)


def test_favourite_category_ranks_up(recommender):
    _warm(recommender)
    user = UserInterest.new("fan", recommender.config)
    for n in range(6):
        recommender.observe(user, click(user="fan", item=f"c3-i{n}", category="c3", action="add_to_cart", ts=T0 + 4000 + n))
    recs = recommender.recommend(user, now=T0 + 4010)
    top5 = [item.item_id for item in recs[:5]]
    assert sum(item.startswith("c3-") for item in top5) >= 4, top5


def test_purchased_items_are_excluded(recommender):
    _warm(recommender)
    user = UserInterest.new("buyer", recommender.config)
    recommender.observe(user, click(user="buyer", item="c2-i0", category="c2", ts=T0 + 4000))
    before = [item.item_id for item in recommender.recommend(user, now=T0 + 4001)]
    bought = before[:3]
    recommender.observe(user, purchase(user="buyer", items=[(i, "c2", 5.0) for i in bought], ts=T0 + 4002))
    after = [item.item_id for item in recommender.recommend(user, now=T0 + 4003)]
    assert not set(bought) & set(after)


def test_online_ranker_learns_from_the_stream(recommender):
    _warm(recommender)
    assert recommender.online.examples > 100
    assert "river" in recommender.model_version


def test_broken_ranker_falls_back():
    class Broken:
        name, version = "broken", "0"

        def score(self, features):
            raise RuntimeError("model file corrupt")

    recommender = Recommender(EngineConfig(), ranker=Broken())
    _warm(recommender)
    recs = recommender.recommend(UserInterest.new("x", recommender.config), now=T0 + 4000)
    assert recs and recommender.ranker_failures == 1


def test_partition_state_expires_idle_users_and_round_trips():
    cfg = EngineConfig(idle_expiry_s=100.0)
    state = PartitionState(0, cfg, Selector(cfg))
    for n, uid in enumerate(["a", "b", "c"]):
        state.selector.observe(state.user(uid), click(user=uid, item="i", ts=T0 + n * 100))
        state.mark_dirty(uid)
    assert state.latest_ts == T0 + 200  # the partition's stream clock follows the events applied
    assert state.expire_idle(now=T0 + 250) == 2  # a (idle 250 s) and b (150 s); c is 50 s idle
    assert list(state.users) == ["c"] and set(state.deleted) == {"a", "b"}
    state.offsets = {"t": 42}
    commit = state.build_commit(with_global_checkpoint=True)
    assert set(commit.users) == {"c"} and set(commit.deleted) == {"a", "b"}

    import asyncio

    store = InMemoryStateStore()
    asyncio.run(store.commit(commit))
    state.committed(commit)
    assert not state.has_pending
    snapshot = asyncio.run(store.load(0))
    restored = PartitionState.restore(0, cfg, snapshot, lambda: Selector(cfg))
    assert list(restored.users) == ["c"] and restored.offsets == {"t": 42} and restored.global_offsets == {"t": 42}
    assert restored.selector.model.events == state.selector.model.events
    assert restored.latest_ts == T0 + 200


def test_serving_rule_newer_event_wins():
    store = InMemoryStateStore()
    import asyncio
    from kairos.engine.store import Commit

    def serve(ts, seq, payload):
        asyncio.run(store.commit(Commit(0, {}, [], {}, [ServingRecord("u", ts, seq, payload)])))

    serve(10.0, 2, b"new")
    serve(9.0, 5, b"older event")
    serve(10.0, 1, b"same time, older state")
    assert store.serving["u"][2] == b"new"
    assert newer((10.0, 2), (10.0, 3))


def test_resident_users_are_bounded_and_read_back_without_losing_state():
    """Memory keeps the 3 most recently active users; the others live in the store and come back intact."""
    import asyncio

    cfg = EngineConfig(max_resident_users=3)
    state, store = PartitionState(0, cfg, Selector(cfg)), InMemoryStateStore()
    for n, uid in enumerate(["a", "b", "c", "d", "e"]):
        state.selector.observe(state.user(uid), click(user=uid, item=f"i{n}", ts=T0 + n))
        state.mark_dirty(uid)
    assert state.evict_resident() == 0, "dirty users are never dropped before they are written"
    commit = state.build_commit(with_global_checkpoint=False)
    assert commit.activity == {uid: T0 + n for n, uid in enumerate("abcde")}
    asyncio.run(store.commit(commit))
    state.committed(commit)
    assert state.evict_resident() == 2
    assert list(state.users) == ["c", "d", "e"]  # least recently active dropped first

    assert state.missing(["a", "c", "zz"]) == ["a", "zz"]
    state.adopt(asyncio.run(store.load_users(0, ["a", "zz"])))  # zz was never seen: nothing to read
    user_a = state.user("a")
    assert list(user_a.recent) == ["i0"] and user_a.event_count == 1 and user_a.has_applied("c-a") is False
    assert "zz" not in state.users

    state.deleted.add("b")  # expired in memory, deletion not yet committed: not read back
    assert state.missing(["b"]) == []


def test_store_expires_idle_users_it_holds_except_those_in_memory():
    import asyncio

    from kairos.engine.store import Commit

    store = InMemoryStateStore()
    users = {uid: b"{}" for uid in "abc"}
    asyncio.run(store.commit(Commit(0, users, [], {}, activity={"a": 10.0, "b": 20.0, "c": 30.0})))
    assert asyncio.run(store.expire_users(0, idle_before=25.0, keep={"a"})) == ["b"]
    assert set(asyncio.run(store.load(0)).users) == {"a", "c"}
    asyncio.run(store.commit(Commit(0, {}, ["c"], {})))
    assert asyncio.run(store.expire_users(0, idle_before=100.0, keep=set())) == ["a"]
    assert asyncio.run(store.load(0)).users == {}


def test_global_model_forgets_beyond_its_item_bound_and_prunes_neighbour_rows():
    from kairos.engine.global_model import GlobalModel
    from kairos.engine.state import Interaction

    cfg = EngineConfig(max_items=100, max_neighbours=8)
    model = GlobalModel(cfg)
    user = UserInterest.new("u", cfg)
    rng = random.Random(0)
    for n in range(3000):
        item = f"i{rng.randrange(1000)}"
        interactions = [Interaction(item, "c", "click", 1.5, T0 + n)]
        model.observe(user, interactions)
        user.recent.append(item)
    assert len(model.catalog) <= 100 and len(model.popular) <= 100
    assert len(model.neighbours) <= 100 and set(model.neighbours) <= set(model.catalog)
    assert max(len(row) for row in model.neighbours.values()) <= 8 + 2


def test_a_user_changed_while_its_commit_was_in_flight_stays_dirty():
    """The worker builds batch N+1's commit while batch N's is still being written: confirming N must not mark
    clean a user that N+1 changed again (that change would never be written)."""
    cfg = EngineConfig()
    state = PartitionState(0, cfg, Selector(cfg))
    for uid in ("a", "b"):
        state.selector.observe(state.user(uid), click(user=uid, item="i1", ts=T0))
        state.mark_dirty(uid)
    in_flight = state.build_commit(with_global_checkpoint=False)
    state.selector.observe(state.user("a"), click(user="a", item="i2", ts=T0 + 1))  # the next batch, meanwhile
    state.mark_dirty("a")
    state.committed(in_flight)
    assert state.dirty == {"a"}, "b is written; a's newer state is not yet"
    follow_up = state.build_commit(with_global_checkpoint=False)
    assert set(follow_up.users) == {"a"} and follow_up.versions["a"] == state.users["a"].version
    state.committed(follow_up)
    assert not state.dirty
