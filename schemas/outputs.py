"""Versioned output records: recommendations (to Kafka and Redis), dead letters and the orders of shared discovery."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kairos.schemas.events import Id


class SourceRef(BaseModel):
    """Where the event that triggered an output came from: lets a consumer measure latency and dedupe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    event_id: Id
    event_ts: float
    #: Kafka timestamp (seconds) of the oldest event this recommendation covers: event -> output latency.
    ingested_at: float | None = None


class RankedItem(BaseModel):

    item_id: Id
    score: float
    rank: int = Field(ge=1)
    #: Short machine-readable reasons, e.g. ``["category:home_decor", "co-purchased:85123A", "trending"]``.
    reasons: list[str] = Field(default_factory=list, max_length=8)
    #: Probability with which the exploration policy put this item in this slot (off-policy evaluation).
    propensity: float | None = Field(default=None, ge=0.0, le=1.0)
    name: str | None = None
    copy_text: str | None = Field(default=None, alias="copy")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Recommendation(BaseModel):
    """A ranked list of items for one user, produced after one (or a micro-batch of) their events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    rec_id: Id
    user_id: Id
    items: list[RankedItem] = Field(max_length=200)
    model_version: str
    state_version: int = Field(ge=0, description="number of events applied to this user's state")
    source: SourceRef
    produced_at: float


class DeadLetter(BaseModel):
    """An input record Kairos could not use, with why; raw bytes kept (base64 in JSON) for replay."""

    schema_version: Literal[1] = 1
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    raw: bytes
    error_class: str
    reason: str
    failed_at: float
    attempts: int = 1

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64")


class OrderSource(BaseModel):
    """The input record an order was applied from (readers learn each source record once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: int = Field(ge=0)
    topic: str
    offset: int = Field(ge=0)


class DiscoveryOrderFacts(BaseModel):
    """What the discovery model learns from one order, without the shopper's state (``engine.discovery.OrderFacts``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Id
    ts: float
    #: The distinct items bought, in line order: [item id, name or null].
    lines: list[tuple[Id, str | None]] = Field(min_length=1)
    first_order: bool
    #: The lines the shopper had bought before.
    known: list[Id]
    #: The shopper's latest purchases before this order.
    previous: list[Id]
    #: What the order says about each item: [item id, category id or null, unit price or null] (for the catalog of
    #: the partitions that learn the order; absent in records written before it).
    details: list[tuple[Id, Id | None, float | None]] = Field(default_factory=list)


class DiscoveryOrder(BaseModel):
    """An order on the discovery topic: published by the shopper's partition for every other partition's discovery
    model (shared discovery, docs/state.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    source: OrderSource
    order: DiscoveryOrderFacts
