"""Decode and validate raw Kafka values into events; classify what is wrong with the rest.

Every failure is an :class:`InvalidEvent` with a stable ``error_class`` (used as a metric label and in the
dead letter) and a human-readable ``reason``. Invalid events are never retried: the same bytes fail the same way.
"""

from __future__ import annotations

import orjson
from pydantic import TypeAdapter, ValidationError

from kairos.schemas.ads import AdRequest
from kairos.schemas.events import MAX_EVENT_BYTES, ClickEvent, ImpressionEvent, PurchaseEvent, ShopperEvent

_EVENT_ADAPTER: TypeAdapter[ClickEvent | PurchaseEvent | ImpressionEvent] = TypeAdapter(ShopperEvent)

#: Stable error classes, in the order they are checked.
ERROR_CLASSES = (
    "empty",
    "oversize",
    "not_json",
    "not_an_object",
    "unknown_kind",
    "unsupported_version",
    "invalid_fields",
    "wrong_topic",
)


class InvalidEvent(ValueError):
    """An input that can never become a valid event; goes to the dead-letter topic."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(f"{error_class}: {reason}")
        self.error_class = error_class
        self.reason = reason


def decode_event(raw: bytes | None, *, expected_kinds: frozenset[str] | None = None) -> ShopperEvent:
    """Parse and validate one event.

    >>> decode_event(b'{"kind":"click","event_id":"e","user_id":"u","item_id":"i","action":"view","ts":1.7e9}').item_id
    'i'
    >>> decode_event(b'{"kind":"click"').__class__
    Traceback (most recent call last):
    ...
    kairos.schemas.codec.InvalidEvent: not_json: ...
    """
    payload = _parse_object(raw)
    kind = payload.get("kind")
    if kind not in ("click", "purchase", "impression"):
        raise InvalidEvent("unknown_kind", f"'kind' must be click, purchase or impression, got {kind!r}")
    version = payload.get("schema_version", 1)
    if version != 1:
        raise InvalidEvent("unsupported_version", f"schema_version {version!r} is not supported (expected 1)")
    if expected_kinds is not None and kind not in expected_kinds:
        raise InvalidEvent("wrong_topic", f"a {kind} event on a topic for {sorted(expected_kinds)}")
    try:
        return _EVENT_ADAPTER.validate_python(payload)
    except ValidationError as exc:
        raise InvalidEvent("invalid_fields", _summarise(exc)) from None


def decode_ad_request(raw: bytes | None) -> AdRequest:
    """Parse and validate an ad exchange's request for a creative."""
    payload = _parse_object(raw)
    try:
        return AdRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidEvent("invalid_fields", _summarise(exc)) from None


def _parse_object(raw: bytes | None) -> dict:
    if not raw:
        raise InvalidEvent("empty", "the message has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("oversize", f"{len(raw)} bytes is over the {MAX_EVENT_BYTES}-byte limit")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(payload).__name__}")
    return payload


def _summarise(exc: ValidationError) -> str:
    """One line per field error, the first few only: dead letters must stay small."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in err["loc"][1:]) or "event"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def encode(record) -> bytes:
    """Serialise a pydantic record to compact JSON bytes (aliases used, None fields dropped)."""
    return record.__pydantic_serializer__.to_json(record, by_alias=True, exclude_none=True)
