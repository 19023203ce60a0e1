"""``kairos bench copy``: generated headline variants of real creatives (or, with ``--kind product``, product copy
for Online Retail items), written the way the copy agent writes them.

The creatives are the ones ad requests actually bid with (each campaign's shortlist, ``engine/ads.py``), the
requests are built by the serving code (``variant_request``), and the writer is the ``write_copy`` agent's:
``CopyWriter`` over ``load_generator`` (the ONNX generator in the model directory) with the default safety filter,
in batches of the agent's size. Only the generation is timed (no broker, no Redis). The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kairos.agents.app import COPY_BATCH, load_generator
from kairos.agents.settings import Settings, load_settings
from kairos.engine.ads import AdSelector, variant_request
from kairos.engine.copywriting import CopyRequest, CopyWriter, category_interest
from kairos.engine.creatives import load_inventory
from kairos.engine.selection import category_segment


def shortlisted_requests(data_dir: Path | None, n: int) -> tuple[list[CopyRequest], bool]:
    """Variant requests for the first ``n`` shortlisted creatives (campaigns in id order); True if synthetic."""
    inventory = load_inventory(data_dir)
    shortlists = AdSelector(inventory).shortlists
    creatives = [c for campaign in sorted(shortlists) for c in shortlists[campaign]][:n]
    return [variant_request(c) for c in creatives], inventory.synthetic


def product_requests(data_dir: Path | None, n: int) -> tuple[list[CopyRequest], bool]:
    """Product copy requests for the first ``n`` distinct items ordered in the Online Retail stream (the simulator's
    without it; True then), as the hot path makes them: the item's name, category and price, the segment and the
    interest its own category (``Selector._with_copy``)."""
    from kairos.agents.demo import pick_source

    source = "online_retail" if data_dir is not None and (Path(data_dir) / "online_retail").is_dir() else "simulated"
    picked = pick_source(data_dir, source, max(20 * n, 2_000))
    requests: dict[str, CopyRequest] = {}
    for event in picked.events:
        for line in getattr(event, "lines", ()):
            if line.item_id not in requests and line.name and len(requests) < n:
                category = line.category_id or ""
                interest = category_interest(category)
                requests[line.item_id] = CopyRequest(line.item_id, category_segment(category), line.name, category,
                                                     float(line.unit_price), (interest,) if interest else ())  # fmt: skip
    return list(requests.values()), "SIMULATED" in picked.label


def bench_copy(settings: Settings, creatives: int = 16, batch: int = COPY_BATCH, examples: int = 5,
               kind: str = "ad") -> dict:  # fmt: skip
    """Write one generated text per creative (``kind`` "ad": a headline variant) or per product ("product": its
    copy); counts by outcome and milliseconds per text (per batch)."""
    if kind == "product":
        requests, synthetic = product_requests(settings.resolved_data_dir(), creatives)
    else:
        requests, synthetic = shortlisted_requests(settings.resolved_data_dir(), creatives)
    generator = load_generator(settings)
    if generator is None:
        return {"error": f"no generator in {settings.model_dir}: copy would come from templates"}
    generator.generate(["Write one line."], max_new_tokens=2)  # warm-up (first-run allocations), not timed
    recorder = _Recorder(generator)
    writer = CopyWriter(recorder, min_logprob=settings.copy_min_logprob)
    texts, ms_per_variant, started = [], [], time.perf_counter()
    for i in range(0, len(requests), batch):
        chunk = requests[i : i + batch]
        recorder.new_batch()
        t0 = time.perf_counter()
        texts += writer.write(chunk)
        ms_per_variant.append((time.perf_counter() - t0) * 1000.0 / len(chunk))
    total_s = time.perf_counter() - started
    sources = Counter(t.source for t in texts)
    stats = writer.stats
    return {
        "writer": writer.version, "kind": kind, "creatives": len(requests), "synthetic_inventory": synthetic, "batch": batch,
        "variants": sources["generated"] + sources["regenerated"], "generated_first_try": sources["generated"],
        "regenerated_ok": sources["regenerated"], "template_fallbacks": sources["template"],
        "empty_fallbacks": sum(1 for t in texts if t.source == "template" and not t.reasons),
        "headline_repeated": sum(1 for t in texts if "duplicate:headline" in t.reasons),
        "safety_checked": stats.checked, "safety_rejected": stats.blocked, "rejected_by_reason": dict(stats.reasons),
        "retries_identical_to_first_try": recorder.identical_retries, "max_new_tokens": writer.max_new_tokens,
        "min_logprob": writer.min_logprob,
        "mean_logprob_p50": round(float(np.median(recorder.logprobs)), 2) if recorder.logprobs else None,
        "p50_ms_per_variant": round(float(np.median(ms_per_variant)), 1),
        "max_ms_per_variant": round(float(np.max(ms_per_variant)), 1), "total_s": round(total_s, 2),
        "cpu_count": os.cpu_count(),
        "examples": [{"creative_id": r.item_id, "headline": r.name, "text": t.text, "source": t.source,
                      "reasons": list(t.reasons)} for r, t in list(zip(requests, texts))[:examples]],
    }  # fmt: skip


class _Recorder:
    """The generator, remembering each batch's first texts: a retry that repeats its first text is wasted work."""

    def __init__(self, generator) -> None:
        self.generator, self.name, self.version = generator, generator.name, generator.version
        self.whole_word = getattr(generator, "whole_word", None)  # the copy checks ask it (engine/copywriting.py)
        self.first: dict[str, str] | None = None
        self.identical_retries = 0
        self.logprobs: list[float] = []  # every scored text's mean token log-probability
        if not hasattr(generator, "generate_scored"):
            self.generate_scored = None  # an unscored generator: CopyWriter skips the check

    def new_batch(self) -> None:
        self.first = None

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        texts = self.generator.generate(prompts, max_new_tokens=max_new_tokens, sample=sample, cancel=cancel)
        return self._record(prompts, texts)

    def generate_scored(self, prompts, *, max_new_tokens: int = 64, sample: bool = False,
                        cancel=None) -> tuple[list[str], list[float]]:  # fmt: skip
        """The generator's texts with their mean token log-probabilities (CopyWriter's ``unlikely`` check)."""
        texts, means = self.generator.generate_scored(prompts, max_new_tokens=max_new_tokens, sample=sample, cancel=cancel)
        self.logprobs += means
        return self._record(prompts, texts), means

    def _record(self, prompts, texts: list[str]) -> list[str]:
        if self.first is None:
            self.first = dict(zip(prompts, texts))
        else:
            self.identical_retries += sum(1 for p, t in zip(prompts, texts) if self.first.get(p) == t)
        return texts


