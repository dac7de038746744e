"""The error boundary: exceptions from anywhere under the outermost middleware become JSON.

Unit level, in process: the observability middleware with the app's `ErrorBoundary`, around
small ASGI apps that fail in each way (the HTTP-level checks are in test_app and test_metrics).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from observability.metrics import HttpMetrics
from observability.middleware import ObservabilityMiddleware
from service.errors import EXCEPTION_HANDLERS, ApiError, ErrorBoundary
from service.security import SECURITY_HEADERS
from tests.support import drive


def call(app: Any) -> tuple[list[dict], BaseException | None, HttpMetrics, Scope]:
    metrics = HttpMetrics()
    mw = ObservabilityMiddleware(
        app,
        metrics=metrics,
        route_templates={},
        response_headers=SECURITY_HEADERS,
        errors=ErrorBoundary(EXCEPTION_HANDLERS),
    )
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"x-request-id", b"rid-1")],
        "client": ("127.0.0.1", 1),
        "state": {},
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    raised: BaseException | None = None
    try:
        asyncio.run(drive(mw, scope, receive, send))
    except Exception as exc:
        raised = exc
    return sent, raised, metrics, scope


def raising(exc: Exception, *, after_start: bool = False) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise exc

    return app


def statuses(metrics: HttpMetrics) -> dict[int, int]:
    return {status: sum(s.duration_buckets) for (_, _, status), s in metrics._series.items()}


def body_of(sent: list[dict]) -> dict:
    return orjson.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ApiError(422, "invalid_parameter", "limit: expected an integer", parameter="limit"), 422, "invalid_parameter"),
        (HTTPException(404), 404, "not_found"),
        (HTTPException(413), 413, "payload_too_large"),
    ],
)
def test_expected_errors_are_answered_as_json_and_not_raised(exc: Exception, status: int, code: str) -> None:
    sent, raised, metrics, _ = call(raising(exc))
    assert raised is None
    start = sent[0]
    assert start["status"] == status
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-request-id"] == b"rid-1" and headers[b"x-frame-options"] == b"DENY"
    body = body_of(sent)
    assert body["error"] == code and body["request_id"] == "rid-1"
    assert statuses(metrics) == {status: 1}


def test_unexpected_error_is_a_json_500_and_is_reraised_for_the_server() -> None:
    sent, raised, metrics, _ = call(raising(RuntimeError("secret detail")))
    assert isinstance(raised, RuntimeError)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 500
    assert dict(sent[0]["headers"])[b"x-request-id"] == b"rid-1"
    body = body_of(sent)
    assert body == {"error": "internal_error", "message": "Internal server error.", "request_id": "rid-1"}
    assert statuses(metrics) == {500: 1}


def test_error_after_the_response_started_sends_nothing_more() -> None:
    # Even an "expected" error: too late to answer it, so it is a 500 in the numbers, and raised.
    for exc in (RuntimeError("late"), ApiError(422, "invalid_parameter", "late")):
        sent, raised, metrics, _ = call(raising(exc, after_start=True))
        assert raised is exc
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 200 and sent[1]["body"] == b"part"
        assert statuses(metrics) == {500: 1}


def test_client_disconnect_is_499_and_not_raised() -> None:
    sent, raised, metrics, _ = call(raising(ClientDisconnect()))
    assert sent[0]["status"] == 499  # to nobody: the peer has gone
    assert raised is None
    assert statuses(metrics) == {499: 1}


def test_routes_find_the_expected_handlers_but_not_the_500_in_the_scope() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["handlers"] = scope["starlette.exception_handlers"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    call(app)
    classes, status_handlers = seen["handlers"]
    assert ApiError in classes and HTTPException in classes and ClientDisconnect in classes
    assert Exception not in classes and 500 not in status_handlers  # a route must not swallow a 500


def test_status_handlers_take_precedence_for_http_exceptions() -> None:
    async def teapot(request: Any, exc: Exception) -> Any:
        from starlette.responses import Response

        return Response(b"short and stout", status_code=418)

    boundary = ErrorBoundary({**EXCEPTION_HANDLERS, 418: teapot})
    assert boundary.handler_for(HTTPException(418)) is teapot
    assert boundary.handler_for(HTTPException(404)) is EXCEPTION_HANDLERS[HTTPException]
    assert boundary.handler_for(KeyError("x")) is None  # falls to the 500


def test_a_failing_error_handler_is_still_a_500_and_raised() -> None:
    async def broken(request: Any, exc: Exception) -> Any:
        raise LookupError("the error page broke")

    metrics = HttpMetrics()
    mw = ObservabilityMiddleware(
        raising(ApiError(422, "invalid_parameter", "x")),
        metrics=metrics,
        route_templates={},
        errors=ErrorBoundary({**EXCEPTION_HANDLERS, ApiError: broken}),
    )
    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "state": {}}

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        raise AssertionError("nothing can be sent")

    with pytest.raises(LookupError):
        asyncio.run(drive(mw, scope, receive, send))
    assert statuses(metrics) == {500: 1}


def test_plain_function_handlers_work_too() -> None:
    from starlette.responses import Response

    def gone(request: Any, exc: Exception) -> Any:  # not async: Starlette runs these in a thread
        return Response(b"gone", status_code=410)

    metrics = HttpMetrics()
    mw = ObservabilityMiddleware(
        raising(HTTPException(410)),
        metrics=metrics,
        route_templates={},
        errors=ErrorBoundary({**EXCEPTION_HANDLERS, 410: gone}),
    )
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    asyncio.run(drive(mw, {"type": "http", "method": "GET", "path": "/x", "headers": [], "state": {}}, receive, send))
    assert sent[0]["status"] == 410 and sent[1]["body"] == b"gone"
    assert statuses(metrics) == {410: 1}
