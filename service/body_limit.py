"""Request body limit: JSON 413 for bodies over the configured size, declared or streamed (400: bad length)."""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response

_NO_BODY = frozenset({"GET", "HEAD"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._max_digits = len(str(max_bytes))

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            # Their routes never read a body (uvicorn's flow control bounds what it buffers).
            # The app's own coroutine is handed back: no frame of ours on the hot path.
            return self.app(scope, receive, send)
        return self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is None and not chunked:
            # No body at all (every GET): nothing to count.
            await self.app(scope, receive, send)
            return
        if declared is not None:
            # The server already enforces that the body matches a valid Content-Length.
            status = self._refusal(declared)
            if status is not None:
                await error_response(scope, status)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        await self.app(scope, _CountingReceive(receive, self.max_bytes), send)

    def _refusal(self, declared: bytes) -> int | None:
        """400 for a Content-Length that is not 1*DIGIT (RFC 9110 §8.6), 413 for one over the limit."""
        if not declared.isdigit():  # bytes.isdigit is ASCII digits only
            return 400
        # Compared by length first: int() refuses more than 4300 digits (and would be slow on them).
        digits = declared.lstrip(b"0")
        if len(digits) > self._max_digits or int(digits or b"0") > self.max_bytes:
            return 413
        return None


class _CountingReceive:
    """For bodies without a Content-Length (chunked): stop reading past the limit."""

    __slots__ = ("limit", "receive", "seen")

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.seen = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                # Raised inside the endpoint's body read, so the route's handler renders JSON 413.
                raise HTTPException(413)
        return message
