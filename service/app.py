"""The app factory: settings in, a Starlette app out, with every enabled project mounted."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from observability.health import Health
from observability.metrics import Metrics
from observability.middleware import ObservabilityMiddleware
from observability.redact import Redactor
from service import SERVICE_NAME, __version__
from service.body_limit import BodyLimitMiddleware
from service.errors import EXCEPTION_HANDLERS, ErrorBoundary, error_response
from service.openapi import build_spec, describe, route_templates
from service.registry import ProjectApp, ProjectContext, ProjectSpec
from service.routing import StaticFirstRouter
from service.security import SECURITY_HEADERS, bearer_matches, cors_middleware
from service.settings import Settings
from service.store import Store

log = structlog.get_logger("service")
PROBE_PATHS = ("/livez", "/readyz")
# Probes and scrapes log at debug level so they do not flood production logs.
QUIET_PATHS = (*PROBE_PATHS, "/metrics")
DESCRIPTION = "Small integrations for websites, one project per /api/<project>/."


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


class ServiceApp(Starlette):
    """Starlette with the observability middleware outside everything, and the app's error boundary.

    Starlette would put `ServerErrorMiddleware` and `ExceptionMiddleware` around the user
    middleware; here one `ErrorBoundary`, called by the outermost middleware, does both jobs, so
    every response (the 500s included) passes the request-id, metrics and access-log layer once.
    """

    def __init__(self, *, routes: list[BaseRoute], observability: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(routes=routes, **kwargs)
        self.router = StaticFirstRouter(routes, lifespan=kwargs.get("lifespan"))
        self._observability = observability

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        errors = ErrorBoundary(self.exception_handlers)
        return ObservabilityMiddleware(app, errors=errors, **self._observability)


def _project_routes(spec: ProjectSpec, built: ProjectApp, health: Health) -> Mount:
    @describe(f"{spec.name}: project information", tags=[spec.name])
    async def info(request: Request) -> Response:
        return json_response(
            {"name": spec.name, "description": spec.description, "version": spec.version, **built.info()}
        )

    @describe(
        f"{spec.name}: project health",
        tags=[spec.name],
        responses={"200": "pass or warn", "503": "fail"},
        media_type="application/health+json",
    )
    async def project_health(request: Request) -> Response:
        result = await health.run_check(spec.name)
        status = 503 if result.status == "fail" else 200
        body = {"status": result.status, "project": spec.name, "checks": {spec.name: [result.as_json()]}}
        return Response(orjson.dumps(body), status_code=status, media_type="application/health+json")

    routes: list[BaseRoute] = [
        Route("/", info, name=f"{spec.name}:info"),
        Route("/health", project_health, name=f"{spec.name}:health"),
        *built.routes,
    ]
    return Mount(f"/api/{spec.name}", routes=routes)


def create_app(
    settings: Settings,
    *,
    projects: Sequence[ProjectSpec] | None = None,
    redactor: Redactor | None = None,
    clock: Callable[[], float] = time.time,
    store: Store | None = None,
) -> Starlette:
    if projects is None:
        from service.projects import REGISTRY

        projects = REGISTRY
    redactor = redactor or Redactor()
    enabled = [p for p in projects if p.name in settings.projects] if settings.projects else []
    metrics = Metrics(__version__)
    health = Health(SERVICE_NAME, __version__)
    built: list[tuple[ProjectSpec, ProjectApp]] = []
    for spec in enabled:
        ctx = ProjectContext(spec.name, settings, settings.projects[spec.name], metrics, redactor, clock, store)
        project = spec.build(ctx)
        health.add_check(spec.name, project.health)
        if project.ready is not None:
            health.add_required(spec.name, project.ready)
        built.append((spec, project))

    @describe("Service name, version and projects", tags=["service"])
    async def root(request: Request) -> Response:
        return json_response(
            {
                "service": SERVICE_NAME,
                "version": __version__,
                "sandbox": settings.sandbox,
                "projects": [
                    {"name": s.name, "description": s.description, "version": s.version, "url": f"/api/{s.name}/"}
                    for s, _ in built
                ],
            }
        )

    @describe("Liveness: the process serves", tags=["probes"])
    async def livez(request: Request) -> Response:
        return json_response({"status": "ok"})

    @describe(
        "Readiness: started, not draining, required dependencies up",
        tags=["probes"],
        responses={"200": "ready", "503": "not ready"},
    )
    async def readyz(request: Request) -> Response:
        ready, reason = health.readiness()
        if ready:
            return json_response({"status": "ready"})
        return error_response(request.scope, 503, "not_ready", reason, headers={"Retry-After": "5"})

    @describe(
        "Aggregated health of the service and every project",
        tags=["probes"],
        responses={"200": "pass or warn", "503": "fail"},
        media_type="application/health+json",
    )
    async def health_report(request: Request) -> Response:
        status, body = await health.report()
        return Response(
            body, status_code=status, media_type="application/health+json", headers={"Cache-Control": "no-store"}
        )

    @describe(
        "Prometheus metrics (text or OpenMetrics by Accept)",
        tags=["observability"],
        responses={"200": "metrics", "401": "bearer token required"},
        media_type="text/plain",
    )
    async def metrics_endpoint(request: Request) -> Response:
        token = settings.metrics_bearer_token
        if token is not None and not bearer_matches(request.headers.get("authorization"), token):
            return error_response(
                request.scope,
                401,
                "unauthorized",
                "A bearer token is required.",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    @describe("This OpenAPI document", tags=["service"])
    async def openapi(request: Request) -> Response:
        return Response(spec_bytes, media_type="application/json")

    routes: list[BaseRoute] = [
        Route("/", root),
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/health", health_report),
        Route("/metrics", metrics_endpoint),
        Route("/openapi.json", openapi),
        *(_project_routes(spec, project, health) for spec, project in built),
    ]
    spec_bytes = orjson.dumps(build_spec(routes, title=SERVICE_NAME, version=__version__, description=DESCRIPTION))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if store is not None:  # before the projects, which subscribe to it
                await store.start()
                stack.push_async_callback(store.aclose)
            for spec, project in built:
                if project.lifespan is not None:
                    await stack.enter_async_context(project.lifespan())
                    log.info("project_started", project=spec.name)
            health.started = True
            log.info(
                "service_started", version=__version__, projects=[s.name for s, _ in built], sandbox=settings.sandbox
            )
            try:
                yield
            finally:
                health.draining = True
        log.info("service_stopped")

    app = ServiceApp(
        routes=routes,
        middleware=[*cors_middleware(settings), Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
        observability={
            "metrics": metrics.http,
            "route_templates": route_templates(routes),
            "exclude_paths": settings.metrics_exclude_paths,
            "quiet_paths": QUIET_PATHS,
            "response_headers": SECURITY_HEADERS,
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.health = health
    app.state.redactor = redactor
    return app
