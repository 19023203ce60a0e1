"""``KAIROS_RECOMMEND_EVERY_EVENT``: one recommendation per event, each computed on its shopper's state right after it.

By default a shopper with several events in one consumed batch is ranked once, after the last of them. With
``every_event`` the batch is cut before a shopper's second event: each recommendation is then computed on the
shopper's state as it was after that event, the same state version one-batch-per-event processing ranks. (The global
model may already hold other shoppers' later events of the batch, as in the default mode.) Brokerless.
"""

from __future__ import annotations

import orjson
from factories import T0, click, purchase
from test_product_restart import TOPICS, InputLog

from kairos.agents.pipeline import BatchPipeline
from kairos.engine.config import EngineConfig
from kairos.engine.partition import PartitionState
from kairos.engine.selection import Selector

CONFIG = EngineConfig(top_n=5)
BACKGROUND = [click(user=f"bg{n % 9}", item=f"c{n % 3}-i{n % 7}", category=f"c{n % 3}", ts=T0 + n) for n in range(150)]
BURST = [
    click(user="ann", item="c1-i2", category="c1", ts=T0 + 300),
    click(user="bob", item="c0-i3", category="c0", ts=T0 + 301),
    click(user="ann", item="c2-i5", category="c2", action="add_to_cart", ts=T0 + 302),
    click(user="bob", item="c0-i4", category="c0", ts=T0 + 303),
    purchase(user="ann", items=(("c2-i5", "c2", 9.0),), ts=T0 + 304),
]


def _pipeline(every_event: bool) -> tuple[BatchPipeline, InputLog]:
    state = PartitionState(0, CONFIG, Selector(CONFIG, exploration=False))
    pipeline = BatchPipeline(TOPICS, {0: state}, 1, CONFIG.top_n, every_event=every_event)
    log = InputLog()
    pipeline.process([log.append(event) for event in BACKGROUND])
    return pipeline, log


def _recommendations(result) -> list[dict]:
    return [orjson.loads(out.value) for out in result.outputs if out.topic == TOPICS.recommendations]


def _slate(rec: dict) -> tuple:
    return rec["user_id"], rec["source"]["event_id"], rec["state_version"], [item["item_id"] for item in rec["items"]]


def test_every_event_in_a_batch_is_ranked_on_its_shoppers_state_right_after_it():
    batched, log = _pipeline(every_event=True)
    recs = _recommendations(batched.process([log.append(event) for event in BURST]))
    assert [rec["source"]["event_id"] for rec in recs] == [event.event_id for event in BURST]

    one_by_one, log = _pipeline(every_event=False)
    alone = [rec for event in BURST for rec in _recommendations(one_by_one.process([log.append(event)]))]
    assert [_slate(rec)[:3] for rec in recs] == [_slate(rec)[:3] for rec in alone]
    assert recs[0]["state_version"] < recs[2]["state_version"] < recs[4]["state_version"]
    assert "c2-i5" not in _slate(recs[-1])[3]  # the purchase's own recommendation leaves the bought item out
    # (The slates themselves may differ from one-by-one processing: the global model, the online ranker and the
    # served-slate history also see the other shoppers' events of the batch in another order.)


def test_by_default_a_shopper_is_ranked_once_per_batch_after_the_last_event():
    pipeline, log = _pipeline(every_event=False)
    recs = _recommendations(pipeline.process([log.append(event) for event in BURST]))
    assert sorted(rec["source"]["event_id"] for rec in recs) == sorted([BURST[3].event_id, BURST[4].event_id])
    by_user = {rec["user_id"]: rec for rec in recs}
    assert by_user["ann"]["source"]["event_id"] == BURST[4].event_id
    assert "c2-i5" not in [item["item_id"] for item in by_user["ann"]["items"]]
