"""/openapi.json describes exactly the routes the router serves, with their methods and params."""

from __future__ import annotations

import httpx
from starlette.routing import Route

from service.app import create_app
from service.openapi import iter_routes
from service.projects import REGISTRY
from service.settings import load_settings
from tests import demo_project
from tests.support import serve_in_thread

PROJECTS = (*REGISTRY, demo_project.DEMO)


def router_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for path, route in iter_routes(app.routes):
        assert isinstance(route, Route)
        for method in (route.methods or {"GET"}) - {"HEAD"}:
            ops.add((path, method.lower()))
    return ops


def served_spec(app) -> dict:
    with serve_in_thread(app) as url:
        return httpx.get(url + "/openapi.json").json()


def test_spec_matches_router_exactly() -> None:
    app = create_app(load_settings({}, parsers={p.name: p.parse_settings for p in PROJECTS}), projects=PROJECTS)
    spec = served_spec(app)
    spec_ops = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert spec_ops == router_operations(app)
    assert ("/api/demo/greet", "get") in spec_ops  # a project's routes appear with its mount prefix
    assert ("/api/strava-integration/webhook", "post") in spec_ops


def test_operations_are_complete() -> None:
    app = create_app(load_settings({}, parsers={p.name: p.parse_settings for p in REGISTRY}))
    spec = served_spec(app)
    ids = set()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op["summary"], (path, method)
            assert op["responses"], (path, method)
            assert op["operationId"] not in ids
            ids.add(op["operationId"])
            for param in op["parameters"]:
                assert {"name", "in", "schema"} <= set(param)
                if param["in"] == "path":
                    assert "{" + param["name"] + "}" in path
    feed = spec["paths"]["/api/strava-integration/feed"]["get"]
    limit = next(p for p in feed["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1 and limit["schema"]["maximum"] == 200
    detail = spec["paths"]["/api/strava-integration/activities/{activity_id}"]["get"]
    assert detail["parameters"][-1]["schema"]["type"] == "integer"
    admin = spec["paths"]["/api/strava-integration/status"]["get"]
    assert any(p["name"] == "X-API-Key" and p["in"] == "header" for p in admin["parameters"])
    assert spec["components"]["schemas"]["Error"]["required"] == ["error", "message", "request_id"]
