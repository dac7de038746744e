"""Unit tests for request ids: which incoming ids are kept, what a made one looks like, the echo."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs

from observability import request_id
from observability.logging import add_request_id
from observability.metrics import HttpMetrics
from observability.middleware import ObservabilityMiddleware
from service.errors import EXCEPTION_HANDLERS
from service.http_cache import PreparedBody, cache_control, etag_for

GENERATED = re.compile(r"[0-9a-f]{32}")


# ---- accept and generate ----


@pytest.mark.parametrize(
    "value",
    [
        b"a",
        b"abc-123_DEF.xyz",
        b"0123456789abcdef0123456789abcdef",
        b"550e8400-e29b-41d4-a716-446655440000",
        b"...",
        b"x" * 128,  # the longest kept
    ],
)
def test_a_plainly_safe_incoming_id_is_kept(value: bytes) -> None:
    assert request_id.accept(value) == value.decode()


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"x" * 129,
        b"x" * 10_000,
        b"abc\n",  # a trailing newline must not slip past the end anchor
        b"abc\r\nSet-Cookie: a=b",
        b"has space",
        b"a/b",
        b"a:b",
        b"a=b",
        b"<script>",
        b"caf\xc3\xa9",
        b"\x00abc",
        b"abc\x00",
        b"{a}",
        b"a%20b",
    ],
    ids=repr,
)
def test_anything_else_is_replaced_by_a_fresh_id(value: bytes | None) -> None:
    made = request_id.accept(value)
    assert GENERATED.fullmatch(made)
    assert value is None or made.encode() != value


def test_generated_ids_are_32_hex_digits_and_unique() -> None:
    ids = [request_id.generate() for _ in range(2000)]
    assert all(GENERATED.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_generated_id_is_accepted_when_sent_back() -> None:
    made = request_id.generate()
    assert request_id.accept(made.encode()) == made


def test_request_id_of_reads_the_scope_state() -> None:
    assert request_id.request_id_of({"type": "http"}) is None
    assert request_id.request_id_of({"type": "http", "state": {}}) is None
    assert request_id.request_id_of({"type": "http", "state": {"request_id": "r-1"}}) == "r-1"


# ---- the echo, through the observability middleware ----

PREPARED = PreparedBody(b'{"ok":true}', etag_for(b'{"ok":true}'), cache_control(60, 300))


async def inside(request: Request) -> Response:
    structlog.get_logger("test.request_id").info("inside_the_request")
    return JSONResponse({"seen": request_id.request_id_of(request.scope)})


class Prepared:
    """A raw ASGI route serving the prepared response, as the cached JSON routes do."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await PREPARED.for_request(scope)(scope, receive, send)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    inner = Starlette(
        routes=[Route("/inside", inside), Route("/prepared", Prepared())], exception_handlers=dict(EXCEPTION_HANDLERS)
    )
    app = ObservabilityMiddleware(inner, metrics=HttpMetrics(), route_templates={})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def test_a_valid_incoming_id_is_echoed_and_seen_by_the_app(client: httpx.AsyncClient) -> None:
    response = await client.get("/inside", headers={"X-Request-ID": "client-id.42"})
    assert response.headers["x-request-id"] == "client-id.42"
    assert response.json() == {"seen": "client-id.42"}


async def test_an_invalid_incoming_id_is_replaced_everywhere(client: httpx.AsyncClient) -> None:
    response = await client.get("/inside", headers={"X-Request-ID": "bad id with spaces"})
    made = response.headers["x-request-id"]
    assert GENERATED.fullmatch(made)
    assert response.json() == {"seen": made}
    assert "bad id" not in response.text


async def test_without_an_incoming_id_each_request_gets_its_own(client: httpx.AsyncClient) -> None:
    first, second = await client.get("/inside"), await client.get("/inside")
    assert GENERATED.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.json() == {"seen": first.headers["x-request-id"]}


async def test_the_first_of_several_incoming_ids_counts(client: httpx.AsyncClient) -> None:
    response = await client.get("/inside", headers=[("X-Request-ID", "first"), ("X-Request-ID", "second")])
    assert response.headers.get_list("x-request-id") == ["first"]


async def test_error_bodies_name_the_same_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope", headers={"X-Request-ID": "trace-404"})
    assert response.status_code == 404
    assert (response.headers["x-request-id"], response.json()["request_id"]) == ("trace-404", "trace-404")


async def test_prepared_responses_get_exactly_their_own_id(client: httpx.AsyncClient) -> None:
    # The prepared header list is shared by every request: the id must be added to a copy.
    for rid in ("one", "two", "three"):
        response = await client.get("/prepared", headers={"X-Request-ID": rid})
        assert response.headers.get_list("x-request-id") == [rid]
        not_modified = await client.get("/prepared", headers={"X-Request-ID": rid, "If-None-Match": PREPARED.etag})
        assert not_modified.status_code == 304
        assert not_modified.headers.get_list("x-request-id") == [rid]


async def test_log_events_inside_the_request_carry_its_id(client: httpx.AsyncClient) -> None:
    # add_request_id is typed with dict, structlog's Processor with MutableMapping: same at runtime.
    with capture_logs(processors=[add_request_id]) as logs:  # type: ignore[list-item]
        await client.get("/inside", headers={"X-Request-ID": "logged-1"})
    assert {"event": "inside_the_request", "request_id": "logged-1", "log_level": "info"} in logs
