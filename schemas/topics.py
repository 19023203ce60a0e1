"""Kafka topic names (one place), overridable by settings."""

from __future__ import annotations

from dataclasses import dataclass

#: The input topics the worker consumes, by ``Topics`` field name, in the order of their priority when rebalancing
#: (``KAIROS_INPUT_PARTITIONS`` names them so too).
INPUT_FIELDS = ("clicks", "purchases", "impressions", "rekeyed", "ad_requests")


@dataclass(frozen=True)
class Topics:
    clicks: str = "kairos.clicks"
    purchases: str = "kairos.purchases"
    impressions: str = "kairos.impressions"
    #: Valid events whose Kafka key did not put them on their user's partition are re-keyed here.
    rekeyed: str = "kairos.events.by-user"
    recommendations: str = "kairos.recommendations"
    dead_letters: str = "kairos.dead-letters"
    ad_requests: str = "kairos.ad-requests"
    ad_scores: str = "kairos.ad-scores"
    copy_requests: str = "kairos.copy-requests"
    #: Generated copy, keyed by item|segment (compacted on real Kafka): every worker's copy book reads it.
    copies: str = "kairos.copies"
    #: What the discovery model learns from each order (``PurchaseGraph.facts``), published by the shopper's
    #: partition, read in full by every worker (shared discovery, docs/state.md).
    discovery: str = "kairos.discovery"

    def inputs(self) -> tuple[str, ...]:
        """Topics the worker consumes, in the order of their priority when rebalancing."""
        return tuple(getattr(self, field) for field in INPUT_FIELDS)
