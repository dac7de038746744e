"""Test support: run the real service in a subprocess, or an app in a real uvicorn in a thread.

Both listen on 127.0.0.1 only. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent
# Fresh per test session: every log line the suite produces lands here, and is scanned for secrets.
LOG_DIR = Path(os.environ.get("SITEAPI_TEST_LOG_DIR") or tempfile.mkdtemp(prefix="siteapi-test-logs-"))
IN_PROCESS_LOG = LOG_DIR / "in-process.log"

# Distinctive values: any of them showing up in a log, error body or metric is a leak.
SECRETS = {
    "STRAVA_CLIENT_SECRET": "csec-ZZ9-leakcheck-client-secret",
    "STRAVA_REFRESH_TOKEN": "rtok-ZZ9-leakcheck-refresh",
    "STRAVA_ADMIN_API_KEY": "akey-ZZ9-leakcheck-admin-key",
    "STRAVA_WEBHOOK_VERIFY_TOKEN": "vtok-ZZ9-leakcheck-verify",
    "METRICS_BEARER_TOKEN": "mtok-ZZ9-leakcheck-metrics-token",
    # Not a variable of its own: the password inside REDIS_URL, of every redis-server the tests share.
    "REDIS_PASSWORD": "rpass-ZZ9-leakcheck-redis-password",
}


def configure_test_logging() -> None:
    """In-process apps log JSON at debug level into the session's log directory."""
    from observability.logging import configure_logging

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    configure_logging("debug", "json", stream=open(IN_PROCESS_LOG, "ab"))  # noqa: SIM115  (lives all session)


def secret_hits(values: Iterable[str]) -> dict[str, list[str]]:
    """Which log files under LOG_DIR contain which of `values`."""
    hits: dict[str, list[str]] = {}
    wanted = [v.encode() for v in values if v]
    for path in sorted(LOG_DIR.glob("*.log")):
        data = path.read_bytes()
        found = [v.decode() for v in wanted if v in data]
        if found:
            hits[path.name] = found
    return hits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Await one ASGI call: `asyncio.run` wants a coroutine, and an ASGI app may hand back any awaitable."""
    await app(scope, receive, send)


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        time.sleep(interval)
    return False


async def eventually(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """`wait_until` for a coroutine: the loop keeps running (closing connections, say) meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return False


class ServiceProcess:
    """`python -m service` as the operator runs it, with its stdout captured to a log file."""

    _counter = 0

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        cwd: Path = ROOT,
        module: str = "service",
    ) -> None:
        ServiceProcess._counter += 1
        self.port = free_port()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"service-{os.getpid()}-{ServiceProcess._counter}-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("STRAVA_", "METRICS_", "LOG_"))}
        self.env = {
            **base,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "debug",
            "SHUTDOWN_DRAIN_SECONDS": "0.5",
            "SHUTDOWN_TIMEOUT_SECONDS": "5",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.args = args
        self.module = module
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 15.0) -> ServiceProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait and not wait_until(self.ready_to_serve, timeout):
            self.stop()
            raise RuntimeError(f"service did not start; log:\n{self.log_path.read_text()[-4000:]}")
        return self

    def ready_to_serve(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"service exited with {self.proc.returncode}: {self.log_path.read_text()[-4000:]}")
        return httpx.get(self.base_url + "/livez", timeout=1).status_code == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            if raw.strip():
                lines.append(orjson.loads(raw))
        return lines

    def raw_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """A real uvicorn serving `app` on 127.0.0.1 from a background thread; yields the base URL.

    The socket is bound here, so the port is known (and ours) before the server starts; uvicorn
    skips signal handlers off the main thread. `config` goes to `uvicorn.Config` (e.g. `loop`).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not wait_until(lambda: server.started or not thread.is_alive(), 10) or not server.started:
            raise RuntimeError("in-thread server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


CLOCK_START = 1714557800.0  # 2024-05-01T10:03:20Z: well inside a quarter hour, far from midnight


class FakeClock:
    """Unix seconds that move only when a test says so; shared by a simulator and our code."""

    def __init__(self, now: float = CLOCK_START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
