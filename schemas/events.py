"""Versioned input events: what storefronts and order systems send to Kairos.

Every record carries ``schema_version`` so a consumer can refuse what it does not understand, and rejects unknown
fields (``extra="forbid"``) so a typo in a producer shows up as a dead letter instead of silently lost data.
Timestamps are Unix epoch seconds (float, UTC); :data:`MIN_EVENT_TS` / :data:`MAX_FUTURE_SKEW_S` bound them so a
milliseconds-for-seconds mix-up is caught rather than decaying a user's state into the far future.

>>> ClickEvent(event_id="e1", user_id="u1", item_id="i1", action="view", ts=1_700_000_000).action
'view'
"""

from __future__ import annotations

import time
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

#: 2000-01-01T00:00:00Z. Real data sets used here start in 2009 (Online Retail) and 2017 (Taobao).
MIN_EVENT_TS = 946_684_800.0
#: Producers' clocks drift; an event more than a day in the future is a unit error, not skew.
MAX_FUTURE_SKEW_S = 86_400.0
#: Largest accepted encoded event. Orders with hundreds of lines fit easily; anything bigger is abuse or a bug.
MAX_EVENT_BYTES = 64 * 1024
MAX_ORDER_LINES = 500
MAX_SLATE_ITEMS = 100

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f]+$")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class EventKind(StrEnum):
    CLICK = "click"
    PURCHASE = "purchase"
    IMPRESSION = "impression"


class ClickAction(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    FAVOURITE = "favourite"
    REMOVE_FROM_CART = "remove_from_cart"


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id
    user_id: Id
    ts: float = Field(description="event time, Unix epoch seconds (UTC)")

    @field_validator("ts")
    @classmethod
    def _plausible_time(cls, ts: float) -> float:
        if not ts == ts or ts < MIN_EVENT_TS:  # NaN fails the first comparison
            raise ValueError(f"timestamp {ts!r} is before 2000-01-01 (milliseconds instead of seconds?)")
        if ts > time.time() + MAX_FUTURE_SKEW_S:
            raise ValueError(f"timestamp {ts!r} is more than a day in the future")
        return ts


class ClickEvent(_Event):
    """A shopper's interaction with one item: view, click, add-to-cart, favourite..."""

    kind: Literal["click"] = "click"
    item_id: Id
    action: ClickAction
    category_id: Id | None = None
    session_id: Id | None = None
    #: Set when the interaction came from something Kairos served (feedback join by rec id).
    rec_id: Id | None = None
    position: int | None = Field(default=None, ge=1, le=1000)


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: Id
    quantity: int = Field(description="negative on a return line", ge=-100_000, le=100_000)
    unit_price: Decimal = Field(ge=0, max_digits=14, decimal_places=4)
    currency: Currency = "GBP"
    category_id: Id | None = None
    name: str | None = Field(default=None, max_length=500)

    @field_validator("quantity")
    @classmethod
    def _non_zero(cls, quantity: int) -> int:
        if quantity == 0:
            raise ValueError("quantity must not be zero")
        return quantity


class PurchaseEvent(_Event):
    """An order (or, with ``is_return``, a cancellation/return) with its lines."""

    kind: Literal["purchase"] = "purchase"
    order_id: Id
    lines: list[OrderLine] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    is_return: bool = False
    rec_id: Id | None = None

    @model_validator(mode="after")
    def _line_signs_match(self) -> "PurchaseEvent":
        wrong = [line.item_id for line in self.lines if (line.quantity < 0) != self.is_return]
        if wrong:
            kind = "a return" if self.is_return else "an order"
            raise ValueError(f"{kind} has lines with the wrong quantity sign: {wrong[:5]}")
        return self


class ShownItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: Id
    position: int = Field(ge=1, le=1000)


class ImpressionEvent(_Event):
    """What a storefront actually showed a shopper, from which recommendation, in which slots."""

    kind: Literal["impression"] = "impression"
    rec_id: Id
    items: list[ShownItem] = Field(min_length=1, max_length=MAX_SLATE_ITEMS)
    slot: Id = "home"

    @model_validator(mode="after")
    def _distinct_positions(self) -> "ImpressionEvent":
        positions = [item.position for item in self.items]
        if len(set(positions)) != len(positions):
            raise ValueError("two shown items share a position")
        return self


ShopperEvent = Annotated[Union[ClickEvent, PurchaseEvent, ImpressionEvent], Field(discriminator="kind")]
