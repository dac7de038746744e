"""One pure ASGI middleware for request ids, request metrics and the access log.

They share one send wrapper and one pair of clock reads, which is most of what they cost; each
concept keeps its own module (`request_id`, `metrics`, `logging`) and this file only wires them
into the request's life.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability import request_id
from observability.logging import access_log, request_id_var
from observability.metrics import OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE, HttpMetrics

CLIENT_CLOSED = 499
_MAX_LOGGED = 512  # longest path or user agent written to a log line
DEBUG, INFO, ERROR = 10, 20, 40


class ObservabilityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        route_templates: Mapping[int, str],
        exclude_paths: Iterable[str] = (),
        quiet_paths: Iterable[str] = (),
        response_headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_templates = route_templates
        self.exclude_paths = frozenset(exclude_paths)
        self.quiet_paths = frozenset(quiet_paths)
        self.response_headers = tuple(response_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Responder(self, scope, receive, send).run()


class _Responder:
    """Per-request state; the middleware instance itself is shared and never mutated per request."""

    __slots__ = (
        "agent",
        "bytes_sent",
        "disconnected",
        "ended",
        "mw",
        "receive",
        "request_id",
        "scope",
        "send",
        "started",
        "status",
    )

    def __init__(self, mw: ObservabilityMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.mw = mw
        self.scope = scope
        self.receive = receive
        self.send = send
        self.status = 0
        self.bytes_sent = 0
        self.ended = 0.0
        self.disconnected = False
        # One pass over the headers for the two this middleware reads.
        given = agent = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value if given is None else given
            elif name == b"user-agent":
                agent = value
        self.request_id = request_id.accept(given)
        self.agent = agent

    async def run(self) -> None:
        scope = self.scope
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = self.request_id
        token = request_id_var.set(self.request_id)
        metrics = self.mw.metrics
        metrics.in_progress += 1
        self.started = time.perf_counter()
        error: BaseException | None = None
        try:
            await self.mw.app(scope, self.receive_wrapper, self.send_wrapper)
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.in_progress -= 1
            self.finish(error)
            request_id_var.reset(token)

    async def receive_wrapper(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.disconnect" and not self.ended:
            self.disconnected = True
        return message

    async def send_wrapper(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            # A new list (the app may reuse its own), set on the message the app just made for us.
            message["headers"] = [
                *message.get("headers", ()),
                (b"x-request-id", self.request_id.encode()),
                *self.mw.response_headers,
            ]
        elif kind == "http.response.body":
            self.bytes_sent += len(message.get("body", b""))
            if not message.get("more_body", False):
                # Background tasks run after this; they are not the client's wait.
                self.ended = time.perf_counter()
        try:
            await self.send(message)
        except OSError:
            self.disconnected = True
            raise

    def finish(self, error: BaseException | None) -> None:
        scope = self.scope
        end = self.ended or time.perf_counter()
        duration = end - self.started
        status = self.status
        if self.disconnected:
            status = CLIENT_CLOSED
        elif error is not None and not self.ended:
            status = CLIENT_CLOSED if _is_disconnect(error) else 500
        elif status == 0:
            status = CLIENT_CLOSED
        route = self.mw.route_templates.get(id(scope.get("route")), UNMATCHED_ROUTE)
        method = scope["method"]
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        path = scope["path"]
        if path not in self.mw.exclude_paths:
            self.mw.metrics.observe(method, route, status, duration, self.bytes_sent)
        level = DEBUG if path in self.mw.quiet_paths else ERROR if status >= 500 else INFO
        if not access_log.enabled(level):
            return
        fields: dict[str, Any] = {
            "event": None,  # these three first, for readers of the raw line; set by `emit`
            "level": None,
            "timestamp": None,
            "request_id": self.request_id,
            "method": method,
            "path": _path_for_log(scope),
            "route": route,
            "status": status,
            "duration_ms": int(duration * 1_000_000) / 1000,
            "bytes": self.bytes_sent,
            "client": _client(scope),
            "user_agent": self.agent[:_MAX_LOGGED].decode("latin-1") if self.agent is not None else None,
        }
        if error is not None:
            fields["error"] = type(error).__name__
        access_log.emit(level, fields)


def _is_disconnect(error: BaseException) -> bool:
    # Starlette raises ClientDisconnect (an OSError subclass in some versions) when the peer left.
    return isinstance(error, OSError) or type(error).__name__ == "ClientDisconnect"


def _path_for_log(scope: Scope) -> str:
    path = scope["path"]
    qs = scope.get("query_string", b"")
    if qs:
        path = f"{path}?{qs.decode('latin-1')}"
    return path[:_MAX_LOGGED]


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None
