"""Helpers for the serving and operations tests: worker subprocesses and polling with deadlines."""

from __future__ import annotations

import asyncio
import re
import select
import signal
import subprocess
import sys
import time

from kairos.agents.ops import worker_environment
from kairos.agents.redis_store import RedisStateStore
from kairos.agents.runtime import make_store
from kairos.agents.settings import Settings


class WorkerProcess:
    """``python -m kairos.agents.ops worker`` as a subprocess: started with KAIROS_* from a Settings object."""

    def __init__(self, settings: Settings, log_path, name: str) -> None:
        env = worker_environment(settings)
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kairos.agents.ops", "worker"], env=env, stdout=subprocess.PIPE, stderr=self._log
        )

    def wait_ready(self, timeout_s: float = 45.0) -> None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        line = self.process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.kill()
            raise AssertionError(f"worker {self.name} not ready in {timeout_s}s:\n{self.log_tail()}")

    def owned(self) -> list[int] | None:
        """The partitions the worker last said it owns (its INFO log), or None before the first assignment."""
        found = re.findall(r"owning partitions \[([0-9, ]*)\]", self.log_path.read_text(errors="replace"))
        return [int(p) for p in found[-1].split(",") if p.strip()] if found else None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def poll_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """Call ``predicate`` until it returns a truthy value; fail naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def apoll_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """Async :func:`poll_until`; ``predicate`` is a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def restart_settings(make_settings, redis_url: str, tmp_path) -> Settings:
    """Settings for a kill-and-restart test: 2 partitions, a global checkpoint with every commit (so the kill finds
    one), the built-in creative inventory (no data directory) and no models."""
    (tmp_path / "no-data").mkdir(exist_ok=True)
    (tmp_path / "no-models").mkdir(exist_ok=True)
    return make_settings(redis_url=redis_url, partitions=2, global_checkpoint_interval_s=0.0,
                         data_dir=tmp_path / "no-data", model_dir=tmp_path / "no-models")  # fmt: skip


def state_store(settings: Settings) -> RedisStateStore:
    """The state store a worker with ``settings`` commits to (to read its checkpoints back)."""
    return make_store(settings, settings.redis_url)
