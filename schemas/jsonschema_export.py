"""JSON Schema files for every record, so producers and consumers in other languages can validate."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from kairos.schemas.events import ClickEvent, ImpressionEvent, PurchaseEvent
from kairos.schemas.outputs import DeadLetter, DiscoveryOrder, Recommendation


def records() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {
        "click_event": ClickEvent,
        "purchase_event": PurchaseEvent,
        "impression_event": ImpressionEvent,
        "recommendation": Recommendation,
        "dead_letter": DeadLetter,
        "discovery_order": DiscoveryOrder,
    }
    try:  # the ad records arrive with the ads feature
        from kairos.schemas.ads import AdRequest, ScoredCreative

        found.update(ad_request=AdRequest, scored_creative=ScoredCreative)
    except ImportError:
        pass
    return found


def json_schema(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema(by_alias=True, mode="serialization" if model is not DeadLetter else "validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://kairos.example/schemas/v1/{model.__name__}.json"
    return schema


def export_json_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in records().items():
        path = out_dir / f"{name}.v1.json"
        path.write_text(json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
