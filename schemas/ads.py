"""Ad-serving records: the request for a creative slot and the scored, auctioned creative the engine emits.

Self-contained on purpose (pydantic and the standard library only) so producers and consumers outside the
engine can validate messages without importing it. Money is in the campaign's currency per click (bids,
clearing prices) or per impression (expected value, reserve); see ``docs/selection.md`` for the convention.

Examples
--------
>>> req = AdRequest(request_id="r1", user_id="u1", slot="home_banner", ts=1_700_000_000.0)
>>> req.context
{}
>>> AdRequest(request_id="", user_id="u1", slot="s", ts=0.0)
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for AdRequest
...
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Bump when a field of :class:`ScoredCreative` changes meaning; consumers check it before decoding. A new optional
#: field with a default (``headline``) keeps the version: every earlier v1 record still validates. A reader that
#: validates against an older copy of ``schemas/jsonschema/scored_creative.v1.json`` (``additionalProperties``
#: false) must take the current file to accept records that carry the new field.
SCORED_CREATIVE_SCHEMA_VERSION = 1

NonEmptyId = Annotated[str, Field(min_length=1, max_length=256)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Money = Annotated[float, Field(ge=0.0)]
Timestamp = Annotated[float, Field(ge=0.0, description="Unix seconds")]


class AdRequest(BaseModel):
    """One request for a creative in a named slot, for one user, at event time ``ts``.

    ``context`` carries free-form request attributes (page, device, segment) as strings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: NonEmptyId
    user_id: NonEmptyId
    slot: NonEmptyId
    context: dict[str, str] = Field(default_factory=dict)
    ts: Timestamp


class ScoredCreative(BaseModel):
    """The creative picked for an :class:`AdRequest`, with the numbers that picked and priced it.

    ``bid`` and ``clearing_price`` are per click; ``expected_value`` (pCTR x bid) and ``reserve`` are per
    impression. ``propensity`` is the probability with which the serving policy showed this creative, logged
    for off-policy evaluation. A lost auction (``won`` false) has ``clearing_price`` 0. ``headline`` is the
    text of the variant ``variant_id`` names (one of the creative's own or a generated one); absent in records
    written before it was added.

    >>> sc = ScoredCreative(request_id="r1", user_id="u1", creative_id="c1", campaign_id="k1",
    ...     variant_id="c1:0", pctr=0.05, bid=1.0, expected_value=0.05, clearing_price=0.6,
    ...     reserve=0.01, won=True, propensity=0.9, reasons=["auction:won"], produced_at=1.0)
    >>> sc.schema_version
    1
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCORED_CREATIVE_SCHEMA_VERSION
    request_id: NonEmptyId
    user_id: NonEmptyId
    creative_id: NonEmptyId
    campaign_id: NonEmptyId
    variant_id: NonEmptyId
    headline: str | None = None
    pctr: Probability
    bid: Money
    expected_value: Money
    clearing_price: Money
    reserve: Money
    won: bool
    propensity: Probability
    reasons: list[str] = Field(default_factory=list)
    produced_at: Timestamp = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _price_within_bid(self) -> ScoredCreative:
        # Second-price pricing never charges more than the bid; a larger price means a pricing bug upstream.
        if self.clearing_price > self.bid + 1e-9:
            raise ValueError(f"clearing_price {self.clearing_price} exceeds bid {self.bid}")
        if not self.won and self.clearing_price != 0.0:
            raise ValueError("a lost auction has clearing_price 0")
        return self
