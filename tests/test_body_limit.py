"""Unit tests for the request body limit: declared sizes refused before reading, streams cut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from service.body_limit import BodyLimitMiddleware
from service.errors import EXCEPTION_HANDLERS

LIMIT = 100


class Recorder:
    """A raw ASGI app behind the middleware: records that it ran and reads the whole body."""

    def __init__(self) -> None:
        self.calls: list[Scope] = []
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(scope)
        if scope["type"] == "http":
            more = True
            while more:
                message = await receive()
                self.body += message.get("body", b"")
                more = message.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"read %d" % len(self.body)})


class Exchange:
    """One request through the middleware, driven by hand: what was pulled, what was sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.pulled = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.pulled += 1
        if self.pulled > len(self.chunks):
            return {"type": "http.disconnect"}
        return {
            "type": "http.request",
            "body": self.chunks[self.pulled - 1],
            "more_body": self.pulled < len(self.chunks),
        }

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(next(m["headers"] for m in self.sent if m["type"] == "http.response.start"))


def http_scope(method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Scope:
    return {"type": "http", "method": method, "path": "/", "headers": headers or [], "query_string": b"", **extra}


async def exchange(
    method: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], **extra: Any
) -> tuple[Exchange, Recorder]:
    app = Recorder()
    ex = Exchange(chunks)
    await BodyLimitMiddleware(app, max_bytes=LIMIT)(http_scope(method, headers, **extra), ex.receive, ex.send)
    return ex, app


# ---- declared sizes (Content-Length) ----


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_a_declared_size_over_the_limit_is_refused_before_reading(method: str) -> None:
    ex, app = await exchange(method, [(b"content-length", b"101")], [b"x" * 101])
    assert ex.status == 413
    assert app.calls == []  # the app never ran
    assert ex.pulled == 0  # and not one byte of the body was read
    assert ex.headers[b"content-type"] == b"application/json"
    assert orjson.loads(ex.body) == {
        "error": "payload_too_large",
        "message": "The request body is too large.",
        "request_id": None,
    }


async def test_the_413_names_the_request_id() -> None:
    ex, _ = await exchange("POST", [(b"content-length", b"5000")], [], state={"request_id": "req-42"})
    assert orjson.loads(ex.body)["request_id"] == "req-42"


@pytest.mark.parametrize("size", [0, 1, LIMIT])
async def test_a_declared_size_up_to_the_limit_passes(size: int) -> None:
    ex, app = await exchange("POST", [(b"content-length", str(size).encode())], [b"x" * size])
    assert ex.status == 200
    assert app.body == b"x" * size


@pytest.mark.parametrize("declared", [b"", b"abc", b"-1", b"+5", b" 5", b"5 ", b"1e3", b"0x10", b"5, 5", "٣".encode()])
async def test_a_content_length_that_is_not_digits_is_a_json_400(declared: bytes) -> None:
    # uvicorn's parser refuses these itself (tests/test_hostile_http.py); behind another server the
    # middleware still answers a clear 400 rather than guessing a size.
    ex, app = await exchange("POST", [(b"content-length", declared)], [b"x"])
    assert ex.status == 400
    assert app.calls == []
    assert ex.pulled == 0
    assert ex.headers[b"content-type"] == b"application/json"
    assert orjson.loads(ex.body)["error"] == "bad_request"


@pytest.mark.parametrize("declared", [b"9" * 4301, b"1" + b"0" * 10_000, b"999", b"0" * 5000 + b"101"])
async def test_an_absurdly_long_content_length_is_refused(declared: bytes) -> None:
    # int() refuses more than 4300 digits: compared by length first, it is a plain 413.
    ex, app = await exchange("POST", [(b"content-length", declared)], [b"x"])
    assert ex.status == 413
    assert app.calls == []
    assert orjson.loads(ex.body)["error"] == "payload_too_large"


@pytest.mark.parametrize(("declared", "size"), [(b"0" * 5000 + b"5", 5), (b"0" * 5000, 0), (b"0100", LIMIT)])
async def test_leading_zeros_do_not_count_towards_the_size(declared: bytes, size: int) -> None:
    ex, app = await exchange("POST", [(b"content-length", declared)], [b"x" * size])
    assert ex.status == 200
    assert app.body == b"x" * size


# ---- streamed bodies (chunked, no Content-Length) ----


async def test_a_chunked_body_up_to_the_limit_is_read_whole() -> None:
    chunks = [b"a" * 40, b"b" * 40, b"c" * 20]  # exactly LIMIT
    ex, app = await exchange("POST", [(b"transfer-encoding", b"chunked")], chunks)
    assert ex.status == 200
    assert app.body == b"".join(chunks)


async def test_a_chunked_body_is_cut_at_the_chunk_that_crosses_the_limit() -> None:
    chunks = [b"x" * 40] * 10
    app = Recorder()
    ex = Exchange(chunks)
    with pytest.raises(HTTPException) as raised:  # a route's handler turns it into JSON (below)
        await BodyLimitMiddleware(app, max_bytes=LIMIT)(
            http_scope("POST", [(b"transfer-encoding", b"chunked")]), ex.receive, ex.send
        )
    assert raised.value.status_code == 413
    assert ex.pulled == 3  # 40, 80, 120: nothing read after the crossing chunk
    assert app.body == b"x" * 80  # and the crossing chunk itself never reached the app
    assert ex.sent == []


async def test_a_post_without_a_body_passes_untouched() -> None:
    ex, app = await exchange("POST", [], [b""])
    assert ex.status == 200
    assert len(app.calls) == 1


# ---- what is not limited ----


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_get_and_head_are_not_limited(method: str) -> None:
    # As implemented: their routes never read a body, so declared sizes are not even looked at.
    ex, app = await exchange(method, [(b"content-length", b"5000")], [b"x" * 5000])
    assert ex.status == 200
    assert len(app.calls) == 1


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
async def test_other_scopes_pass_straight_through(kind: str) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": f"{kind}.disconnect"}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": kind}  # no "method", no "headers": not looked at
    await BodyLimitMiddleware(app, max_bytes=0)(scope, receive, send)
    assert seen == [(scope, receive, send)]


async def test_passing_requests_keep_the_servers_own_receive() -> None:
    # Declared sizes are checked up front, so nothing is wrapped per message on that path.
    seen: list[Receive] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(receive)

    ex = Exchange([b"x"])
    await BodyLimitMiddleware(app, max_bytes=LIMIT)(
        http_scope("POST", [(b"content-length", b"1")]), ex.receive, ex.send
    )
    assert seen == [ex.receive]


# ---- through a Starlette route, over httpx's ASGI transport ----


async def echo(request: Request) -> Response:
    return JSONResponse({"read": len(await request.body())})


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        middleware=[Middleware(BodyLimitMiddleware, max_bytes=LIMIT)],
        exception_handlers=dict(EXCEPTION_HANDLERS),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_a_streamed_body_over_the_limit_gets_the_json_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=stream(b"x" * 60, b"y" * 60))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "payload_too_large"


async def test_a_streamed_body_at_the_limit_is_served(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=stream(b"x" * 60, b"y" * 40))
    assert (response.status_code, response.json()) == (200, {"read": LIMIT})


async def test_a_declared_body_over_the_limit_gets_the_json_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    ok = await client.post("/echo", content=b"x" * LIMIT)
    assert (ok.status_code, ok.json()) == (200, {"read": LIMIT})