def _cmd_bench_copy(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("model_dir", args.model_dir), ("data_dir", args.data_dir)) if v is not None}
    result = bench_copy(load_settings(**overrides), args.creatives, args.batch, args.examples, args.kind)
    for example in result.get("examples", []):
        print(f"[{example['source']}] {example['headline']!r} -> {example['text']!r}")
    print(json.dumps(result, ensure_ascii=False))
    return 1 if "error" in result else 0


def register(groups: dict) -> None:
    """Add ``bench copy`` to the CLI."""
    p = groups["bench"].add_parser("copy", help="generated headline variants of real creatives (copy agent's writer)")
    p.add_argument("--model-dir", type=Path, default=None, help="default KAIROS_MODEL_DIR (var/models)")
    p.add_argument("--data-dir", type=Path, default=None, help="creatives (default ../shared/data)")
    p.add_argument("--creatives", type=int, default=16, help="texts to write (creatives, or products with --kind product)")
    p.add_argument("--kind", default="ad", choices=["ad", "product"],
                   help="ad: headline variants of creatives; product: copy for Online Retail products")  # fmt: skip
    p.add_argument("--batch", type=int, default=COPY_BATCH)
    p.add_argument("--examples", type=int, default=5)
    p.set_defaults(func=_cmd_bench_copy)
