"""The live dashboard: its JSON summary, and the page in a real headless Chromium with a worker under load."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from kairos.agents.api import create_app
from kairos.agents.dashboard import quantile, summarize
from kairos.agents.embedded import free_port
from kairos.agents.redis_store import RedisStateStore
from kairos.agents.topics_admin import ensure_topics
from kairos.agents.worker import IngestWorker
from kairos.schemas.keys import RedisKeys

from agents_helpers import apoll_until, poll_until

CHROMIUM = "/usr/bin/chromium"


def test_quantile_interpolates_like_prometheus():
    # 100 observations: 50 in (0, 1], 40 in (1, 2], 10 in (2, 4]
    series = {1.0: 50, 2.0: 90, 4.0: 100, float("inf"): 100}
    assert quantile(0.5, series) == pytest.approx(1.0)
    assert quantile(0.7, series) == pytest.approx(1.5)
    assert quantile(0.99, series) == pytest.approx(3.8)
    assert quantile(0.5, {1.0: 0, float("inf"): 0}) is None


def test_summary_uses_recent_window_and_sums_series():
    samples = [
        ("kairos_events_in_total", {"topic": "a"}, 7.0),
        ("kairos_events_in_total", {"topic": "b"}, 3.0),
        ("kairos_dead_letters_total", {"reason": "not_json"}, 2.0),
        ("kairos_consumer_lag", {"topic": "a", "partition": "0"}, 5.0),
        ("kairos_step_seconds_bucket", {"step": "rank", "le": "0.001"}, 100.0),
        ("kairos_step_seconds_bucket", {"step": "rank", "le": "0.01"}, 200.0),
        ("kairos_step_seconds_bucket", {"step": "rank", "le": "+Inf"}, 200.0),
    ]
    old = {"step:rank": {0.001: 100.0, 0.01: 100.0, float("inf"): 100.0}}  # all fast ones are old
    out = summarize(samples, window=old)
    assert out["events_in_total"] == 10 and out["dead_letters"] == {"not_json": 2.0} and out["lag_total"] == 5
    assert out["latency"]["step:rank"]["count"] == 100 and out["latency"]["step:rank"]["p50_ms"] > 1.0


def test_summary_gives_the_copy_books_lookups_and_queues_summed_over_processes():
    samples = [
        ("kairos_cache_lookups_total", {"cache": "copy", "result": "hit"}, 3.0),
        ("kairos_cache_lookups_total", {"cache": "copy", "result": "hit"}, 2.0),  # a second worker, scraped
        ("kairos_cache_lookups_total", {"cache": "copy", "result": "miss"}, 95.0),
        ("kairos_cache_lookups_total", {"cache": "api_recent", "result": "hit"}, 40.0),
        ("kairos_copy_requests", {"state": "pending"}, 120.0),
        ("kairos_copy_requests", {"state": "outstanding"}, 32.0),
        ("kairos_copy_repeats_skipped_total", {}, 4.0),
    ]
    assert summarize(samples)["copy"] == {
        "hits_total": 5.0, "misses_total": 95.0, "pending": 120.0, "outstanding": 32.0, "repeats_skipped_total": 4.0
    }


class Chromium:
    """Headless Chromium driven over the DevTools protocol (websocket)."""

    def __init__(self, profile: Path) -> None:
        self.port = free_port()
        cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}", "--window-size=1100,900",
               "about:blank"]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0

    def page_ws(self) -> str:
        def target():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=1) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
            except OSError:
                return None
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        return poll_until(target, 30, "chromium's DevTools endpoint", 0.2)

    async def call(self, ws, method: str, **params) -> dict:
        self._id += 1
        await ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message["result"]

    async def text(self, ws, expression: str) -> str:
        result = await self.call(ws, "Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _number(text: str | None) -> float:
    return float((text or "nan").replace(",", ""))


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install -y chromium)")
async def test_dashboard_numbers_move_in_headless_chromium(make_settings, broker, redis_url, tmp_path):
    import uvicorn
    from websockets.asyncio.client import connect

    settings = make_settings(redis_url=redis_url, partitions=2)
    counts = await ensure_topics(settings, broker)
    store = RedisStateStore.from_url(redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group), 3600)
    worker = IngestWorker(settings, broker, store)
    await worker.start(counts)
    worker_task = asyncio.create_task(worker.run())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning", lifespan="off"))
    server_task = asyncio.create_task(server.serve())
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
    await producer.start()
    stop_load = asyncio.Event()

    async def load() -> None:  # ~400 events/s, a few malformed ones, until told to stop
        n = 0
        while not stop_load.is_set():
            for _ in range(40):
                user = f"u{n % 50}"
                event = {"kind": "click", "event_id": f"d{n}", "user_id": user, "item_id": f"i{n % 97}",
                         "action": "view", "ts": time.time() - 5}  # fmt: skip
                await producer.send(settings.topics.clicks, orjson.dumps(event) if n % 100 else b"junk", key=user.encode())
                n += 1
            await asyncio.sleep(0.1)

    load_task = asyncio.create_task(load())
    browser = Chromium(tmp_path / "profile")
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        ws_url = await asyncio.to_thread(browser.page_ws)
        async with connect(ws_url, max_size=50 * 2**20) as ws:
            await browser.call(ws, "Page.enable")
            await browser.call(ws, "Page.navigate", url=f"http://127.0.0.1:{port}/dashboard")

            async def updated_twice():
                return _number(await browser.text(ws, "document.body.dataset.updates || '0'")) >= 2

            await apoll_until(updated_twice, 20, "the page to render data twice", 0.2)
            first = _number(await browser.text(ws, "document.getElementById('events-in-total').textContent"))
            updates_first = _number(await browser.text(ws, "document.body.dataset.updates"))
            await asyncio.sleep(2.5)
            second = _number(await browser.text(ws, "document.getElementById('events-in-total').textContent"))
            updates_second = _number(await browser.text(ws, "document.body.dataset.updates"))
            rate = _number(await browser.text(ws, "document.getElementById('events-per-s').textContent"))
            dead = _number(await browser.text(ws, "document.getElementById('dead-letters-total').textContent"))
            latency_rows = await browser.text(ws, "document.querySelectorAll('#latency tbody tr').length")
            copy_line = await browser.text(ws, "document.getElementById('copy').textContent")
            shot = await browser.call(ws, "Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        (tmp_path / "dashboard.png").write_bytes(png)
        if os.environ.get("KAIROS_SCREENSHOT_DIR"):
            shutil.copy(tmp_path / "dashboard.png", Path(os.environ["KAIROS_SCREENSHOT_DIR"]) / "dashboard.png")
    finally:
        browser.stop()
        stop_load.set()
        await load_task
        await producer.stop()
        server.should_exit = True
        await server_task
        worker.stop()
        await worker_task
        await worker.close()
        await store.close()
    assert second > first > 0, "events-in total must grow while the page is open"
    assert updates_second >= updates_first + 2, "the page polls every second"
    assert rate > 0 and dead > 0 and latency_rows > 0
    assert copy_line.startswith("generated copy on ") and " · outstanding: " in copy_line, copy_line
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
