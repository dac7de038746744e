"""The service's own routes: /, the probes, /metrics, /openapi.json, and each project's info and health.

Each handler is a module-level function of one small object holding what it needs (`Service`,
or `MountedProject` for the per-project pair) and the request; `service.routing.bind` turns it
into a Starlette endpoint. `create_app` only builds those objects and lists the routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from observability.health import Health
from observability.metrics import Metrics
from service import SERVICE_NAME, __version__
from service.errors import error_response
from service.openapi import describe
from service.registry import ProjectApp, ProjectSpec
from service.routing import bind
from service.security import bearer_matches
from service.settings import Settings

HEALTH_JSON = "application/health+json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


@dataclass(slots=True)
class Service:
    """What the service's own handlers need."""

    settings: Settings
    health: Health
    metrics: Metrics
    projects: Sequence[ProjectSpec[Any]]  # the enabled ones, in mount order
    # Filled in by `create_app` once every route exists: the document describes them all, itself included.
    openapi: bytes = b""


@dataclass(frozen=True, slots=True)
class MountedProject:
    """What a project's /api/<name>/ and /api/<name>/health handlers need."""

    spec: ProjectSpec[Any]
    app: ProjectApp
    health: Health


@describe("Service name, version and projects", tags=["service"])
async def root(service: Service, request: Request) -> Response:
    return json_response(
        {
            "service": SERVICE_NAME,
            "version": __version__,
            "sandbox": service.settings.sandbox,
            "projects": [
                {"name": s.name, "description": s.description, "version": s.version, "url": f"/api/{s.name}/"}
                for s in service.projects
            ],
        }
    )


@describe("Liveness: the process serves", tags=["probes"])
async def livez(service: Service, request: Request) -> Response:
    return json_response({"status": "ok"})


@describe(
    "Readiness: started, not draining, required dependencies up",
    tags=["probes"],
    responses={"200": "ready", "503": "not ready"},
)
async def readyz(service: Service, request: Request) -> Response:
    ready, reason = service.health.readiness()
    if ready:
        return json_response({"status": "ready"})
    return error_response(request.scope, 503, "not_ready", reason, headers={"Retry-After": "5"})


@describe(
    "Aggregated health of the service and every project",
    tags=["probes"],
    responses={"200": "pass or warn", "503": "fail"},
    media_type=HEALTH_JSON,
)
async def health_report(service: Service, request: Request) -> Response:
    status, body = await service.health.report()
    return Response(body, status_code=status, media_type=HEALTH_JSON, headers={"Cache-Control": "no-store"})


@describe(
    "Prometheus metrics (text or OpenMetrics by Accept)",
    tags=["observability"],
    responses={"200": "metrics", "401": "bearer token required"},
    media_type="text/plain",
)
async def metrics(service: Service, request: Request) -> Response:
    token = service.settings.metrics_bearer_token
    if token is not None and not bearer_matches(request.headers.get("authorization"), token):
        return error_response(
            request.scope,
            401,
            "unauthorized",
            "A bearer token is required.",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body, content_type = service.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})


@describe("This OpenAPI document", tags=["service"])
async def openapi(service: Service, request: Request) -> Response:
    return Response(service.openapi, media_type="application/json")


async def project_info(project: MountedProject, request: Request) -> Response:
    spec = project.spec
    body = {"name": spec.name, "description": spec.description, "version": spec.version, **project.app.info()}
    return json_response(body)


async def project_health(project: MountedProject, request: Request) -> Response:
    name = project.spec.name
    result = await project.health.run_check(name)
    body = {"status": result.status, "project": name, "checks": {name: [result.as_json()]}}
    return Response(orjson.dumps(body), status_code=503 if result.status == "fail" else 200, media_type=HEALTH_JSON)


def service_routes(service: Service) -> list[BaseRoute]:
    return [
        Route("/", bind(root, service)),
        Route("/livez", bind(livez, service)),
        Route("/readyz", bind(readyz, service)),
        Route("/health", bind(health_report, service)),
        Route("/metrics", bind(metrics, service)),
        Route("/openapi.json", bind(openapi, service)),
    ]


def project_mount(project: MountedProject) -> Mount:
    """/api/<name>/: the project's info and health, then its own routes."""
    name = project.spec.name
    # Described here, not on the functions: the summary and tag name the project.
    info = describe(f"{name}: project information", tags=[name])(bind(project_info, project))
    health = describe(
        f"{name}: project health", tags=[name], responses={"200": "pass or warn", "503": "fail"}, media_type=HEALTH_JSON
    )(bind(project_health, project))
    own = [Route("/", info, name=f"{name}:info"), Route("/health", health, name=f"{name}:health")]
    return Mount(f"/api/{name}", routes=[*own, *project.app.routes])
