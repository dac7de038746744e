"""Compressed bodies made once per body: negotiation, a strong ETag and a 304 per coding, Vary everywhere.

Unit tests drive `PreparedBody` as the ASGI app it hands out; the end-to-end ones talk HTTP to the
sandbox service through `http.client`, which (unlike httpx) never decodes, so the bytes on the wire
are what is checked.
"""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Iterator
from typing import Any

import brotli  # type: ignore[import-untyped]
import orjson
import pytest

from service import http_cache
from service.errors import ApiError
from service.http_cache import PreparedBody, etag_for, negotiate, negotiated
from tests.support import ServiceProcess

# A body like a feed: repetitive JSON that compresses well.
BODY = orjson.dumps(
    {"activities": [{"id": 10_000 + i, "name": f"Morning Run {i}", "sport_type": "Run"} for i in range(60)]}
)
TINY = b"{}"
ETAG = etag_for(BODY)
CONTROL = "public, max-age=60, stale-while-revalidate=600"


# ---- negotiation (RFC 9110 §12.5.3) ----

NEGOTIATION = [
    ("", ("identity",)),  # an empty value: identity only
    ("identity", ("identity",)),
    ("gzip", ("gzip", "identity")),
    ("GZip", ("gzip", "identity")),  # codings are case-insensitive
    ("x-gzip", ("gzip", "identity")),  # an alias of gzip
    ("br", ("br", "identity")),
    ("gzip, deflate, br", ("br", "gzip", "identity")),  # equal q: our preference, br first
    ("gzip, deflate, br, zstd", ("br", "gzip", "identity")),  # what Chrome sends
    ("br;q=0.5, gzip", ("gzip", "br", "identity")),  # q-values decide
    ("gzip; q=0.8, br ;q=0.9", ("br", "gzip", "identity")),  # optional whitespace
    ("gzip;q=0.5", ("gzip", "identity")),  # an unlisted identity comes after what was named
    ("identity, gzip;q=0.5", ("identity", "gzip")),  # a listed identity has its q
    ("gzip;q=0", ("identity",)),  # q=0: not acceptable
    ("gzip;q=0.000, br;q=0.001", ("br", "identity")),
    ("*", ("br", "gzip", "identity")),  # `*` covers everything not listed
    ("br;q=0, *", ("gzip", "identity")),
    ("*;q=0", ()),  # refuses identity too
    ("*;q=0, identity", ("identity",)),  # ... unless identity is listed
    ("identity;q=0", ()),
    ("gzip, identity;q=0", ("gzip",)),
    ("gzip, *;q=0", ("gzip",)),
    ("gzip;q=2", ("identity",)),  # a malformed item is ignored, not an error
    ("gzip;q=0.5000", ("identity",)),  # at most three decimals
    ("gzip;level=9", ("identity",)),
    ("compress, deflate, zstd", ("identity",)),  # codings we do not have
    ("gzip;q=0.1, gzip;q=1", ("gzip", "identity")),  # the first mention counts (q=0.1, still acceptable)
    (",,, ,gzip,", ("gzip", "identity")),
]


@pytest.mark.parametrize(("header", "expected"), NEGOTIATION)
def test_negotiation(header: str, expected: tuple[str, ...]) -> None:
    assert negotiate(header) == expected


def test_an_overlong_header_is_cut_at_an_item_boundary() -> None:
    padding = "x-unknown;q=0.1, " * 40  # 680 characters
    assert negotiate(padding + "gzip") == ("identity",)  # gzip lies past the limit
    assert negotiate("gzip, " + padding + "br") == ("gzip", "identity")
    # An item the cut goes through is dropped, not half read: `gzip;q=0.9` cut to `gzip;q=0` would refuse.
    limit = http_cache._MAX_ACCEPT_ENCODING
    head = "*, x-pad;q=0.1, " + "a" * (limit - len("*, x-pad;q=0.1, ") - len(", gzip;q=0"))
    assert len(head + ", gzip;q=0") == limit
    assert "gzip" in negotiate(head + ", gzip;q=0.9")
    assert "gzip" not in negotiate(head + ", gzip;q=0")  # the same item, whole, does refuse


async def test_negotiation_is_memoized_by_raw_bytes_and_bounded() -> None:
    first = negotiated(b"gzip, deflate, br")
    assert negotiated(b"gzip, deflate, br") is first  # the same tuple: a dict hit, no parsing
    for i in range(3 * http_cache._NEGOTIATED_MAX):
        negotiated(f"gzip;q=0.{i % 1000:03d}".encode())
    assert len(http_cache._NEGOTIATED) <= http_cache._NEGOTIATED_MAX
    prepared = PreparedBody(BODY, ETAG, CONTROL)  # each body keeps its own raw header -> variant map
    for i in range(3 * http_cache._NEGOTIATED_MAX):
        prepared.for_request(scope_for(("Accept-Encoding", f"gzip;q=0.{i % 1000:03d}")))
    assert 0 < len(prepared._by_header) <= http_cache._NEGOTIATED_MAX
    # Keys stay small: an overlong header is answered but not remembered.
    huge = "gzip, " + "x" * 60_000
    _, headers, _ = await serve(prepared, ("Accept-Encoding", huge))
    assert headers["content-encoding"] == "gzip"
    assert huge.encode() not in http_cache._NEGOTIATED and huge.encode() not in prepared._by_header


