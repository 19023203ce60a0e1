"""The Faust application of a Kairos worker process.

- ``IngestService`` (a mode Service started with the app) runs the partition-owning batch consumer of
  ``kairos.agents.worker``: the hot path, batch-wise, with state committed to Redis with its offsets (why not a
  Faust stream/table for it: docs/state.md).
- ``write_copy`` (a Faust agent) turns copy requests into personalized copy, batched, off the hot path.
- Web views: ``/healthz`` and ``/metrics`` on the Faust web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path

import faust
import orjson
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kairos.agents.copy_feed import CopyFeed
from kairos.agents.kafka_config import faust_credentials
from kairos.agents.redis_store import RedisStateStore
from kairos.agents.settings import Settings
from kairos.agents.topics_admin import ensure_topics
from kairos.agents.worker import IngestWorker, default_selector_factory
from kairos.engine import metrics
from kairos.engine.copywriting import CopyBook, CopyRequest, CopyWriter, RecentAnswers
from kairos.schemas.keys import RedisKeys

log = logging.getLogger(__name__)

COPY_BATCH = 16
COPY_BATCH_WAIT_S = 1.0
#: How long a stopping copy agent waits for a cancelled batch to give up (one decoding step: tens of ms).
COPY_CANCEL_WAIT_S = 5.0


#: Decoding of served copy: greedy with the repetition penalty the generator is evaluated with (docs/models.md);
#: without it the small model loops ("cute, cute, cute, ...") and often repeats its prompt word for word.
COPY_REPETITION_PENALTY = 1.2


def load_generator(settings: Settings, beside_hot_path: bool = False):
    """The ONNX copy generator from the model directory, or None (copy then comes from templates).

    ``beside_hot_path``: the process also runs the ingest worker (``kairos demo``, a one-process deployment). The
    generator then gets ``settings.onnx_threads`` threads that do not spin: with onnxruntime's defaults (a thread
    per core, busy-waiting between runs) a copy batch took every core from the hot path for seconds at a time.
    """
    try:
        from kairos.models.generator import GenerationConfig, OnnxGenerator
        from kairos.models.session import SessionOptions

        defaults = GenerationConfig(max_new_tokens=64, repetition_penalty=COPY_REPETITION_PENALTY)
        options = SessionOptions(intra_op_threads=settings.onnx_threads, allow_spinning=False) if beside_hot_path else None
        return OnnxGenerator.from_dir(settings.model_dir, options=options, defaults=defaults)
    except Exception as exc:  # noqa: BLE001 - a missing or broken model means templates, not a dead worker
        log.warning("no copy generator in %s (%s): copy comes from templates", settings.model_dir, exc)
        return None


async def _write_or_cancel(writer: CopyWriter, requests: list[CopyRequest]) -> list:
    """``writer.write(requests)`` in the loop's executor. If the awaiting agent is cancelled (the worker is
    stopping), the batch in the executor is told to stop at its next decoding step instead of running to its end:
    a batch takes seconds (~10 s for 16 requests on one CPU thread), and the process cannot exit while its
    executor thread runs. Nothing of a cancelled batch is published or committed; the requests are read again
    after a restart."""
    cancel = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, writer.write, requests, cancel)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        log.info("copy batch of %d requests cancelled: the worker is stopping", len(requests))
        with contextlib.suppress(Exception):  # GenerationCancelled, or the batch's own failure
            await asyncio.wait_for(future, COPY_CANCEL_WAIT_S)
        raise


ROLES = frozenset({"ingest", "copy"})


def create_app(
    settings: Settings,
    bootstrap: str,
    redis_url: str,
    *,
    web_port: int | None = None,
    web_host: str = "127.0.0.1",
    roles: frozenset[str] = ROLES,
    beside_hot_path: bool | None = None,
) -> faust.App:
    """A worker process's app. ``roles``: ``ingest`` (the hot path) and/or ``copy`` (the generation agent); in
    production run them as separate processes so generation never competes with the hot path for CPU.

    ``beside_hot_path``: the generator shares the machine's cores with a hot path (see :func:`load_generator`);
    default: when this process has the ingest role too. ``kairos demo`` sets it for its separate copy process.
    ``app.copy_partitions``: the copy-requests partitions this app's ``write_copy`` agent was last assigned (None
    before its first assignment, or without the copy role)."""
    app = faust.App(
        f"{settings.consumer_group}-agents",
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        broker_session_timeout=settings.session_timeout_ms / 1000.0,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        # Faust's default waits, at shutdown and at every rebalance, until the agents have processed every event
        # they hold: a copy batch being generated (seconds) would hold both. The only Faust stream here is
        # write_copy, which acks a batch only once it is published (an unfinished one is read again) and is
        # cancelled when the worker stops (_write_or_cancel).
        stream_wait_empty=False,
        web_enabled=web_port is not None,
        web_port=web_port or settings.http_port,
        web_bind=web_host,
    )
    copy_requests = app.topic(settings.topics.copy_requests, key_type=bytes, value_type=bytes, value_serializer="raw")
    copies = app.topic(settings.topics.copies, key_type=bytes, value_type=bytes, value_serializer="raw")
    copybook = CopyBook(in_flight=settings.copy_in_flight, answer_timeout_s=settings.copy_answer_timeout_s)
    if beside_hot_path is None:
        beside_hot_path = "ingest" in roles
    writer = CopyWriter(load_generator(settings, beside_hot_path=beside_hot_path) if "copy" in roles else None,
                        min_logprob=settings.copy_min_logprob)
    keys = RedisKeys(settings.topic_prefix, settings.consumer_group)

    class IngestService(Service):
        """The hot path inside the Faust worker: starts with the app, commits and leaves the group on stop."""

        async def on_start(self) -> None:
            counts = await ensure_topics(settings, bootstrap)
            self.store = RedisStateStore.from_url(redis_url, keys, settings.serving_ttl_s)
            loop = asyncio.get_running_loop()  # loading the creative inventory takes seconds: not on the loop
            make = await loop.run_in_executor(None, default_selector_factory, settings, copybook)
            self.worker = IngestWorker(settings, bootstrap, self.store, make_selector=make)
            self.feed = CopyFeed(settings, bootstrap, copybook)
            await self.feed.start()
            await self.worker.start(counts)
            app.ingest_worker = self.worker

        @Service.task
        async def _consume(self) -> None:
            await self.worker.run()

        async def on_stop(self) -> None:
            self.worker.stop()
            await asyncio.sleep(0)
            await self.worker.close()
            await self.feed.stop()
            await self.store.close()

    if "ingest" in roles:
        app.service(IngestService)

    async def write_copy(stream):
        """Copy requests -> generated, safety-checked copy (or templates), batched; published to the copies
        topic (every worker's copy book) and to Redis (for the API)."""
        store = RedisStateStore.from_url(redis_url, keys, settings.serving_ttl_s)
        recent = RecentAnswers(horizon_s=settings.copy_answer_timeout_s)
        # noack_take, acked by hand once the batch is published: Faust's take() acks a batch in a ``finally``, so a
        # batch cancelled at shutdown would be committed unwritten and its requests lost.
        async for events in stream.noack_take(COPY_BATCH, within=COPY_BATCH_WAIT_S):
            decoded = _decode_requests([event.value for event in events])
            requests = recent.fresh(decoded)  # several workers asked for one popular key: written once
            if len(requests) < len(decoded):
                metrics.COPY_REPEATS_SKIPPED.inc(len(decoded) - len(requests))
            metrics.GENERATION_QUEUE_DEPTH.set(len(requests))
            texts = await _write_or_cancel(writer, requests) if requests else []
            for request, text in zip(requests, texts):
                record = {"item_id": request.item_id, "segment": request.segment, "text": text.text,
                          "source": text.source, "writer": writer.version, "kind": request.kind}  # fmt: skip
                if request.kind == "ad":
                    record["variant_id"] = f"{request.item_id}:gen-{writer.version}"
                await copies.send(key=f"{request.item_id}|{request.segment}".encode(), value=orjson.dumps(record))
            await store.save_copies([(r.item_id, r.segment, t.text) for r, t in zip(requests, texts) if r.kind == "product"])
            recent.answered(requests)
            for event in events:
                await stream.ack(event)
            metrics.GENERATION_QUEUE_DEPTH.set(0)

    app.copy_partitions = None
    if "copy" in roles:
        app.agent(copy_requests, name="write_copy")(write_copy)

        @app.on_partitions_assigned.connect
        async def note_copy_partitions(sender, assigned, **kwargs) -> None:
            app.copy_partitions = sorted(tp.partition for tp in assigned if tp.topic == settings.topics.copy_requests)
            log.info("write_copy owns copy-requests partitions %s", app.copy_partitions)

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"status": "ok"})

    @app.page("/metrics")
    async def prometheus(web, request):
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    app.copybook = copybook
    app.copy_writer = writer
    return app


