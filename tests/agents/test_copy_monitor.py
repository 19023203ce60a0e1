"""``kairos demo``'s copy monitor (agents/runtime.py ``CopySourceMonitor``): it tells generated copy from templates
in recommendations, and what it remembers for that stays bounded however long the demo runs."""

from __future__ import annotations

import orjson

from kairos.agents.runtime import CopySourceMonitor
from kairos.agents.settings import Settings


def _record(item: str, text: str, source: str = "generated", kind: str = "product") -> bytes:
    return orjson.dumps({"item_id": item, "text": text, "source": source, "kind": kind, "segment": "cold"})


def test_generated_pairs_are_recognised_and_the_oldest_forgotten_beyond_the_bound(monkeypatch):
    monkeypatch.setattr(CopySourceMonitor, "MAX_GENERATED", 3)
    monitor = CopySourceMonitor(Settings(), "127.0.0.1:1")  # nothing is consumed here: records are fed directly
    for k in range(4):
        monitor._apply(_record(f"i{k}", f"copy {k}"))
    monitor._apply(_record("i1", "copy 1"))  # seen again: now the newest
    monitor._apply(_record("i9", "template text", source="template"))
    monitor._apply(b"{not json")  # ignored with a warning
    assert len(monitor.generated) == 3
    assert not monitor.is_generated("i0", "copy 0")  # the oldest went first
    assert monitor.is_generated("i1", "copy 1") and monitor.is_generated("i3", "copy 3")
    assert not monitor.is_generated("i9", "template text") and not monitor.is_generated("i1", None)
    monitor._apply(_record("i4", "copy 4"))
    assert not monitor.is_generated("i2", "copy 2") and monitor.is_generated("i1", "copy 1")
    assert monitor.sources == {"product:generated": 6, "product:template": 1}
    assert monitor.received == 7
