"""One pure ASGI middleware for request ids, request metrics and the access log.

They share one send wrapper and one pair of clock reads, which is most of what they cost; each
concept keeps its own module (`request_id`, `metrics`, `logging`) and this file only wires them
into the request's life.

It is the outermost layer, so it is also where an exception that nothing below handled is
turned into a response (by the `errors` hook the app passes in, which knows the app's error
format): being outside it, it sees and counts the 500, and a separate error layer would have
to wrap `send` a second time just to learn whether the response had started.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability import request_id
from observability.logging import access_log, request_id_var
from observability.metrics import OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE, HttpMetrics
from observability.request_id import HEADER as REQUEST_ID_HEADER

CLIENT_CLOSED = 499
DEBUG, INFO, ERROR = 10, 20, 40


class ErrorHook(Protocol):
    """Renders an exception that reached the top; see `service.errors.ErrorBoundary`."""

    scope_value: Any  # put in every request's scope under SCOPE_KEY, for the routes' own handling
    SCOPE_KEY: str

    def respond(self, scope: Scope, receive: Receive, send: Send, exc: Exception, started: bool) -> Awaitable[bool]: ...


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
        errors: ErrorHook | None = None,
    ) -> None:
        self.app = app
        self.errors = errors
        self.metrics = metrics
        self.route_templates = route_templates
        self.exclude_paths = frozenset(exclude_paths)
        self.quiet_paths = frozenset(quiet_paths)
        self.response_headers = tuple(response_headers)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not `async`: it hands back the coroutine to await, one frame fewer per request.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return _Responder(self, scope, receive, send).run()


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
            if name == REQUEST_ID_HEADER:
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
        mw = self.mw
        errors = mw.errors
        if errors is not None:
            scope[errors.SCOPE_KEY] = errors.scope_value
        token = request_id_var.set(self.request_id)
        metrics = mw.metrics
        metrics.in_progress += 1
        self.started = time.perf_counter()
        error: BaseException | None = None
        try:
            await mw.app(scope, self.receive_wrapper, self.send_wrapper)
        except Exception as exc:
            error = exc  # set first: should rendering the error fail too, this is still a 500
            if errors is not None and await errors.respond(
                scope, self.receive, self.send_wrapper, exc, self.status != 0
            ):
                error = None
                return  # an expected error (404, 422, ...): answered, not an error of ours
            raise
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

    def send_wrapper(self, message: Message) -> Awaitable[None]:
        # Not `async`: the app awaits the server's own `send` coroutine, one frame fewer per message.
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            # A new list (the app may reuse its own), set on the message the app just made for us.
            message["headers"] = [
                *message.get("headers", ()),
                (REQUEST_ID_HEADER, self.request_id.encode()),
                *self.mw.response_headers,
            ]
        elif kind == "http.response.body":
            self.bytes_sent += len(message.get("body", b""))
            if not message.get("more_body", False):
                # Background tasks run after this; they are not the client's wait.
                self.ended = time.perf_counter()
        return self.send(message)  # an OSError from it reaches `finish`, which counts a 499

    def finish(self, error: BaseException | None) -> None:
        scope = self.scope
        mw = self.mw
        ended = self.ended
        duration = (ended or time.perf_counter()) - self.started
        status = self.status
        if self.disconnected:
            status = CLIENT_CLOSED
        elif error is not None and not ended:
            status = CLIENT_CLOSED if _is_disconnect(error) else 500
        elif status == 0:
            status = CLIENT_CLOSED
        route = mw.route_templates.get(id(scope.get("route")), UNMATCHED_ROUTE)
        method = scope["method"]
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        path = scope["path"]
        sent = self.bytes_sent
        if path not in mw.exclude_paths:
            mw.metrics.observe(method, route, status, duration, sent)
        level = DEBUG if path in mw.quiet_paths else ERROR if status >= 500 else INFO
        if level < access_log.min_level:
            return
        client = scope.get("client")
        fields: dict[str, Any] = {
            "event": None,  # these three first, for readers of the raw line; set by `emit`
            "level": None,
            "timestamp": None,
            "request_id": self.request_id,
            "method": method,
            "path": None,  # set by `emit`, from the raw path and query string
            "route": route,
            "status": status,
            "duration_ms": int(duration * 1_000_000) / 1000,
            "bytes": sent,
            "client": client[0] if client else None,
            "user_agent": None,  # set by `emit`, from the raw header
        }
        if error is not None:
            fields["error"] = type(error).__name__
        access_log.emit(level, fields, path, scope.get("query_string", b""), self.agent)


def _is_disconnect(error: BaseException) -> bool:
    # Starlette raises ClientDisconnect (an OSError subclass in some versions) when the peer left.
    return isinstance(error, OSError) or type(error).__name__ == "ClientDisconnect"
