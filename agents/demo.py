"""``kairos demo``: the whole spine on one machine with a live view.

Events come from the real data sets when a data directory exists, otherwise from the seeded shopper simulator
(and the demo says so). A few malformed payloads are mixed in to show the dead-letter path.

The hot path (the Faust app with the ingest role) runs in this process; the copy agent runs as its own process
(``kairos worker --roles copy``, as deployed), so text generation never holds this process's GIL (and, niced,
yields the CPU to it).
``--single-process`` runs both roles here (the demo before 2026-12-02, for comparison).
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
from kairos.agents.runtime import (
    CopyAgentProcess,
    CopySourceMonitor,
    RecommendationMonitor,
    Services,
    running_app,
    services,
    wait_for,
)
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


#: The copy agent's output; the demo's live view stays clean.
COPY_AGENT_LOG = Path("var/log/demo-copy-agent.log")
#: Start-up of the copy process: imports, the generator's load, joining the Faust group (Tansu holds a JoinGroup
#: for half the session timeout). Seconds, from its start.
COPY_AGENT_READY_S = 90.0


async def run_demo(
    settings: Settings, svc: Services, source: EventSource, rate: float | None, examples: int,
    single_process: bool = False,
) -> dict:  # fmt: skip
    bad = malformed_payloads(np.random.default_rng(0), 5)
    copy_agent = None if single_process else await _start_copy_agent(settings, svc)
    roles = frozenset({"ingest", "copy"}) if single_process else frozenset({"ingest"})
    try:
        async with running_app(settings, svc, roles=roles) as app:
            copy_note = await _copy_agent_ready(app, copy_agent, single_process)
            summary = await _run_events(settings, svc, source, rate, examples, bad, app)
        if copy_agent is not None and copy_agent.process.poll() is not None and copy_note["ready"]:
            console.print(f"[red]The copy agent's process exited (status {copy_agent.process.returncode}) during the "
                          f"demo: copy after that came from templates. See {copy_agent.log_path}.[/red]")  # fmt: skip
            copy_note["exited_early"] = copy_agent.process.returncode
    finally:
        if copy_agent is not None:
            await asyncio.to_thread(copy_agent.stop)
    return {**summary, "copy_agent": copy_note}


async def _start_copy_agent(settings: Settings, svc: Services) -> CopyAgentProcess | None:
    try:
        return await CopyAgentProcess.start(settings, svc, COPY_AGENT_LOG)
    except OSError as exc:
        console.print(f"[red]The copy agent's process could not be started ({exc}): copy comes from templates.[/red]")
        return None


async def _copy_agent_ready(app, copy_agent: CopyAgentProcess | None, single_process: bool) -> dict:
    """Wait until the copy agent has its partitions; say where it runs and with which writer, or plainly that it
    failed and copy comes from templates (the hot path never needed it)."""
    if single_process:
        ready = await wait_for(lambda: app.copy_partitions is not None, COPY_AGENT_READY_S)
        console.print(f"Copy agent: in this process (--single-process), writer {app.copy_writer.version}"
                      + ("" if ready else f"; [red]no copy-requests partitions after {COPY_AGENT_READY_S:.0f} s[/red]"))
        return {"where": "demo process", "writer": app.copy_writer.version, "ready": ready}
    if copy_agent is None:
        return {"where": "none (did not start)", "writer": "template", "ready": False}
    try:
        ready = await copy_agent.wait_ready(COPY_AGENT_READY_S)
    except RuntimeError as exc:
        console.print(
            f"[red]The copy agent's process (pid {copy_agent.pid}) did not start: {exc}. Copy comes from templates "
            f"in this run. Last lines of {copy_agent.log_path}:[/red]\n{copy_agent.log_tail()}"
        )
        await asyncio.to_thread(copy_agent.stop)
        return {"where": f"none ({exc})", "writer": "template", "ready": False}
    console.print(
        f"Copy agent: own process (pid {ready['pid']}, `kairos worker --roles copy`), writer {ready['copy_writer']}, "
        f"copy-requests partitions {ready['copy_partitions']}; log {copy_agent.log_path}"
    )
    return {"where": f"own process (pid {ready['pid']})", "writer": ready["copy_writer"], "ready": True,
            "pid": ready["pid"]}  # fmt: skip


async def _run_events(settings: Settings, svc: Services, source: EventSource, rate: float | None, examples: int,
                      bad: list[bytes], app) -> dict:  # fmt: skip
    worker = app.ingest_worker
    copies = CopySourceMonitor(settings, svc.bootstrap)
    await copies.start()
    monitor = RecommendationMonitor(settings, svc.bootstrap, copy_source=copies)
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
    with_copy = sum(n for (_, text), n in monitor.copies.items() if text)
    generated = sum(n for (item, text), n in monitor.copies.items() if copies.is_generated(item, text))
    summary = {
        "source": source.label,
        "simulated": source.simulated,
        "events": worker.stats["events"],
        "recommendations": worker.stats["recommendations"],
        "dead_letters": worker.stats["dead_letters"],
        # Orders learned by a partition other than their shopper's (shared discovery; 0 with one partition).
        "orders_shared_between_partitions": worker.stats["peer_orders"],
        "events_per_s": round(worker.stats["events"] / elapsed, 1),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "copies_written": dict(sorted(copies.sources.items())),
        "recommended_items_with_generated_copy": f"{generated:,} of {with_copy:,}",
        # The hot path's copy book at the end: missed keys waiting for a place in its window, and keys asked for
        # and not answered yet (at most KAIROS_COPY_IN_FLIGHT; docs/selection.md, "Which copy is generated first").
        "copy_requests": {"waiting": app.copybook.pending, "outstanding": app.copybook.outstanding},
    }
    _print_examples(monitor, copies, examples)
    await copies.stop()
    await monitor.stop()
    return summary


def _print_examples(monitor: RecommendationMonitor, copies: CopySourceMonitor, n: int) -> None:
    """The last ``n`` recommendations; if none of them shows generated copy, also the latest one that did. Each
    copy line says where its text came from."""
    latest = list(monitor.examples.values())[-n:] if n else []
    for rec in latest:
        _print_recommendation(rec, copies)
    shown = any(copies.is_generated(i["item_id"], i.get("copy")) for rec in latest for i in rec["items"][:5])
    if n and not shown and monitor.with_generated_copy:
        console.print("[bold]The latest recommendation with generated copy:[/bold]")
        _print_recommendation(monitor.with_generated_copy[-1], copies)


def _print_recommendation(rec: dict, copies: CopySourceMonitor) -> None:
    console.print(f"[bold]user {rec['user_id']}[/bold] (state v{rec['state_version']}, {rec['model_version']}):")
    for item in rec["items"][:5]:
        name = item.get("name") or "(no name in stream)"
        console.print(f"   {item['rank']:>2}. {item['item_id']:<12} {name[:44]:<44} {item['score']:7.3f}  {', '.join(item['reasons'][:2])}")
        if item.get("copy"):
            where = "generated" if copies.is_generated(item["item_id"], item["copy"]) else "template"
            console.print(f"       [italic]{item['copy'][:110]}[/italic] [dim]({where})[/dim]")


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
    build_models: bool = False, single_process: bool = False,
) -> dict:
    ensure_models(settings, data_dir, build_models)
    picked = pick_source(data_dir, source, limit)
    if picked.simulated:
        console.print("[yellow]No data directory: the events below are SIMULATED by Kairos's seeded shopper simulator.[/yellow]")
    with services(settings) as svc:
        where = "embedded Tansu" if svc.embedded_kafka else svc.bootstrap
        console.print(f"Kafka: {where} ({svc.bootstrap}); Redis: {'embedded' if svc.embedded_redis else 'configured'}")
        summary = asyncio.run(run_demo(settings, svc, picked, rate, examples, single_process))
    console.print("[bold]Summary[/bold]", summary)
    return summary
