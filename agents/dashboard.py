"""The live SRE dashboard: one static page (agents/static/dashboard.html) that polls ``/dashboard/data`` every
second. The JSON summarises Prometheus metrics: totals (the page turns them into rates), latency percentiles over
the last ~10 s (from histogram bucket deltas, Prometheus' ``histogram_quantile`` interpolation), lag, dead letters
by reason and model stats.

Sources: this process's own registry (a worker or the API), or the ``/metrics`` endpoints of other processes
(``scrape_urls``), summed, so one page can show a whole deployment without Prometheus.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from collections import deque
from collections.abc import Iterable
from importlib import resources

import orjson
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

#: Histograms shown as percentiles: (metric name, label that splits it or None, display prefix).
HISTOGRAMS = (
    ("kairos_step_seconds", "step", "step"),
    ("kairos_event_to_recommendation_seconds", None, "event_to_recommendation"),
    ("kairos_redis_write_seconds", None, "redis_write"),
    ("kairos_api_request_seconds", "route", "api"),
    ("kairos_model_inference_seconds", "model", "model"),
)
WINDOW_S = 10.0


Samples = list[tuple[str, dict[str, str], float]]


def local_samples() -> Samples:
    return [(s.name, s.labels, s.value) for family in REGISTRY.collect() for s in family.samples]


def scraped_samples(urls: Iterable[str], timeout_s: float = 1.0) -> Samples:
    """Samples of every reachable endpoint, concatenated (summing happens in :func:`summarize`)."""
    out: Samples = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - operator-configured URL
                text = response.read().decode()
        except OSError:
            continue
        out += [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]
    return out


def _sum(
    samples: Samples, name: str, by: str | None = None, where: dict[str, str] | None = None
) -> float | dict[str, float]:
    """The samples of ``name`` summed (over processes and series), per value of the label ``by`` if given; only the
    series whose labels include ``where``."""
    picked = [(labels, v) for n, labels, v in samples
              if n == name and (where is None or all(labels.get(k) == w for k, w in where.items()))]  # fmt: skip
    if by is None:
        return sum(v for _, v in picked)
    out: dict[str, float] = {}
    for labels, v in picked:
        out[labels.get(by, "")] = out.get(labels.get(by, ""), 0.0) + v
    return out


def buckets(samples: Samples) -> dict[str, dict[float, float]]:
    """``display name -> {upper bound: cumulative count}`` for every histogram series in HISTOGRAMS."""
    wanted = {name + "_bucket": (label, prefix) for name, label, prefix in HISTOGRAMS}
    out: dict[str, dict[float, float]] = {}
    for name, labels, value in samples:
        spec = wanted.get(name)
        if spec is None:
            continue
        label, prefix = spec
        key = f"{prefix}:{labels[label]}" if label else prefix
        series = out.setdefault(key, {})
        bound = float(labels["le"])
        series[bound] = series.get(bound, 0.0) + value
    return out


def quantile(q: float, series: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile on cumulative bucket counts: linear inside the bucket that holds rank q."""
    bounds = sorted(series)
    total = series[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = series[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = bound, count
    return lower


def summarize(samples: Samples, window: dict[str, dict[float, float]] | None = None) -> dict:
    """The JSON the page renders. ``window``: bucket counts of ~10 s ago, subtracted for recent percentiles."""
    now_buckets = buckets(samples)
    latency = {}
    for key, series in sorted(now_buckets.items()):
        base = (window or {}).get(key, {})
        recent = {b: c - base.get(b, 0.0) for b, c in series.items()}
        use = recent if recent and max(recent.values()) > 0 else series
        p50, p99 = quantile(0.5, use), quantile(0.99, use)
        if p50 is not None:
            latency[key] = {"p50_ms": round(p50 * 1000, 4), "p99_ms": round(p99 * 1000, 4), "count": max(use.values())}
    dead = _sum(samples, "kairos_dead_letters_total", "reason")
    lag = {f"{l.get('topic')}/{l.get('partition')}": v for n, l, v in samples if n == "kairos_consumer_lag"}
    providers = sorted({f"{l.get('model')}:{l.get('provider')}" for n, l, v in samples if n == "kairos_model_provider" and v})
    return {
        "ts": time.time(),
        "events_in_total": _sum(samples, "kairos_events_in_total"),
        "events_out_total": _sum(samples, "kairos_events_out_total"),
        "recommendations_total": _sum(samples, "kairos_recommendations_total"),
        "api_requests_total": _sum(samples, "kairos_api_requests_total"),
        "dead_letters_total": sum(dead.values()),
        "dead_letters": dead,
        "lag_total": sum(lag.values()),
        "lag": lag,
        "partitions_owned": _sum(samples, "kairos_partitions_owned"),
        "users_in_memory": _sum(samples, "kairos_users_in_memory"),
        "serving_stale": _sum(samples, "kairos_serving_stale"),
        "latency": latency,
        "model": {
            "providers": providers,
            "ranker_fallbacks_total": _sum(samples, "kairos_ranker_fallbacks_total"),
            "generation_queue_depth": _sum(samples, "kairos_generation_queue_depth"),
        },
        "copy": _copy_summary(samples),
    }


def _copy_summary(samples: Samples) -> dict:
    """The copy books' lookups (the page turns the totals into the share of recommended items shown with generated
    copy), their queues and the copy agents' skipped repeats."""
    lookups = _sum(samples, "kairos_cache_lookups_total", "result", where={"cache": "copy"})
    queue = _sum(samples, "kairos_copy_requests", "state")
    return {
        "hits_total": lookups.get("hit", 0.0),
        "misses_total": lookups.get("miss", 0.0),
        "pending": queue.get("pending", 0.0),
        "outstanding": queue.get("outstanding", 0.0),
        "repeats_skipped_total": _sum(samples, "kairos_copy_repeats_skipped_total"),
    }


class DashboardApp:
    """ASGI app for ``/dashboard`` (the page) and ``/dashboard/data`` (the JSON)."""

    def __init__(self, scrape_urls: list[str] | None = None) -> None:
        self.scrape_urls = scrape_urls or []
        self._history: deque[tuple[float, dict]] = deque()
        self._page = resources.files("kairos.agents").joinpath("static/dashboard.html").read_bytes()

    async def snapshot(self) -> dict:
        if self.scrape_urls:
            samples = await asyncio.to_thread(scraped_samples, self.scrape_urls)
        else:
            samples = local_samples()
        now = time.monotonic()
        self._history.append((now, buckets(samples)))
        while len(self._history) > 1 and now - self._history[1][0] >= WINDOW_S:
            self._history.popleft()
        window = self._history[0][1] if now - self._history[0][0] > 0.5 else None
        return summarize(samples, window)

    async def __call__(self, scope, receive, send) -> None:
        path = scope["path"].rstrip("/")
        if path == "/dashboard/data":
            status, body, ctype = 200, orjson.dumps(await self.snapshot()), b"application/json"
        elif path == "/dashboard":
            status, body, ctype = 200, self._page, b"text/html; charset=utf-8"
        else:
            status, body, ctype = 404, b'{"error":"not found"}', b"application/json"
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
