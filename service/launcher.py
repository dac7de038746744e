"""`python -m service`: settings, logging, the app, and one uvicorn worker that drains politely.

On SIGTERM the service first flips readiness to 503 and keeps serving for
SHUTDOWN_DRAIN_SECONDS, so the platform's load balancer stops sending traffic, then stops
accepting connections, lets in-flight requests finish (at most SHUTDOWN_TIMEOUT_SECONDS) and
exits 0. A second SIGTERM or SIGINT skips the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
import uvicorn

from observability.health import Health
from observability.logging import configure_logging, flush_logs
from service import SERVICE_NAME, __version__
from service.app import create_app
from service.http_protocol import BoundedHttpToolsProtocol
from service.projects import REGISTRY
from service.registry import ProjectSpec
from service.settings import ConfigError, Settings, load_settings

# Chosen by bench/ (see bench/RESULTS.md): the standard loop had the steadier p99.
DEFAULT_LOOP = "asyncio"
# Sent on every response once draining: clients then stop reusing their keep-alive connections.
CONNECTION_CLOSE = (b"connection", b"close")
# After the listener closes: how long connections may still deliver the request already on its way.
SETTLE_SECONDS = 1.0
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux
# One classic BPF instruction, `ret #0`: drop every packet that reaches the socket.
_DROP_ALL = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
KEEP_ALIVE_S = 65
MAX_CONCURRENCY = 1024  # connections plus tasks; past it uvicorn answers 503 instead of queueing
log = structlog.get_logger("service.launcher")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, health: Health, drain_seconds: float) -> None:
        super().__init__(config)
        self.health = health
        self.drain_seconds = drain_seconds
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: only set flags; `on_tick` acts on them from the loop.
        # Unlike uvicorn's, it does not re-raise the signal after shutdown, so we exit 0.
        if self.drain_deadline is None and not self.should_exit:
            self.health.draining = True
            self.drain_deadline = time.monotonic() + self.drain_seconds
        else:
            self.should_exit = True
            if sig == signal.SIGINT:
                self.force_exit = self.force_exit or self.drain_deadline is None

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.health.draining and counter % 10 == 0:
                log.info("draining", seconds_left=round(max(0.0, self.drain_deadline - time.monotonic()), 1))
            if time.monotonic() >= self.drain_deadline:
                self.should_exit = True
        should_exit = await super().on_tick(counter)
        # uvicorn rebuilds its default headers every tenth tick, so add ours back on each one.
        if self.drain_deadline is not None and CONNECTION_CLOSE not in self.server_state.default_headers:
            self.server_state.default_headers = [*self.server_state.default_headers, CONNECTION_CLOSE]
        return should_exit

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes the listener and, in the same step, every connection that sits between two
        # requests. A request already sent on such a connection, or on one still in the kernel's
        # accept queue, is then reset, unanswered. So first stop new handshakes, let the loop accept
        # what is queued, close the listener, and give each connection a moment to serve the
        # request on its way (each response now closes its connection); then uvicorn's shutdown.
        if self.drain_deadline is not None:
            left = self.drain_deadline - time.monotonic()
            # A second signal ends the drain early: say so, and by how much.
            log.info("drain_ended", cut_short=left > 0, seconds_left=round(max(0.0, left), 1))
        if not self.force_exit:
            listeners = [sock for server in self.servers for sock in server.sockets]
            for sock in listeners:
                _refuse_new_handshakes(sock.fileno())
            # The loop accepts what the queue holds; under load that can take more than one turn,
            # so wait until the kernel says the queue is empty (bounded, like the settling below).
            await asyncio.sleep(0.05)
            for _ in range(round(SETTLE_SECONDS / 0.01)):
                if not any(_accept_queue_length(sock) for sock in listeners):
                    break
                await asyncio.sleep(0.01)
            for server in self.servers:
                server.close()
            for _ in range(round(SETTLE_SECONDS / 0.05)):
                if not self.server_state.connections or self.force_exit:
                    break
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def _refuse_new_handshakes(fd: int) -> None:
    """Keep what the accept queue holds, let nothing more in: closing a listener resets its queue.

    A drop-all socket filter stops new SYNs (clients retry, then find the port closed); without
    one (not Linux), a backlog of 0 leaves room for one more connection at most.
    """
    with socket.socket(fileno=os.dup(fd)) as listener:
        try:
            program = struct.pack("HP", 1, ctypes.addressof(_DROP_ALL))
            listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        except OSError:
            with contextlib.suppress(OSError):
                listener.listen(0)


def _accept_queue_length(sock: socket.socket) -> int:
    """Connections waiting in a listener's accept queue: Linux reports it in TCP_INFO (0 elsewhere)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        # struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, ...; for a
        # listening socket the kernel puts the accept queue's length in `unacked`.
        return int(struct.unpack_from("8B5I", info)[12])
    except (AttributeError, OSError, struct.error):
        return 0


def uvicorn_config(settings: Settings, app: Callable[..., Any], loop: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=BoundedHttpToolsProtocol,
        workers=1,
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
        access_log=False,
        log_config=None,
        server_header=False,
        # Longer than the idle timeout of a load balancer's upstream pool (commonly 60 s), so the
        # balancer, not we, closes idle connections: otherwise it may reuse one we just closed.
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=MAX_CONCURRENCY,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds) or 1,
    )


def _configuration_error(exc: ConfigError) -> int:
    # One line, naming the variable and what it expects; never the value.
    sys.stderr.write(f"{SERVICE_NAME}: configuration error: {exc}\n")
    return 2


def main(argv: list[str] | None = None, projects: tuple[ProjectSpec[Any], ...] = REGISTRY) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=f"{SERVICE_NAME} {__version__}")
    parser.add_argument("--sandbox", action="store_true", help="wire projects to their local simulators")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=DEFAULT_LOOP, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(sandbox=args.sandbox, parsers={p.name: p.parse_settings for p in projects})
    except ConfigError as exc:
        return _configuration_error(exc)
    redactor = configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings, projects=projects, redactor=redactor)
        server = DrainingServer(
            uvicorn_config(settings, app, args.loop), app.state.health, settings.shutdown_drain_seconds
        )
        server.run()
        if server.started is False:
            log.error("startup_failed")
            return 1
        return 0
    except ConfigError as exc:
        # From a project's build: one that cannot run as configured (`--sandbox` in the image, without a simulator).
        return _configuration_error(exc)
    finally:
        flush_logs()
