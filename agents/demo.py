"""``kairos demo``: the whole spine on one machine with a live view.

Events come from the real data sets when a data directory exists, otherwise from the seeded shopper simulator
(and the demo says so). A few malformed payloads are mixed in to show the dead-letter path.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kairos.agents.kafka_config import kafka_client_options
from kairos.agents.replay import produce_events
from kairos.agents.runtime import RecommendationMonitor, Services, running_app, services, wait_for
from kairos.agents.settings import Settings
from kairos.engine.datasets import default_data_dir, load_events
from kairos.engine.simulator import ShopperSimulator, malformed_payloads

console = Console()


@dataclass
class EventSource:
    label: str
    simulated: bool
    events: list


def pick_source(data_dir: Path | None, source: str, limit: int, seed: int = 0) -> EventSource:
    data_dir = data_dir or default_data_dir()
    if data_dir is not None and Path(data_dir).is_dir() and source != "simulated":
        events = load_events(data_dir, source=source, limit=limit)
        return EventSource(f"real data: {source} from {data_dir}", False, events)
    sim = ShopperSimulator(seed=seed)
    return EventSource("SIMULATED shoppers (no data directory found; seeded simulator)", True, list(sim.events(limit)))


async def produce(settings: Settings, bootstrap: str, events: list, rate: float | None, bad: list[bytes]) -> int:
    """Produce events keyed by user (``kairos replay``'s producer) at ``rate`` per second (None = as fast as
    possible), with the malformed payloads spread evenly through the stream; returns the records sent."""
    stream: list = list(events)
    for i, payload in enumerate(bad):
        stream.insert(min(len(stream), (i + 1) * len(stream) // (len(bad) + 1)), payload)
    report = await produce_events(
        bootstrap, settings.topics, stream, rate=rate, progress=False, client_options=kafka_client_options(settings)
    )
    return report.total


def _status_table(source: EventSource, worker, monitor: RecommendationMonitor, rates: tuple[float, float]) -> Table:
    p50, p99 = monitor.percentiles(last=5000)
    table = Table(title=f"Kairos demo - {source.label}", title_justify="left")
    for name in ("events", "events/s", "recs", "recs/s", "p50 ms", "p99 ms", "dead letters"):
        table.add_column(name, justify="right")
    s = worker.stats
    table.add_row(
        f"{s['events']:,}", f"{rates[0]:,.0f}", f"{s['recommendations']:,}", f"{rates[1]:,.0f}",
        f"{p50:.1f}", f"{p99:.1f}", f"{s['dead_letters']:,}",
    )  # fmt: skip
    return table


async def run_demo(settings: Settings, svc: Services, source: EventSource, rate: float | None, examples: int) -> dict:
    bad = malformed_payloads(np.random.default_rng(0), 5)
    async with running_app(settings, svc) as app:
        worker = app.ingest_worker
        monitor = RecommendationMonitor(settings, svc.bootstrap)
        await monitor.start()
        t0 = time.monotonic()
        producing = asyncio.create_task(produce(settings, svc.bootstrap, source.events, rate, bad))
        last = (t0, 0, 0)
        rates = (0.0, 0.0)
        with Live(_status_table(source, worker, monitor, rates), console=console, refresh_per_second=4) as live:
            while not (producing.done() and worker.stats["events"] >= producing.result()):
                await asyncio.sleep(0.5)
                now, s = time.monotonic(), worker.stats
                rates = ((s["events"] - last[1]) / (now - last[0]), (s["recommendations"] - last[2]) / (now - last[0]))
                last = (now, s["events"], s["recommendations"])
                live.update(_status_table(source, worker, monitor, rates))
        elapsed = time.monotonic() - t0
        await wait_for(lambda: monitor.received >= worker.stats["recommendations"], 5.0)
        p50, p99 = monitor.percentiles()
        summary = {
            "source": source.label,
            "simulated": source.simulated,
            "events": worker.stats["events"],
            "recommendations": worker.stats["recommendations"],
            "dead_letters": worker.stats["dead_letters"],
            "events_per_s": round(worker.stats["events"] / elapsed, 1),
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
        }
        _print_examples(monitor, examples)
        await monitor.stop()
    return summary


def _print_examples(monitor: RecommendationMonitor, n: int) -> None:
    for rec in list(monitor.examples.values())[-n:]:
        console.print(f"[bold]user {rec['user_id']}[/bold] (state v{rec['state_version']}, {rec['model_version']}):")
        for item in rec["items"][:5]:
            name = item.get("name") or "(no name in stream)"
            console.print(f"   {item['rank']:>2}. {item['item_id']:<12} {name[:44]:<44} {item['score']:7.3f}  {', '.join(item['reasons'][:2])}")
            if item.get("copy"):
                console.print(f"       [italic]{item['copy'][:110]}[/italic]")


def models_present(model_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in Path(model_dir).glob("*/CURRENT")) if Path(model_dir).is_dir() else []


def ensure_models(settings: Settings, data_dir: Path | None, build: bool) -> None:
    """Say which models the demo runs with; with ``build``, build the missing ones first (needs the train extra)."""
    present = models_present(settings.model_dir)
    if present:
        console.print(f"Models in {settings.model_dir}: {', '.join(present)}")
        return
    if not build:
        console.print(
            f"[yellow]No models in {settings.model_dir}: ranking with the online River/heuristic ranker and template "
            "copy. Build them with `kairos models build` (train extra) or `kairos demo --build-models`.[/yellow]"
        )
        return
    try:
        from kairos.onnx_export.build import build_models
    except ImportError as exc:
        raise SystemExit(f"--build-models needs the train extra (pip install -e '.[train]'): {exc}") from None
    source = data_dir or default_data_dir()
    if source is None:
        raise SystemExit("--build-models needs the real data sets (--data-dir or ../shared/data)")
    with console.status("building models (small profile: 5-11 min on 2 cores)...") as status:
        build_models(Path(source), settings.model_dir, "small", say=lambda message: status.update(f"building models: {message}"))


def demo_main(
    settings: Settings, data_dir: Path | None, source: str, limit: int, rate: float | None, examples: int,
    build_models: bool = False,
) -> dict:
    ensure_models(settings, data_dir, build_models)
    picked = pick_source(data_dir, source, limit)
    if picked.simulated:
        console.print("[yellow]No data directory: the events below are SIMULATED by Kairos's seeded shopper simulator.[/yellow]")
    with services(settings) as svc:
        where = "embedded Tansu" if svc.embedded_kafka else svc.bootstrap
        console.print(f"Kafka: {where} ({svc.bootstrap}); Redis: {'embedded' if svc.embedded_redis else 'configured'}")
        summary = asyncio.run(run_demo(settings, svc, picked, rate, examples))
    console.print("[bold]Summary[/bold]", summary)
    return summary
