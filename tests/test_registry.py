"""Projects: a test-only project mounts, serves, reports health and runs its lifespan hooks."""

from __future__ import annotations

import httpx

from service.app import create_app
from service.projects import REGISTRY
from service.settings import load_settings
from tests import demo_project
from tests.support import serve_in_thread


def demo_app(env: dict[str, str] | None = None):
    projects = (*REGISTRY, demo_project.DEMO)  # the one registry line a new project needs
    settings = load_settings(env or {}, parsers={p.name: p.parse_settings for p in projects})
    return create_app(settings, projects=projects)


def test_new_project_is_mounted_with_info_health_and_routes() -> None:
    with serve_in_thread(demo_app({"DEMO_GREETING": "hi"})) as url:
        root = httpx.get(url + "/").json()
        assert [p["name"] for p in root["projects"]] == ["strava-integration", "demo"]
        assert root["projects"][1]["url"] == "/api/demo/"

        info = httpx.get(url + "/api/demo/")
        assert info.status_code == 200
        assert info.json() == {
            "name": "demo",
            "description": "Test-only demo project.",
            "version": "0.0.1",
            "greeting": "hi",
        }

        health = httpx.get(url + "/api/demo/health")
        assert health.status_code == 200
        assert health.headers["content-type"] == "application/health+json"
        assert health.json()["checks"]["demo"][0]["status"] == "pass"
        assert health.json()["checks"]["demo"][0]["observedValue"] is True  # lifespan ran first

        assert httpx.get(url + "/api/demo/greet", params={"times": 2}).json() == {"greeting": "hi hi"}
    assert demo_project.STATES[-1]["stopped"] is True  # stop hook ran at shutdown


def test_failing_project_health_fails_aggregate_health() -> None:
    app = demo_app()
    with serve_in_thread(app) as url:
        demo_project.STATES[-1]["healthy"] = "fail"
        project = httpx.get(url + "/api/demo/health")
        assert project.status_code == 503
        report = httpx.get(url + "/health")
        assert report.status_code == 503
        assert report.json()["status"] == "fail"
        assert report.json()["checks"]["demo"][0]["status"] == "fail"


def test_projects_can_be_disabled_by_configuration() -> None:
    with serve_in_thread(demo_app({"PROJECTS": "demo"})) as url:
        assert [p["name"] for p in httpx.get(url + "/").json()["projects"]] == ["demo"]
        assert httpx.get(url + "/api/strava-integration/").status_code == 404


def test_project_metrics_register_on_the_apps_own_registry() -> None:
    app = demo_app()
    with serve_in_thread(app) as url:
        httpx.get(url + "/api/demo/greet")
    registry = app.state.metrics.registry
    assert registry.get_sample_value("siteapi_demo_hits_total", {"kind": "greet"}) == 1.0
    # A second app gets a fresh registry: tests and apps never share counters.
    assert demo_app().state.metrics.registry.get_sample_value("siteapi_demo_hits_total", {"kind": "greet"}) is None