# ---- PreparedBody as an ASGI app ----


def scope_for(*headers: tuple[str, str], method: str = "GET") -> dict[str, Any]:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    return {"type": "http", "method": method, "path": "/feed", "query_string": b"", "headers": raw}


async def serve(prepared: PreparedBody, *headers: tuple[str, str]) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names, each at most once) and body of one request."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        messages.append(message)

    scope = scope_for(*headers)
    await prepared.for_request(scope)(scope, receive, send)
    start, body = messages
    names = [name.decode() for name, _ in start["headers"]]
    assert len(names) == len(set(names)), names
    return start["status"], {n.decode(): v.decode() for n, v in start["headers"]}, body["body"]


def decode(coding: str | None, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    assert coding is None, coding
    return data


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (None, None),  # no header: identity
        ("identity", None),
        ("gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("br;q=0.5, gzip", "gzip"),
        ("*", "br"),
        ("gzip;q=0, br;q=0", None),
        ("compress", None),  # nothing we have is acceptable, identity is not refused: identity
    ],
)
async def test_each_coding_decodes_to_the_body(accept: str | None, coding: str | None) -> None:
    prepared = PreparedBody(BODY, ETAG, CONTROL)
    status, headers, body = await serve(prepared, *([("Accept-Encoding", accept)] if accept is not None else []))
    assert status == 200
    assert headers.get("content-encoding") == coding
    assert decode(coding, body) == BODY
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == CONTROL
    assert headers["vary"] == "accept-encoding"
    if coding is not None:
        assert len(body) < len(BODY)


async def test_a_strong_etag_per_coding_and_a_304_for_each() -> None:
    prepared = PreparedBody(BODY, ETAG, CONTROL)
    etags = {}
    for accept, coding in (("identity", "identity"), ("gzip", "gzip"), ("br", "br")):
        status, headers, _ = await serve(prepared, ("Accept-Encoding", accept))
        etags[coding] = headers["etag"]
        for inm in (headers["etag"], "W/" + headers["etag"], f'"nope", {headers["etag"]}', "*"):
            status, not_modified, body = await serve(prepared, ("Accept-Encoding", accept), ("If-None-Match", inm))
            assert (status, body) == (304, b"")
            assert not_modified["etag"] == headers["etag"]
            assert not_modified["vary"] == "accept-encoding"  # a 304 varies like its 200
            assert not_modified["cache-control"] == CONTROL
            assert "content-encoding" not in not_modified and "content-length" not in not_modified
    assert etags == {"identity": ETAG, "gzip": ETAG[:-1] + '-gz"', "br": ETAG[:-1] + '-br"'}
    # Another variant's ETag does not validate this one: a cache holding gzip bytes asks for identity.
    status, headers, body = await serve(prepared, ("Accept-Encoding", "identity"), ("If-None-Match", etags["gzip"]))
    assert (status, headers["etag"], body) == (200, ETAG, BODY)
    status, headers, _ = await serve(prepared, ("Accept-Encoding", "br"), ("If-None-Match", etags["gzip"]))
    assert (status, headers["etag"]) == (200, etags["br"])


async def test_a_compressed_variant_only_when_smaller() -> None:
    prepared = PreparedBody(TINY, etag_for(TINY), CONTROL)
    for accept in ("gzip", "br", "gzip, deflate, br", "*"):
        status, headers, body = await serve(prepared, ("Accept-Encoding", accept))
        assert (status, body, headers["etag"]) == (200, TINY, etag_for(TINY))
        assert "content-encoding" not in headers and headers["vary"] == "accept-encoding"
    assert len(gzip.compress(TINY)) > len(TINY)  # the premise: compressing it would grow it


async def test_identity_refused_gets_any_coding_even_a_bigger_one() -> None:
    prepared = PreparedBody(TINY, etag_for(TINY), CONTROL)
    status, headers, body = await serve(prepared, ("Accept-Encoding", "gzip, identity;q=0"))
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert gzip.decompress(body) == TINY


@pytest.mark.parametrize("accept", ["identity;q=0", "*;q=0", "compress, *;q=0", "br;q=0, gzip;q=0, identity;q=0"])
async def test_nothing_acceptable_is_a_406(accept: str) -> None:
    prepared = PreparedBody(BODY, ETAG, CONTROL)
    with pytest.raises(ApiError) as raised:
        await serve(prepared, ("Accept-Encoding", accept))
    assert (raised.value.status, raised.value.code) == (406, "not_acceptable")
    assert raised.value.headers == {"Vary": "Accept-Encoding"}


