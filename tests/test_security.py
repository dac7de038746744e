"""Security defaults: CORS allow-list, admin key checks, readiness of required dependencies."""

from __future__ import annotations

import httpx
import pytest
from starlette.requests import Request

from service.app import create_app
from service.errors import ApiError
from service.projects import REGISTRY
from service.security import require_api_key, secret_matches
from service.settings import load_settings
from tests import demo_project
from tests.support import serve_in_thread

PROJECTS = (*REGISTRY, demo_project.DEMO)


def app_with(env: dict[str, str]):
    return create_app(load_settings(env, parsers={p.name: p.parse_settings for p in PROJECTS}), projects=PROJECTS)


def test_cors_allows_only_listed_origins() -> None:
    with serve_in_thread(app_with({"CORS_ALLOW_ORIGINS": "https://site.test"})) as url:
        ok = httpx.get(url + "/api/demo/greet", headers={"Origin": "https://site.test"})
        assert ok.headers["access-control-allow-origin"] == "https://site.test"
        assert "etag" in ok.headers["access-control-expose-headers"].lower()
        other = httpx.get(url + "/api/demo/greet", headers={"Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers
        preflight = httpx.options(
            url + "/api/demo/greet",
            headers={"Origin": "https://site.test", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://site.test"
        assert preflight.headers["x-content-type-options"] == "nosniff"  # security headers on preflights too


def test_no_cors_headers_without_an_allow_list() -> None:
    with serve_in_thread(app_with({})) as url:
        r = httpx.get(url + "/api/demo/greet", headers={"Origin": "https://site.test"})
        assert "access-control-allow-origin" not in r.headers


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


def test_api_key_helper_401_403_and_ok() -> None:
    key = "admin-key-0123456789abcdef"
    with pytest.raises(ApiError) as missing:
        require_api_key(_request({}), key)
    assert missing.value.status == 401
    with pytest.raises(ApiError) as wrong:
        require_api_key(_request({"X-API-Key": "nope"}), key)
    assert wrong.value.status == 403
    assert key not in wrong.value.message
    require_api_key(_request({"X-API-Key": key}), key)  # no exception
    with pytest.raises(ApiError) as disabled:
        require_api_key(_request({"X-API-Key": key}), None)
    assert disabled.value.status == 503


def test_secret_matches_is_exact() -> None:
    assert secret_matches("abc", "abc")
    assert not secret_matches("abcd", "abc")
    assert not secret_matches("ab", "abc")
    assert not secret_matches(None, "abc")
    assert not secret_matches("x" * 10_000, "abc")


def test_readyz_follows_required_dependencies() -> None:
    with serve_in_thread(app_with({})) as url:
        assert httpx.get(url + "/readyz").status_code == 200
        demo_project.STATES[-1]["ready"] = False
        down = httpx.get(url + "/readyz")
        assert down.status_code == 503
        assert down.json()["error"] == "not_ready" and down.json()["message"] == "demo not ready"
        assert httpx.get(url + "/livez").status_code == 200  # liveness never checks dependencies
        demo_project.STATES[-1]["ready"] = True
        assert httpx.get(url + "/readyz").status_code == 200


def test_health_report_shape() -> None:
    with serve_in_thread(app_with({})) as url:
        r = httpx.get(url + "/health")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/health+json"
        body = r.json()
        assert body["status"] in ("pass", "warn")
        assert body["releaseId"] and body["version"]
        for name in ("demo", "strava-integration", "service:readiness"):
            check = body["checks"][name][0]
            assert check["status"] in ("pass", "warn", "fail") and check["time"].endswith("Z")
        assert body["checks"]["strava-integration"][0]["status"] == "warn"  # unconfigured: warn, not fail
