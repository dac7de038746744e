"""The ASGI layers in front of the endpoints, outermost first:

CallRecorder -> RateLimitMiddleware -> FaultMiddleware (faults.py) -> BearerAuthMiddleware -> router

Counting sits outside the faults so a faulted request is still seen and billed, and auth sits
inside them so a fault hits even a client whose token is bad, as an outage at Strava would.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .responses import authorization_error, rate_limit_exceeded
from .sim_config import CONTROL_PREFIX, api_v3_path, is_api_path

if TYPE_CHECKING:
    from .state import SimulatorState

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class CallRecorder:
    """Counts requests per "<METHOD> <route template>" for /_sim/stats.

    Keys come from closed sets (route templates, known methods), so the counter cannot grow
    with whatever paths a client makes up. API templates are named in the /api/v3 layout whichever
    layout the client calls, so a count means the same before and after Strava's move to the root.
    """

    def __init__(self, app: ASGIApp, state: "SimulatorState", routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = routes

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                path = getattr(route, "path", None)
                return api_v3_path(path) if path else "<unmatched>"
        return "<unmatched>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(CONTROL_PREFIX):
            method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
            self.state.record_call(f"{method} {self._template(scope)}", api=is_api_path(scope["path"]))
        await self.app(scope, receive, send)


class RateLimitMiddleware:
    """Bills every API request and stamps the X-RateLimit headers on whatever answer follows."""

    def __init__(self, app: ASGIApp, state: "SimulatorState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        exceeded, limit_headers = self.state.count_api_request()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *limit_headers]}
            await send(message)

        if exceeded:
            await rate_limit_exceeded()(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)


def bearer_token(scope: Scope) -> str | None:
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class BearerAuthMiddleware:
    """Every API request needs a live access token, including ones for unknown routes."""

    def __init__(self, app: ASGIApp, state: "SimulatorState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_api_path(scope["path"]):
            token = bearer_token(scope)
            if token is None or not self.state.access_valid(token):
                await authorization_error()(scope, receive, send)
                return
        await self.app(scope, receive, send)
