import json
import time

import orjson
import pytest

from kairos.schemas.codec import InvalidEvent, decode_event, encode
from kairos.schemas.events import MAX_EVENT_BYTES, ClickEvent, PurchaseEvent
from kairos.schemas.jsonschema_export import export_json_schemas, records
from kairos.schemas.outputs import Recommendation

GOOD_CLICK = {"kind": "click", "event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "add_to_cart", "ts": 1.7e9}
GOOD_ORDER = {
    "kind": "purchase", "event_id": "e2", "user_id": "u1", "order_id": "o1", "ts": 1.7e9,
    "lines": [{"item_id": "i1", "quantity": 2, "unit_price": "3.50", "currency": "GBP"}],
}  # fmt: skip


def _raw(payload: dict) -> bytes:
    return orjson.dumps(payload)


def test_valid_events_round_trip():
    click = decode_event(_raw(GOOD_CLICK))
    assert isinstance(click, ClickEvent) and click.action == "add_to_cart"
    order = decode_event(_raw(GOOD_ORDER))
    assert isinstance(order, PurchaseEvent) and str(order.lines[0].unit_price) == "3.50"
    assert decode_event(encode(order)) == order


@pytest.mark.parametrize(
    ("mutation", "error_class", "needle"),
    [
        ({"user_id": None}, "invalid_fields", "user_id"),
        ({"user_id": ""}, "invalid_fields", "user_id"),
        ({"event_id": 5}, "invalid_fields", "event_id"),
        ({"ts": "yesterday"}, "invalid_fields", "ts"),
        ({"ts": 1.7e12}, "invalid_fields", "future"),
        ({"ts": 12.0}, "invalid_fields", "before 2000"),
        ({"action": "teleport"}, "invalid_fields", "action"),
        ({"colour": "red"}, "invalid_fields", "colour"),
        ({"kind": "refund"}, "unknown_kind", "refund"),
        ({"schema_version": 2}, "unsupported_version", "2"),
    ],
)
def test_click_validation_failures_are_classified(mutation, error_class, needle):
    payload = {**GOOD_CLICK, **mutation}
    payload = {k: v for k, v in payload.items() if v is not None or k != "user_id"}
    with pytest.raises(InvalidEvent) as info:
        decode_event(_raw(payload))
    assert info.value.error_class == error_class
    assert needle in info.value.reason


def test_missing_id_is_rejected():
    payload = dict(GOOD_CLICK)
    del payload["user_id"]
    with pytest.raises(InvalidEvent, match="user_id"):
        decode_event(_raw(payload))


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ({"unit_price": -1}, "unit_price"),
        ({"quantity": 0}, "zero"),
        ({"quantity": -2}, "wrong quantity sign"),
        ({"currency": "pounds"}, "currency"),
    ],
)
def test_order_line_validation(line, needle):
    payload = json.loads(json.dumps(GOOD_ORDER))
    payload["lines"][0].update(line)
    with pytest.raises(InvalidEvent) as info:
        decode_event(_raw(payload))
    assert needle in info.value.reason


def test_structural_failures():
    cases = {b"": "empty", b"{not json": "not_json", b"[1, 2]": "not_an_object", b"\xff\xfe": "not_json"}
    for raw, error_class in cases.items():
        with pytest.raises(InvalidEvent) as info:
            decode_event(raw)
        assert info.value.error_class == error_class


def test_oversize_payload_rejected_before_parsing():
    payload = {**GOOD_CLICK, "item_id": "x" * (MAX_EVENT_BYTES + 10)}
    with pytest.raises(InvalidEvent) as info:
        decode_event(_raw(payload))
    assert info.value.error_class == "oversize"


def test_wrong_topic_kind():
    with pytest.raises(InvalidEvent) as info:
        decode_event(_raw(GOOD_CLICK), expected_kinds=frozenset({"purchase"}))
    assert info.value.error_class == "wrong_topic"


def test_recommendation_requires_source_and_versions():
    rec = Recommendation(
        rec_id="u1.3", user_id="u1", items=[{"item_id": "i9", "score": 1.5, "rank": 1, "reasons": ["trending"]}],
        model_version="heuristic@1", state_version=3, produced_at=time.time(),
        source={"topic": "t", "partition": 0, "offset": 12, "event_id": "e1", "event_ts": 1.7e9},
    )  # fmt: skip
    assert Recommendation.model_validate_json(encode(rec)) == rec


def test_json_schemas_exported_for_every_record(tmp_path):
    paths = export_json_schemas(tmp_path)
    assert {p.name.split(".")[0] for p in paths} >= {"click_event", "purchase_event", "impression_event", "recommendation", "dead_letter"}
    click_schema = json.loads((tmp_path / "click_event.v1.json").read_text())
    assert "user_id" in click_schema["required"] and click_schema["additionalProperties"] is False


def test_committed_json_schemas_are_current(tmp_path):
    """The files in schemas/jsonschema are what producers in other languages use: they must match the code."""
    from pathlib import Path

    committed = Path(__file__).parents[2] / "schemas" / "jsonschema"
    for path in export_json_schemas(tmp_path):
        assert (committed / path.name).read_text() == path.read_text(), f"run `kairos schemas export` ({path.name})"
    assert len(records()) == len(list(committed.glob("*.json")))
