"""Errors are values with a status and a stable code, rendered as JSON in exactly one place.

Every error body is `{"error": "<code>", "message": "...", "request_id": "..."}`; some add a
`parameter` naming the offending input. Nothing here ever includes a traceback or internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Receive, Scope, Send

from observability.request_id import request_id_of
from service.routing import EXCEPTION_HANDLERS_KEY, is_async_callable

log = structlog.get_logger("service.errors")
# What this module registers and calls: HTTP handlers only (the service has no websockets).
ExceptionHandler = Callable[[Request, Exception], Any]

# Stable codes for the statuses Starlette itself raises.
STATUS_CODES: Mapping[int, tuple[str, str]] = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "Not allowed."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "Method not allowed for this resource."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Unsupported content type."),
    422: ("invalid_parameter", "A parameter is invalid."),
    429: ("too_many_requests", "Too many requests."),
    500: ("internal_error", "Internal server error."),
    502: ("bad_gateway", "The upstream service answered badly."),
    503: ("unavailable", "Temporarily unavailable."),
    504: ("upstream_timeout", "The upstream service did not answer in time."),
}


class ApiError(Exception):
    """Raise from any route; rendered as the JSON error body with this status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        parameter: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.headers = dict(headers or {})


def invalid_parameter(name: str, expected: str) -> ApiError:
    return ApiError(422, "invalid_parameter", f"{name}: expected {expected}", parameter=name)


def error_body(code: str, message: str, request_id: str | None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"error": code, "message": message, "request_id": request_id}
    body.update({k: v for k, v in extra.items() if v is not None})
    return orjson.dumps(body)


def error_response(
    scope: Scope,
    status: int,
    code: str | None = None,
    message: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    default_code, default_message = STATUS_CODES.get(status, ("error", "Request failed."))
    body = error_body(code or default_code, message or default_message, request_id_of(scope), **extra)
    return Response(body, status_code=status, headers=dict(headers or {}), media_type="application/json")


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(
        request.scope, exc.status, exc.code, exc.message, headers=exc.headers, parameter=exc.parameter
    )


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = exc.headers
    if exc.status_code == 405:
        allow = allowed_methods(request.scope)
        if allow:
            headers = {**(headers or {}), "Allow": allow}
    # Starlette's detail defaults to the reason phrase; we prefer our own stable wording.
    return error_response(request.scope, exc.status_code, headers=headers)


def allowed_methods(scope: Scope) -> str | None:
    """Every method some route at this path accepts, for a 405's `Allow`.

    Starlette's 405 names only the methods of the first route that matched the path, so two
    routes on one path (GET and POST /webhook) would each hide the other's methods.
    """
    routes = getattr(scope.get("app"), "routes", None)
    if routes is None:
        return None
    # The path as the app first saw it: mounts have since moved their prefix into root_path.
    root_path = scope.get("app_root_path", scope.get("root_path", ""))
    probe = {"type": "http", "path": scope["path"], "root_path": root_path, "method": ""}
    methods: set[str] = set()
    _collect_methods(routes, probe, methods)
    return ", ".join(sorted(methods)) or None


def _collect_methods(routes: list[BaseRoute], scope: Scope, methods: set[str]) -> None:
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount):
            _collect_methods(route.routes, {**scope, **child}, methods)
        elif isinstance(route, Route) and route.methods:
            methods.update(route.methods)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (through the redacting pipeline), never to the client.
    log.error("unhandled_exception", exc_info=exc, path=request.url.path)
    return error_response(request.scope, 500)


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    # Nobody is listening; 499 (nginx's "client closed request") keeps it out of the 5xx numbers.
    return Response(status_code=499)


EXCEPTION_HANDLERS: Mapping[Any, ExceptionHandler] = {
    ClientDisconnect: handle_client_disconnect,
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}


class ErrorBoundary:
    """Turns an exception from anywhere in the app into its JSON error response, in one place.

    It does what Starlette's `ServerErrorMiddleware` and `ExceptionMiddleware` do, without being
    two more layers that each wrap every `send`: the outermost middleware, which tracks whether
    the response has started anyway, calls `respond` (see `service.routing.ServiceApp`). Routes built by
    Starlette's `request_response` still find the handlers in the scope and render their own.
    """

    SCOPE_KEY = EXCEPTION_HANDLERS_KEY

    def __init__(self, handlers: Mapping[Any, Callable[..., Any]]) -> None:
        status: dict[int, ExceptionHandler] = {}
        classes: dict[Any, ExceptionHandler] = {}
        fallback: ExceptionHandler = handle_unexpected
        for key, handler in handlers.items():
            if key in (500, Exception):
                fallback = handler  # the 500: its handler runs, then the error is re-raised
            elif isinstance(key, int):
                status[key] = handler
            else:
                classes[key] = handler
        self.fallback = fallback
        self.status_handlers = status
        self.class_handlers = classes
        # What Starlette's routes read from the scope: the expected errors, not the 500.
        self.scope_value = (classes, status)

    def handler_for(self, exc: Exception) -> ExceptionHandler | None:
        if isinstance(exc, HTTPException):
            handler = self.status_handlers.get(exc.status_code)
            if handler is not None:
                return handler
        for cls in type(exc).__mro__:
            handler = self.class_handlers.get(cls)
            if handler is not None:
                return handler
        return None

    async def respond(self, scope: Scope, receive: Receive, send: Send, exc: Exception, started: bool) -> bool:
        """Send the response for `exc` unless one has started. True: handled, do not re-raise."""
        handler = self.handler_for(exc)
        if handler is not None and not started:
            response = await _call(handler, Request(scope, receive), exc)
            if response is not None:
                await response(scope, receive, send)
            exc.__traceback__ = None  # a reused exception instance would grow its traceback
            return True
        # Unexpected (or too late to answer): the 500 handler logs it, the client gets a 500 if
        # nothing was sent yet, and the caller re-raises so the server sees it too.
        response = await _call(self.fallback, Request(scope, receive), exc)
        if response is not None and not started:
            await response(scope, receive, send)
        return False


async def _call(handler: ExceptionHandler, request: Request, exc: Exception) -> Any:
    # As Starlette does: a plain function runs in the thread pool, off the event loop.
    if is_async_callable(handler):
        return await handler(request, exc)
    return await run_in_threadpool(handler, request, exc)
