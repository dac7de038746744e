"""The service's own handlers (service/routes.py), each called alone: no server, no app factory.

A handler is a function of one small object and a request, so a test builds the object and
calls it, directly or through a one-route app on httpx's `ASGITransport`. The end-to-end
checks of the same routes are in test_app, test_security and test_metrics.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from observability.health import CheckResult, Health
from observability.metrics import Metrics
from service.registry import ProjectApp, ProjectSpec
from service.routes import MountedProject, Service, project_health, project_info, readyz, root
from service.routing import bind
from service.settings import Settings

SPEC: ProjectSpec[None] = ProjectSpec(
    "demo", "A demo.", "0.1.0", lambda env, settings: None, lambda ctx: ProjectApp([], _ok)
)


async def _ok() -> CheckResult:
    return CheckResult("pass", observed_value=1)


def service(**settings: Any) -> Service:
    return Service(replace(Settings(), **settings), Health("siteapi", "9.9.9"), Metrics("9.9.9"), [SPEC])


def request(path: str = "/") -> Request:
    return Request({"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [], "state": {}})


async def test_readyz_is_503_with_retry_after_until_started_and_while_draining() -> None:
    svc = service()
    starting = await readyz(svc, request())
    assert starting.status_code == 503 and starting.headers["retry-after"] == "5"
    assert orjson.loads(starting.body)["error"] == "not_ready"
    svc.health.started = True
    assert (await readyz(svc, request())).status_code == 200
    svc.health.draining = True
    assert orjson.loads((await readyz(svc, request())).body)["message"] == "draining"


async def test_root_lists_the_enabled_projects() -> None:
    body = orjson.loads((await root(service(sandbox=True), request())).body)
    assert body["sandbox"] is True
    assert body["projects"] == [{"name": "demo", "description": "A demo.", "version": "0.1.0", "url": "/api/demo/"}]


async def test_project_info_and_health_through_a_one_route_app() -> None:
    health = Health("siteapi", "9.9.9")
    health.add_check("demo", _ok)
    project = MountedProject(SPEC, ProjectApp([], _ok, info=lambda: {"extra": 1}), health)
    app = Starlette(routes=[Route("/", bind(project_info, project)), Route("/health", bind(project_health, project))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        info = await client.get("/")
        assert info.json() == {"name": "demo", "description": "A demo.", "version": "0.1.0", "extra": 1}
        report = await client.get("/health")
        assert report.headers["content-type"] == "application/health+json"
        assert report.json()["checks"]["demo"][0]["observedValue"] == 1


def test_bind_keeps_the_handlers_name_and_openapi_description() -> None:
    endpoint = bind(readyz, service())
    assert endpoint.__name__ == "readyz"
    assert endpoint.__openapi__.summary.startswith("Readiness")  # type: ignore[attr-defined]
