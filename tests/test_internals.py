"""What the service relies on in Starlette's and uvicorn's internals, pinned so an upgrade fails here.

Each test names the module of ours that leans on the behaviour: `service.routing` (the app's
middleware stack, the router's scope keys, `starlette._utils`, the scope key of exception
handlers), `service.errors` (`app_root_path`) and `service.http_protocol` (the httptools
protocol's callbacks and attributes). If one fails after an upgrade, fix that module, not the test.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service import http_protocol
from service.errors import EXCEPTION_HANDLERS, ApiError, ErrorBoundary
from service.http_protocol import BoundedHttpToolsProtocol
from service.routing import EXCEPTION_HANDLERS_KEY, ServiceApp, StaticFirstRouter, get_route_path, is_async_callable
from tests.support import drive

SCOPE_KEYS = ("router", "route", "endpoint", "path_params", "root_path", "app_root_path")


def http_scope(path: str, method: str = "GET", **extra: Any) -> Scope:
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": [], **extra}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def run(app: ASGIApp, scope: Scope) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Message) -> None:
        sent.append(dict(message))

    asyncio.run(drive(app, scope, _receive, send))
    return sent


def _routes(seen: list[Scope]) -> list[Any]:
    async def endpoint(request: Request) -> Response:
        seen.append(dict(request.scope))
        return Response(b"ok")

    return [
        Route("/top", endpoint),
        Mount("/api/demo", routes=[Route("/leaf", endpoint), Route("/items/{item_id:int}", endpoint)]),
    ]


# ---- service.routing: StaticFirstRouter writes the scope Starlette's matching would ----


@pytest.mark.parametrize("path", ["/top", "/api/demo/leaf"])
@pytest.mark.parametrize("root_path", ["", "/behind-proxy"])
def test_a_static_route_sees_the_scope_starlettes_own_matching_gives_it(path: str, root_path: str) -> None:
    ours: list[Scope] = []
    theirs: list[Scope] = []
    fast = StaticFirstRouter(_routes(ours))
    plain = Router(_routes(theirs))
    full = root_path + path  # ASGI: `path` includes `root_path`
    assert fast._static.get(get_route_path(http_scope(full, root_path=root_path))) is not None  # the fast path
    run(fast, http_scope(full, root_path=root_path))
    run(plain, http_scope(full, root_path=root_path))
    mine, starlettes = ours[0], theirs[0]
    for key in SCOPE_KEYS:
        if key in ("router", "route", "endpoint"):
            # Different router objects with equal routes: compare what they point at.
            assert (key in mine) == (key in starlettes), key
            continue
        assert mine.get(key) == starlettes.get(key), (key, mine.get(key), starlettes.get(key))
    assert mine["route"].path == starlettes["route"].path
    assert mine["router"] is fast and starlettes["router"] is plain


def test_parameterised_and_unknown_paths_fall_through_to_starlette() -> None:
    seen: list[Scope] = []
    router = StaticFirstRouter(_routes(seen))
    run(router, http_scope("/api/demo/items/7"))
    assert seen[-1]["path_params"] == {"item_id": 7} and seen[-1]["root_path"] == "/api/demo"
    assert seen[-1]["app_root_path"] == ""  # service.errors.allowed_methods reads this key
    assert run(router, http_scope("/nope"))[0]["status"] == 404
    assert run(router, http_scope("/top", method="POST"))[0]["status"] == 405  # route.handle answers it


# ---- service.routing: ServiceApp's own middleware stack ----


class _Tag:
    def __init__(self, app: ASGIApp, *, name: str, errors: Any = None) -> None:
        self.app, self.name, self.errors = app, name, errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("tags", []).append(self.name)
        await self.app(scope, receive, send)


async def test_service_app_builds_outermost_then_user_middleware_then_router() -> None:
    async def hello(request: Request) -> Response:
        return JSONResponse({"tags": request.scope["tags"]})

    app = ServiceApp(
        routes=[Route("/", hello)],
        middleware=[Middleware(_Tag, name="user")],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        outermost=functools.partial(_Tag, name="outer"),
        errors=ErrorBoundary,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/")).json() == {"tags": ["outer", "user"]}
    # Starlette builds the stack lazily through `build_middleware_stack`; ours replaced its
    # ServerErrorMiddleware/ExceptionMiddleware pair, so exactly three layers are left.
    outer = app.middleware_stack
    assert isinstance(outer, _Tag) and outer.name == "outer"
    assert isinstance(outer.errors, ErrorBoundary)
    assert isinstance(outer.app, _Tag) and outer.app.name == "user"
    assert outer.app.app is app.router and isinstance(app.router, StaticFirstRouter)


# ---- service.errors: Starlette's routes find the handlers under EXCEPTION_HANDLERS_KEY ----


def test_starlette_routes_render_errors_with_the_handlers_in_the_scope() -> None:
    async def fail(request: Request) -> Response:
        raise ApiError(422, "invalid_parameter", "x: expected y", parameter="x")

    route = Route("/", fail)
    boundary = ErrorBoundary(EXCEPTION_HANDLERS)
    scope = http_scope("/")
    scope.update({EXCEPTION_HANDLERS_KEY: boundary.scope_value, "state": {}})
    sent = run(route, scope)
    assert sent[0]["status"] == 422
    assert b'"error":"invalid_parameter"' in sent[1]["body"]


# ---- service.routing: the helpers taken from starlette._utils ----


def test_starlette_utils_behave_as_relied_on() -> None:
    assert get_route_path({"path": "/api/x/feed", "root_path": "/api/x"}) == "/feed"
    assert get_route_path({"path": "/feed", "root_path": ""}) == "/feed"

    async def handler(request: Request, exc: Exception) -> Response:
        return Response()

    class Callable:
        async def __call__(self, request: Request, exc: Exception) -> Response:
            return Response()

    assert is_async_callable(handler) and is_async_callable(functools.partial(handler))
    assert is_async_callable(Callable())
    assert not is_async_callable(lambda request, exc: None)


# ---- service.http_protocol: the httptools protocol's callbacks ----


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _protocol() -> tuple[BoundedHttpToolsProtocol, _Transport]:
    config = uvicorn.Config(_ok, http=BoundedHttpToolsProtocol, log_config=None, lifespan="off")
    protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_the_protocol_overrides_callbacks_uvicorn_still_has() -> None:
    for name in (
        "connection_made",
        "connection_lost",
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
    ):
        assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn's HttpToolsProtocol lost {name}"


async def test_an_oversized_header_is_a_400_and_a_closed_connection() -> None:
    protocol, transport = _protocol()
    protocol.data_received(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * http_protocol.MAX_HEADER_BYTES + b"\r\n\r\n"
    )
    assert transport.written.startswith(b"HTTP/1.1 400")
    assert transport.closed
    protocol.connection_lost(None)


async def test_a_complete_header_disarms_the_timer_and_the_app_answers() -> None:
    protocol, transport = _protocol()
    assert protocol._header_timer is not None  # armed on connect: a silent client is timed out too
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert protocol._header_timer is None
    for _ in range(100):  # the app runs as a task on this loop
        if transport.written:
            break
        await asyncio.sleep(0.01)
    assert transport.written.startswith(b"HTTP/1.1 200")
    protocol.connection_lost(None)


async def test_a_header_that_never_ends_is_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "HEADER_TIMEOUT_S", 0.05)
    protocol, transport = _protocol()
    protocol.data_received(b"GET / HTTP/1.1\r\nHo")
    for _ in range(200):
        if transport.closed:
            break
        await asyncio.sleep(0.01)
    assert transport.closed and not transport.written
    protocol.connection_lost(None)
