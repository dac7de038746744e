"""The service over real HTTP, started exactly as the operator starts it: `python -m service`."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ServiceProcess

SECURITY = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    started = time.monotonic()
    with ServiceProcess(env={"MAX_BODY_BYTES": "2048"}) as svc:
        # Reported, not asserted: timing belongs to bench/, not to the test suite.
        print(f"\nstart-up to first /livez answer: {time.monotonic() - started:.2f} s")
        yield svc


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) >= {"error", "message", "request_id"}
    assert body["error"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    return body


def test_root_lists_service_and_projects(service: ServiceProcess) -> None:
    r = httpx.get(service.base_url + "/")
    assert r.status_code == 200
    body = r.json()
    assert body["service"] == "siteapi"
    assert body["version"]
    assert {"name": "strava-integration", "url": "/api/strava-integration/"}.items() <= body["projects"][0].items()


def test_project_info_and_health(service: ServiceProcess) -> None:
    info = httpx.get(service.base_url + "/api/strava-integration/")
    assert info.status_code == 200
    assert info.json()["name"] == "strava-integration"
    health = httpx.get(service.base_url + "/api/strava-integration/health")
    assert health.status_code == 200  # unconfigured is a warning, not a failure
    assert health.headers["content-type"] == "application/health+json"
    assert health.json()["status"] == "warn"
    assert "not configured" in health.json()["checks"]["strava-integration"][0]["output"]


def test_security_headers_on_success_and_errors(service: ServiceProcess) -> None:
    for path in ("/", "/does-not-exist", "/openapi.json"):
        r = httpx.get(service.base_url + path)
        for name, value in SECURITY.items():
            assert r.headers[name] == value, (path, name)


def test_json_404(service: ServiceProcess) -> None:
    assert_error(httpx.get(service.base_url + "/nope/nothing"), 404, "not_found")
    assert_error(httpx.get(service.base_url + "/api/strava-integration/nothing-here"), 404, "not_found")


def test_json_405_with_allow(service: ServiceProcess) -> None:
    r = httpx.delete(service.base_url + "/livez")
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


def test_json_413_declared_length(service: ServiceProcess) -> None:
    r = httpx.post(service.base_url + "/", content=b"x" * 4096)
    assert_error(r, 413, "payload_too_large")


def test_json_413_chunked_body(service: ServiceProcess) -> None:
    # No Content-Length: the limit is enforced while the body streams.
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 1024

    r = httpx.post(service.base_url + "/api/strava-integration/webhook", content=chunks())
    assert_error(r, 413, "payload_too_large")


def test_openapi_served(service: ServiceProcess) -> None:
    r = httpx.get(service.base_url + "/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/strava-integration/health" in spec["paths"]
    assert "/livez" in spec["paths"]


def test_request_id_echoed_when_valid_and_replaced_when_not(service: ServiceProcess) -> None:
    good = httpx.get(service.base_url + "/", headers={"X-Request-ID": "abc-123_x.y"})
    assert good.headers["x-request-id"] == "abc-123_x.y"
    for bad in ("has space", "x" * 129, "semi;colon", "ünïcode"):
        r = httpx.get(service.base_url + "/", headers={b"X-Request-ID": bad.encode()})
        assert r.headers["x-request-id"] != bad
        assert len(r.headers["x-request-id"]) == 32
    err = httpx.get(service.base_url + "/missing", headers={"X-Request-ID": "trace-42"})
    assert err.json()["request_id"] == "trace-42"


def test_head_and_malformed_request_do_not_break_service(service: ServiceProcess) -> None:
    assert httpx.head(service.base_url + "/").status_code == 200
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        reply = s.recv(1024)
    assert reply.startswith(b"HTTP/1.1 400")
    assert httpx.get(service.base_url + "/livez").status_code == 200
