"""The app factory: settings in, a Starlette app out, with every enabled project mounted.

`create_app` only wires: it builds the store, each project, the service's `Service` parts and the
routes (handlers live in `service.routes` and in each project's own package) and hands them to the app.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware

from observability.health import Health
from observability.logging import lines_dropped
from observability.metrics import Metrics
from observability.middleware import ObservabilityMiddleware
from observability.redact import Redactor
from service import SERVICE_NAME, __version__
from service.body_limit import BodyLimitMiddleware
from service.errors import EXCEPTION_HANDLERS, ErrorBoundary
from service.openapi import build_spec, route_templates
from service.registry import ProjectContext, ProjectSpec
from service.routes import MountedProject, Service, project_mount, service_routes
from service.routing import ServiceApp
from service.security import SECURITY_HEADERS, cors_middleware
from service.settings import Settings
from service.store import Store, build_store, store_check

log = structlog.get_logger("service")
PROBE_PATHS = ("/livez", "/readyz")
# Probes and scrapes log at debug level so they do not flood production logs.
QUIET_PATHS = (*PROBE_PATHS, "/metrics")
DESCRIPTION = "Small integrations for websites, one project per /api/<project>/."


def create_app(
    settings: Settings,
    *,
    projects: Sequence[ProjectSpec[Any]] | None = None,
    redactor: Redactor | None = None,
    clock: Callable[[], float] = time.time,
    store: Store | None = None,
) -> Starlette:
    """`store`: shared state to use instead of the one the settings name (tests run several apps on one)."""
    if projects is None:
        from service.projects import REGISTRY

        projects = REGISTRY
    redactor = redactor or Redactor()
    for secret in settings.secrets():  # the Redis URL and its password, the metrics token
        redactor.add_secret(secret)
    enabled = [p for p in projects if p.name in settings.projects] if settings.projects else []
    metrics = Metrics(__version__)
    metrics.counter_from(
        "log_lines_dropped", "Log lines dropped because the log reader fell behind.", (), lambda: {(): lines_dropped()}
    )
    health = Health(SERVICE_NAME, __version__)
    if store is None:
        store = build_store(
            settings.redis_url,
            metrics,
            ca_cert=settings.redis_ca_cert,
            key_prefix=settings.redis_key_prefix,
            timeout_s=settings.redis_timeout_seconds,
            clock=clock,
        )
    # A check, not a readiness requirement: with the store down, cached data beats an outage.
    health.add_check("store", store_check(store))
    mounted = [_build_project(spec, settings, metrics, redactor, clock, health, store) for spec in enabled]
    service = Service(settings, health, metrics, enabled)
    routes = [*service_routes(service), *(project_mount(project) for project in mounted)]
    service.openapi = orjson.dumps(build_spec(routes, title=SERVICE_NAME, version=__version__, description=DESCRIPTION))

    app = ServiceApp(
        routes=routes,
        middleware=[*cors_middleware(settings), Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=partial(_lifespan, mounted, health, settings, store),
        outermost=partial(
            ObservabilityMiddleware,
            metrics=metrics.http,
            route_templates=route_templates(routes),
            exclude_paths=settings.metrics_exclude_paths,
            quiet_paths=QUIET_PATHS,
            response_headers=SECURITY_HEADERS,
        ),
        errors=ErrorBoundary,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.health = health
    app.state.redactor = redactor
    app.state.store = store
    return app


def _build_project(
    spec: ProjectSpec[Any],
    settings: Settings,
    metrics: Metrics,
    redactor: Redactor,
    clock: Callable[[], float],
    health: Health,
    store: Store,
) -> MountedProject:
    ctx = ProjectContext(spec.name, settings, settings.projects[spec.name], metrics, redactor, clock, store)
    project = spec.build(ctx)
    health.add_check(spec.name, project.health)
    if project.ready is not None:
        health.add_required(spec.name, project.ready)
    return MountedProject(spec, project, health)


@asynccontextmanager
async def _lifespan(
    mounted: Sequence[MountedProject], health: Health, settings: Settings, store: Store, app: Starlette
) -> AsyncIterator[None]:
    names = [project.spec.name for project in mounted]
    async with AsyncExitStack() as stack:
        # Before the projects, which read and subscribe to it; closed after them.
        await store.start()
        stack.push_async_callback(store.aclose)
        for project in mounted:
            if project.app.lifespan is not None:
                await stack.enter_async_context(project.app.lifespan())
                log.info("project_started", project=project.spec.name)
        health.started = True
        log.info(
            "service_started",
            version=__version__,
            projects=names,
            sandbox=settings.sandbox,
            store=store.backend,
            store_location=store.location,
        )
        try:
            yield
        finally:
            health.draining = True
    log.info("service_stopped")
