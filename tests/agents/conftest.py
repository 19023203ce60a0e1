"""Fixtures for the serving and operations tests: a real Tansu broker and real redis-servers.

The broker is shared by the session (a Tansu restart loses everything, so no test restarts it); tests isolate
themselves with a unique topic prefix and consumer group. ``fresh_redis`` is per test, for tests that stop it.
When tests/conftest.py provides ``kafka_broker`` / ``redis_server`` those are reused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from kairos.agents.embedded import start_kafka, start_redis
from kairos.agents.settings import Settings

from agents_helpers import WorkerProcess


def _shared(request, name: str):
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None


@pytest.fixture(scope="session")
def broker(request, tmp_path_factory) -> Iterator[str]:
    shared = _shared(request, "kafka_broker")
    if shared is not None:
        yield shared
        return
    proc = start_kafka(tmp_path_factory.mktemp("tansu"))
    yield proc.address
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(request, tmp_path_factory) -> Iterator[str]:
    shared = _shared(request, "redis_server")
    if shared is not None:
        yield shared
        return
    proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield proc.address
    proc.stop()


@pytest.fixture
def make_settings(broker):
    """Settings with a unique topic prefix and consumer group, so tests sharing the broker never interfere."""

    def make(**overrides) -> Settings:
        tag = uuid.uuid4().hex[:10]
        values = {
            "kafka_bootstrap_servers": broker,
            "topic_prefix": f"t{tag}",
            "consumer_group": f"g{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            "partitions": 2,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def spawn_worker(tmp_path):
    """Start worker subprocesses; every one still running is stopped at teardown."""
    started: list[WorkerProcess] = []

    def spawn(settings: Settings, name: str = "w") -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"{name}-{len(started)}.log", name)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()

