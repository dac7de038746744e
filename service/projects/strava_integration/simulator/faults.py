"""Injected failures: what a test asked for, and the ASGI middleware that acts it out."""

import asyncio
import contextlib
import socket
import struct
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .responses import MAX_BODY_BYTES, JsonResponse, bad_request
from .sim_config import CONTROL_PREFIX, api_v3_path, is_api_path

if TYPE_CHECKING:
    from .state import SimulatorState

FAULT_KINDS = frozenset({"http_500", "http_502", "http_503", "http_504", "timeout", "malformed_json", "reset", "none"})
DEFAULT_DELAY_S = 30.0
MAX_DELAY_S = 600.0
MAX_COUNT = 1_000_000
RELEASE_POLL_S = 0.01  # how soon a held request notices `release_held` (the test thread's call)


@dataclass(frozen=True)
class Fault:
    kind: str
    count: int | None = None  # requests still to fault; None = until cleared
    delay_s: float = DEFAULT_DELAY_S
    path_prefix: str | None = None  # None = every API request

    def applies_to(self, path: str) -> bool:
        # The control API must stay reachable, or a test could never clear the fault again.
        if path.startswith(CONTROL_PREFIX):
            return False
        if self.path_prefix is None:
            return is_api_path(path)
        # A prefix in either layout hits both: "/api/v3/athlete" also faults "/athlete".
        return path.startswith(self.path_prefix) or api_v3_path(path).startswith(self.path_prefix)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_fault(kind: Any, count: Any = None, delay_s: Any = DEFAULT_DELAY_S, path_prefix: Any = None) -> Fault | None:
    """Validate a fault request; None means "no fault". Raises ValueError on bad input."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {sorted(FAULT_KINDS)}")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT):
        raise ValueError(f"count must be null or an integer in [0, {MAX_COUNT}]")
    if delay_s is None:
        delay_s = DEFAULT_DELAY_S
    if not isinstance(delay_s, int | float) or isinstance(delay_s, bool) or not 0 <= delay_s <= MAX_DELAY_S:
        raise ValueError(f"delay_s must be a number in [0, {MAX_DELAY_S}]")
    if path_prefix is not None and (
        not isinstance(path_prefix, str) or not path_prefix.startswith("/") or len(path_prefix) > 200
    ):
        raise ValueError("path_prefix must be null or a path starting with '/' (max 200 chars)")
    if kind == "none" or count == 0:
        return None
    return Fault(kind=kind, count=count, delay_s=float(delay_s), path_prefix=path_prefix)


async def _read_request_body(receive: Receive) -> bytes | None:
    """Whole request body, or None if the client hung up first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body.extend(message.get("body", b""))
        if len(body) > MAX_BODY_BYTES:
            raise ValueError("request body too large")
        if not message.get("more_body", False):
            return bytes(body)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the already-read body once, then defers to the server."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _raw_transport(receive: Receive) -> Any:
    # uvicorn passes its RequestResponseCycle.receive bound method straight through (neither
    # uvicorn's proxy-headers wrapper nor Starlette wrap `receive`), and the cycle keeps the
    # asyncio transport. This is private uvicorn API, hence the duck-typed, fail-soft lookup.
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort") or not hasattr(transport, "get_extra_info"):
        return None
    return transport


class SimulatedConnectionReset(ConnectionResetError):
    """Raised when the server gives us no transport to abort (e.g. httpx.ASGITransport)."""


class FaultMiddleware:
    """Acts out the configured fault; it sits inside the rate limiter, so faulted requests still count."""

    def __init__(self, app: ASGIApp, state: "SimulatorState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = self.state.take_fault(scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
        elif fault.kind == "timeout":
            await self._answer_late(fault.delay_s, scope, receive, send)
        elif fault.kind == "malformed_json":
            await self._answer_truncated(scope, receive, send)
        elif fault.kind == "reset":
            await self._drop_connection(receive)
        else:
            status = int(fault.kind.removeprefix("http_"))
            body = {"message": HTTPStatus(status).phrase, "errors": []}
            await JsonResponse(body, status_code=status)(scope, receive, send)

    async def _answer_late(self, delay_s: float, scope: Scope, receive: Receive, send: Send) -> None:
        # Read the body first: afterwards the only thing receive() can report is a disconnect,
        # which lets a client that gave up end the wait at once instead of pinning a task
        # (and uvicorn's graceful shutdown) for the whole delay.
        try:
            body = await _read_request_body(receive)
        except ValueError:
            await bad_request("Request", "body")(scope, receive, send)
            return
        if body is None:
            return
        loop = asyncio.get_running_loop()
        hung_up = loop.create_task(_until_disconnect(receive))
        deadline = loop.time() + delay_s
        mark = self.state.hold()
        try:
            while not hung_up.done() and not self.state.released(mark) and loop.time() < deadline:
                await asyncio.wait((hung_up,), timeout=min(deadline - loop.time(), RELEASE_POLL_S))
            client_left = hung_up.done()
        finally:
            self.state.unhold()
            hung_up.cancel()
        if not client_left:
            await self.app(scope, _replaying(body, receive), send)
        # Otherwise the client hung up during the delay: nobody is left to answer.

    async def _answer_truncated(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Let the real endpoint answer, then cut its JSON in half and claim success, which is
        # what a proxy dropping the tail of a response looks like to a client.
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        full = b"".join(chunks)
        body = full[: len(full) // 2] or b'{"'
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _drop_connection(self, receive: Receive) -> None:
        transport = _raw_transport(receive)
        # Take the whole request first. Otherwise the RST can hit the client while it is still
        # sending the body, and it then reports an ordinary EOF instead of "connection reset".
        with contextlib.suppress(ValueError):
            await _read_request_body(receive)
        if transport is None:
            # No socket to drop; an exception before http.response.start is the closest we get
            # (under a server this becomes a 500, under httpx.ASGITransport the client sees it raised).
            raise SimulatedConnectionReset("simulated connection reset")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER on with a zero timeout turns close() into a TCP RST, so the client sees
            # "connection reset by peer" rather than an orderly (FIN) close.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Returning before uvicorn has seen the connection go would make it log an error and
        # try to write a 500 of its own; waiting for the disconnect event avoids both.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until_disconnect(receive), timeout=1.0)
