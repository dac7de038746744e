"""create_simulator(): one Starlette app serving the API (at /api/v3 and at the root), /oauth and /_sim."""

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from . import api, control, oauth_server
from .faults import FaultMiddleware
from .pipeline import BearerAuthMiddleware, CallRecorder, RateLimitMiddleware
from .responses import strava_error
from .sim_config import SimulatorConfig
from .state import SimulatorState


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's default is plain text; Strava answers unknown paths and methods in JSON.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return strava_error(404, "Record Not Found", "resource", "path", "invalid")
    if status == 405:
        return strava_error(405, "Method Not Allowed", "resource", "method", "invalid")
    return strava_error(status, "Error", "resource", "request", "invalid")


def create_simulator(config: SimulatorConfig | None = None, *, clock: Callable[[], float] = time.time) -> Starlette:
    """A Strava API v3 look-alike; `clock` (Unix seconds) drives token expiry and rate-limit windows."""
    sim = SimulatorState(config or SimulatorConfig(), clock)
    routes = [*oauth_server.routes, *control.routes, *api.routes]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(CallRecorder, state=sim, routes=routes),
            Middleware(RateLimitMiddleware, state=sim),
            Middleware(FaultMiddleware, state=sim),
            Middleware(BearerAuthMiddleware, state=sim),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.sim = sim
    return app
