"""Unit tests for HTTP caching of prepared bodies: ETags, If-None-Match, 304s, Cache-Control.

The body here is too small to gain from compression, so every answer is the identity variant; the
content codings (their ETags, 304s and negotiation) are tested in test_compression.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http_cache import PreparedBody, cache_control, etag_for, matches

BODY = b'{"items":[{"id":1,"name":"Morning Run"}]}'
ETAG = etag_for(BODY)
CONTROL = cache_control(60, 300)


# ---- the pieces ----


def test_etags_are_strong_quoted_and_a_function_of_the_body() -> None:
    assert re.fullmatch(r'"[0-9a-f]{32}"', ETAG)  # strong: no W/ prefix
    assert etag_for(BODY) == ETAG
    assert etag_for(BODY + b" ") != ETAG
    assert etag_for(b"") != ETAG
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag_for(b""))


def test_cache_control_string() -> None:
    assert cache_control(60, 300) == "public, max-age=60, stale-while-revalidate=300"
    assert cache_control(0, 0) == "public, max-age=0, stale-while-revalidate=0"


@pytest.mark.parametrize(
    "header",
    [
        ETAG,
        f" {ETAG} ",
        f'"other", {ETAG}',
        f'"a","b",{ETAG},"c"',
        f"W/{ETAG}",  # weak comparison: W/ on the client's copy still matches
        f'W/"other", W/{ETAG}',
        "*",
        "  *  ",
    ],
)
def test_if_none_match_that_matches(header: str) -> None:
    assert matches(header, ETAG) is True


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        '"other"',
        ETAG[1:-1],  # unquoted
        ETAG[:-2] + '"',  # a prefix of it
        f"w/{ETAG}",  # the weak marker is case-sensitive
        f"W/ {ETAG}",
        '"other", *',  # `*` only counts on its own
        f'"{ETAG}"',
        ETAG.upper(),
    ],
)
def test_if_none_match_that_does_not_match(header: str | None) -> None:
    assert matches(header, ETAG) is False


def test_only_the_first_2048_characters_of_if_none_match_are_considered() -> None:
    filler = '"x", ' * 400  # 2000 characters
    assert matches(filler + ETAG, ETAG) is True  # ends at character 2034
    longer = '"x", ' * 420  # 2100 characters: the ETag starts past the limit
    assert matches(longer + ETAG, ETAG) is False


# ---- the prepared responses over ASGI ----


def prepared_app(prepared: PreparedBody) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await prepared.for_request(scope)(scope, receive, send)

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = prepared_app(PreparedBody(BODY, ETAG, CONTROL))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def test_200_carries_the_body_etag_and_cache_control(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.content == BODY
    assert response.headers["etag"] == ETAG
    assert response.headers["cache-control"] == CONTROL
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(BODY))
    assert response.headers["vary"] == "accept-encoding"  # the answer depends on it, even when plain
    assert "content-encoding" not in response.headers


async def test_a_matching_if_none_match_gets_an_empty_304_with_etag_and_cache_control(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/", headers={"If-None-Match": f'"stale", W/{ETAG}'})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == ETAG
    assert response.headers["cache-control"] == CONTROL
    assert response.headers["vary"] == "accept-encoding"
    assert "content-type" not in response.headers
    assert "content-length" not in response.headers


async def test_a_different_etag_gets_the_full_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers={"If-None-Match": etag_for(b"an older body")})
    assert (response.status_code, response.content) == (200, BODY)


async def test_head_gets_the_same_status_and_headers_as_get(client: httpx.AsyncClient) -> None:
    # The method is not looked at: the server drops a HEAD response's body (uvicorn does), and the
    # headers, Content-Length included, must be the GET's.
    get, head = await client.get("/"), await client.head("/")
    assert head.status_code == 200
    assert {k: head.headers[k] for k in ("etag", "cache-control", "content-type", "content-length")} == {
        k: get.headers[k] for k in ("etag", "cache-control", "content-type", "content-length")
    }
    assert (await client.head("/", headers={"If-None-Match": ETAG})).status_code == 304


async def test_repeated_requests_get_identical_responses(client: httpx.AsyncClient) -> None:
    # Prepared once and sent many times: nothing may accumulate on the shared header lists.
    for _ in range(3):
        ok = await client.get("/")
        not_modified = await client.get("/", headers={"If-None-Match": ETAG})
        assert ok.headers.raw == (await client.get("/")).headers.raw
        assert not_modified.headers.raw == [
            (b"etag", ETAG.encode()),
            (b"cache-control", CONTROL.encode()),
            (b"vary", b"accept-encoding"),
        ]


async def test_if_none_match_split_over_two_field_lines(client: httpx.AsyncClient) -> None:
    # RFC 9110 §5.3: repeated field lines are one comma-separated list.
    response = await client.get("/", headers=[("If-None-Match", '"other"'), ("If-None-Match", ETAG)])
    assert response.status_code == 304
    response = await client.get("/", headers=[("If-None-Match", '"other"'), ("If-None-Match", '"another"')])
    assert response.status_code == 200


async def test_if_none_match_lines_are_bounded_together(client: httpx.AsyncClient) -> None:
    # The 2048-character limit is on the combined list, not per line: a flood of lines matches nothing more.
    filler = [("If-None-Match", '"x", ' * 100)] * 4  # 2000 characters, and the joining commas
    assert (await client.get("/", headers=[*filler, ("If-None-Match", ETAG)])).status_code == 304
    flood = [("If-None-Match", '"x", ' * 100)] * 5
    assert (await client.get("/", headers=[*flood, ("If-None-Match", ETAG)])).status_code == 200
    many = [("If-None-Match", '"x"')] * 1000
    assert (await client.get("/", headers=[*many, ("If-None-Match", ETAG)])).status_code == 200
