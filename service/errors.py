"""Errors are values with a status and a stable code, rendered as JSON in exactly one place.

Every error body is `{"error": "<code>", "message": "...", "request_id": "..."}`; some add a
`parameter` naming the offending input. Nothing here ever includes a traceback or internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Scope

from observability.request_id import request_id_of

log = structlog.get_logger("service.errors")

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
    # Starlette's detail defaults to the reason phrase; we prefer our own stable wording.
    return error_response(request.scope, exc.status_code, headers=exc.headers)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (through the redacting pipeline), never to the client.
    log.error("unhandled_exception", exc_info=exc, path=request.url.path)
    return error_response(request.scope, 500)


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    # Nobody is listening; 499 (nginx's "client closed request") keeps it out of the 5xx numbers.
    return Response(status_code=499)


EXCEPTION_HANDLERS = {
    ClientDisconnect: handle_client_disconnect,
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
