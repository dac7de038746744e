"""HTTP caching for JSON bodies serialized once: strong ETags, If-None-Match, Cache-Control."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

_MAX_IF_NONE_MATCH = 2048  # characters considered; a longer header matches nothing more


def etag_for(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def cache_control(max_age: int, stale_while_revalidate: int) -> str:
    return f"public, max-age={max_age}, stale-while-revalidate={stale_while_revalidate}"


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match requires."""
    if not if_none_match:
        return False
    header = if_none_match[:_MAX_IF_NONE_MATCH]
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def json_with_etag(request: Request, body: bytes, etag: str, control: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": control}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
