"""Where the service meets Starlette's internals: the app class, its router, and endpoint binding.

Everything here leans on Starlette behaviour that is not public API (the middleware stack an app
builds, the keys a router writes into the scope, two helpers from `starlette._utils`), so it is
kept in this one module and pinned by tests/test_internals.py, which fails if an upgrade changes
what is relied on.

`StaticFirstRouter` finds static paths with one dict lookup before trying patterns in order.
Starlette's router tries every route's regular expression in turn, through mounts, so a request
for the tenth route pays for nine misses. Paths without parameters served by exactly one route
(nearly all of ours) are looked up directly, and the route sees the scope Starlette's own
matching would have given it (mount `root_path` included); everything else (parameters, one
path shared by several routes, trailing-slash redirects, 404s) falls through to Starlette's own
matching, so the behaviour is the same, 405s included.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from starlette._utils import get_route_path, is_async_callable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service.openapi import iter_routes

__all__ = [
    "EXCEPTION_HANDLERS_KEY",
    "ServiceApp",
    "StaticFirstRouter",
    "bind",
    "get_route_path",
    "is_async_callable",
]

# Where Starlette's `request_response` routes look up the app's exception handlers: a
# (by class, by status) pair of dicts, which `ExceptionMiddleware` would otherwise put there.
EXCEPTION_HANDLERS_KEY = "starlette.exception_handlers"

P = TypeVar("P")
Endpoint = Callable[[Request], Awaitable[Response]]


def bind(handler: Callable[[P, Request], Awaitable[Response]], parts: P) -> Endpoint:
    """A Starlette endpoint that calls `handler(parts, request)`.

    Handlers stay module-level functions of what they need (and can be called alone in a test);
    the endpoint keeps the handler's name, docstring and `describe` metadata for the router and
    the OpenAPI document.
    """

    async def endpoint(request: Request) -> Response:
        return await handler(parts, request)

    functools.update_wrapper(endpoint, handler)
    return endpoint


class StaticFirstRouter(Router):
    def __init__(self, routes: Sequence[BaseRoute], **kwargs: Any) -> None:
        super().__init__(list(routes), **kwargs)
        leaves = list(iter_routes(self.routes))
        uses = Counter(path for path, _ in leaves)
        # Each static path with its route and the prefix of the mounts it sits in.
        self._static: dict[str, tuple[Route, str]] = {
            path: (route, path[: len(path) - len(route.path_format)])
            for path, route in leaves
            if uses[path] == 1 and not route.param_convertors
        }

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:  # type: ignore[override]
        # Not `async`: the route's own coroutine is handed back, two frames fewer per request.
        if scope["type"] == "http":
            found = self._static.get(get_route_path(scope))
            if found is not None:
                route, prefix = found
                # What Router.app, Mount.matches and Route.matches would have put in the scope.
                if "router" not in scope:
                    scope["router"] = self
                if prefix:
                    root_path = scope.get("root_path", "")
                    scope["app_root_path"] = scope.get("app_root_path", root_path)
                    scope["root_path"] = root_path + prefix
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = {}
                if route.methods is None or scope["method"] in route.methods:
                    return route.app(scope, receive, send)
                return route.handle(scope, receive, send)  # which answers the 405
        return self.middleware_stack(scope, receive, send)


class ErrorsFactory(Protocol):
    def __call__(self, handlers: Mapping[Any, Callable[..., Any]], /) -> Any: ...


class OutermostFactory(Protocol):
    def __call__(self, app: ASGIApp, /, *, errors: Any) -> ASGIApp: ...


class ServiceApp(Starlette):
    """Starlette with one given layer outside everything, and the app's error boundary.

    Starlette would put `ServerErrorMiddleware` and `ExceptionMiddleware` around the user
    middleware; here `outermost` (the observability middleware) wraps the user middleware and
    calls the error boundary `errors(exception_handlers)` builds, which does both jobs, so every
    response (the 500s included) passes the request-id, metrics and access-log layer once.
    """

    def __init__(
        self,
        *,
        routes: Sequence[BaseRoute],
        outermost: OutermostFactory,
        errors: ErrorsFactory,
        **kwargs: Any,
    ) -> None:
        super().__init__(routes=list(routes), **kwargs)
        self.router = StaticFirstRouter(routes, lifespan=kwargs.get("lifespan"))
        self._outermost = outermost
        self._errors = errors

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return self._outermost(app, errors=self._errors(self.exception_handlers))
