"""HTTP caching for bodies built once (JSON, scripts, pages): strong ETags, If-None-Match, Cache-Control."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from starlette.types import Receive, Scope, Send

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


class _Fixed:
    """An ASGI response whose status, headers and body never change: built once, sent many times."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The header list is shared between requests: whoever adds headers must copy it (ours do).
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class PreparedBody:
    """A body as its 200 and its 304, prepared once per body rather than per request.

    `headers` go on the 200 only (a 304 repeats just the validators and caching headers, RFC 9110 15.4.5).
    """

    __slots__ = ("etag", "not_modified", "ok")

    def __init__(
        self,
        body: bytes,
        etag: str,
        control: str,
        content_type: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        common = [(b"etag", etag.encode()), (b"cache-control", control.encode())]
        self.etag = etag
        self.ok = _Fixed(
            200,
            [(b"content-length", str(len(body)).encode()), (b"content-type", content_type.encode()), *common, *headers],
            body,
        )
        self.not_modified = _Fixed(304, common, b"")

    def for_request(self, scope: Scope) -> _Fixed:
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if matches(value.decode("latin-1"), self.etag):
                    return self.not_modified
                break
        return self.ok


class PreparedJSON(PreparedBody):
    """A cached JSON body (the data routes' hot path: same per-request work as any PreparedBody)."""

    __slots__ = ()

    def __init__(self, body: bytes, etag: str, control: str) -> None:
        super().__init__(body, etag, control, "application/json")