def roles_ready(app: faust.App, roles: frozenset[str]) -> bool:
    """Every role of this app is at work: ingest when its worker owns partitions, copy when the ``write_copy``
    agent has had its first assignment (empty when another copy process holds every partition)."""
    ingest = getattr(app, "ingest_worker", None)
    return ("ingest" not in roles or (ingest is not None and ingest.ready.is_set())) and (
        "copy" not in roles or app.copy_partitions is not None
    )


def announce_ready(app: faust.App, roles: frozenset[str], path: Path) -> None:
    """Write a JSON line to ``path`` once :func:`roles_ready` (pid, roles, copy writer, copy partitions): how a
    parent process (``kairos demo``) learns that a worker it started is at work. Written to a temporary name and
    renamed, so a reader never sees half of it."""

    @app.task
    async def _announce_ready() -> None:
        while not roles_ready(app, roles):
            await asyncio.sleep(0.1)
        ready = {"pid": os.getpid(), "roles": sorted(roles), "copy_writer": app.copy_writer.version,
                 "copy_partitions": app.copy_partitions}  # fmt: skip
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(orjson.dumps(ready) + b"\n")
        partial.replace(path)


def _decode_requests(values) -> list[CopyRequest]:
    requests = []
    for value in values:
        try:
            requests.append(CopyRequest.from_json(orjson.loads(value)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("dropping a malformed copy request: %s", exc)
    return requests