async def test_bodies_are_compressed_once_and_deterministically() -> None:
    prepared = PreparedBody(BODY, ETAG, CONTROL)
    scope = scope_for(("Accept-Encoding", "gzip"))
    assert prepared.for_request(scope) is prepared.for_request(scope)  # kept, not made again
    assert prepared.variant("gzip") is prepared.variant("gzip")
    assert prepared.variant("br") is prepared.variant("br")
    again = PreparedBody(BODY, ETAG, CONTROL)  # another instance, another process: the same bytes
    for coding in ("gzip", "br"):
        assert again.variant(coding).ok.body == prepared.variant(coding).ok.body
    assert prepared.variant("gzip").ok.body[4:8] == b"\0\0\0\0"  # gzip's MTIME field is zero


async def test_several_accept_encoding_lines_are_one_list() -> None:
    prepared = PreparedBody(BODY, ETAG, CONTROL)
    _, headers, _ = await serve(prepared, ("Accept-Encoding", "identity;q=0.1"), ("Accept-Encoding", "gzip"))
    assert headers["content-encoding"] == "gzip"


async def test_other_content_types_and_extra_headers() -> None:
    script = b"customElements.define('x-y', class extends HTMLElement {});\n" * 20
    prepared = PreparedBody(
        script, etag_for(script), "public, max-age=31536000, immutable", "text/javascript", [("X-Extra", "1")]
    )
    status, headers, body = await serve(prepared, ("Accept-Encoding", "gzip"))
    assert (status, headers["content-type"], headers["x-extra"]) == (200, "text/javascript", "1")
    assert gzip.decompress(body) == script
    _, not_modified, _ = await serve(prepared, ("Accept-Encoding", "gzip"), ("If-None-Match", headers["etag"]))
    assert not_modified["x-extra"] == "1" and not_modified["vary"] == "accept-encoding"


def test_the_public_api_stays() -> None:
    prepared = PreparedBody(BODY, ETAG, CONTROL)
    assert prepared.etag == ETAG
    assert prepared.identity.ok.status == 200 and prepared.identity.ok.body == BODY
    assert prepared.identity.not_modified.status == 304 and prepared.identity.not_modified.body == b""


# ---- end to end: the sandbox service over real HTTP ----

API = "/api/strava-integration"


def fetch(service: ServiceProcess, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers; the body as it came over the wire."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


@pytest.fixture(scope="module")
def paths(sandbox_service: ServiceProcess) -> Iterator[list[str]]:
    _, _, body = fetch(sandbox_service, API + "/feed?limit=5", Accept_Encoding="identity")
    first = orjson.loads(body)["activities"][0]["id"]
    yield [API + "/feed", API + "/feed?limit=50", API + f"/activities/{first}", API + "/stats"]


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_served_compressed_bodies_decode_to_the_identity_body(
    sandbox_service: ServiceProcess, paths: list[str], coding: str
) -> None:
    for path in paths:
        status, plain, body = fetch(sandbox_service, path, Accept_Encoding="identity")
        assert status == 200 and "content-encoding" not in plain and plain["vary"].lower() == "accept-encoding"
        status, headers, packed = fetch(sandbox_service, path, Accept_Encoding=coding)
        assert status == 200, path
        assert headers["content-encoding"] == coding, path
        assert decode(coding, packed) == body, path
        assert int(headers["content-length"]) == len(packed) < len(body)
        assert headers["vary"].lower() == "accept-encoding"
        assert headers["etag"] == plain["etag"][:-1] + ("-gz" if coding == "gzip" else "-br") + '"'
        assert headers["cache-control"] == plain["cache-control"]


def test_served_304_per_coding(sandbox_service: ServiceProcess) -> None:
    path = API + "/feed?limit=30"
    _, gz, _ = fetch(sandbox_service, path, Accept_Encoding="gzip")
    status, headers, body = fetch(sandbox_service, path, Accept_Encoding="gzip", If_None_Match=gz["etag"])
    assert (status, body, headers["etag"]) == (304, b"", gz["etag"])
    assert headers["vary"].lower() == "accept-encoding"
    # The gzip ETag does not validate the brotli or the plain body.
    for accept in ("br", "identity"):
        status, headers, body = fetch(sandbox_service, path, Accept_Encoding=accept, If_None_Match=gz["etag"])
        assert status == 200 and body and headers["etag"] != gz["etag"]


def test_served_head_matches_get(sandbox_service: ServiceProcess) -> None:
    path = API + "/feed?limit=30"
    for accept in ("gzip", "br", "identity"):
        _, get, packed = fetch(sandbox_service, path, Accept_Encoding=accept)
        status, head, body = fetch(sandbox_service, path, "HEAD", Accept_Encoding=accept)
        assert (status, body) == (200, b"")
        for name in ("etag", "content-length", "vary", "content-type"):
            assert head[name] == get[name], name
        assert head.get("content-encoding") == get.get("content-encoding")
        assert int(head["content-length"]) == len(packed)


def test_served_406_when_identity_and_every_coding_are_refused(sandbox_service: ServiceProcess) -> None:
    status, headers, body = fetch(sandbox_service, API + "/feed", Accept_Encoding="identity;q=0, *;q=0")
    assert status == 406
    assert headers["content-type"].startswith("application/json")
    assert "accept-encoding" in headers["vary"].lower()
    error = orjson.loads(body)
    assert error["error"] == "not_acceptable" and error["request_id"] == headers["x-request-id"]
