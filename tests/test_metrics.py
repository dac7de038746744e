"""Request metrics over real HTTP: route templates, bounded labels, 404/405/413/499/500, formats."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from observability.metrics import Metrics
from service.app import create_app
from service.projects import REGISTRY
from service.settings import load_settings
from tests import demo_project
from tests.support import serve_in_thread, wait_until

PROJECTS = (*REGISTRY, demo_project.DEMO)


def make_app(env: dict[str, str] | None = None):
    settings = load_settings(env or {}, parsers={p.name: p.parse_settings for p in PROJECTS})
    return create_app(settings, projects=PROJECTS)


def sample(app, name: str, **labels: str) -> float:
    value = app.state.metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def count(app, method: str, route: str, status: int) -> float:
    # Recorded after the last byte is sent, so a client may see its response first: poll.
    labels = {"method": method, "route": route, "status": str(status)}
    return app.state.metrics.registry.get_sample_value("siteapi_http_requests_total", labels) or 0.0


@pytest.fixture(scope="module")
def served():
    app = make_app({"MAX_BODY_BYTES": "1024"})
    with serve_in_thread(app) as url:
        yield app, url


def test_route_template_not_raw_path(served) -> None:
    app, url = served
    httpx.get(url + "/api/demo/greet", params={"times": 2})
    assert wait_until(lambda: count(app, "GET", "/api/demo/greet", 200) >= 1, 3)
    assert (
        sample(app, "siteapi_http_request_duration_seconds_count", method="GET", route="/api/demo/greet", status="200")
        >= 1
    )
    assert sample(app, "siteapi_http_response_size_bytes_sum", method="GET", route="/api/demo/greet", status="200") > 0


def test_unmatched_404_405_413_are_counted(served) -> None:
    app, url = served
    before = count(app, "GET", "__unmatched__", 404)
    httpx.get(url + "/no/such/thing")
    httpx.get(url + "/another/one")
    assert wait_until(lambda: count(app, "GET", "__unmatched__", 404) == before + 2, 3)
    httpx.delete(url + "/api/demo/greet")
    assert wait_until(lambda: count(app, "DELETE", "/api/demo/greet", 405) >= 1, 3)
    r = httpx.post(url + "/api/demo/echo", content=b"z" * 5000)
    assert r.status_code == 413
    assert wait_until(lambda: count(app, "POST", "__unmatched__", 413) >= 1, 3)  # rejected before routing


def test_streamed_body_over_limit_is_413_on_the_route(served) -> None:
    app, url = served
    r = httpx.post(url + "/api/demo/echo", content=iter([b"a" * 800, b"b" * 800]))
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert wait_until(lambda: count(app, "POST", "/api/demo/echo", 413) >= 1, 3)


def test_unknown_methods_collapse_to_other(served) -> None:
    app, url = served
    # httptools itself rejects unknown tokens with 400; these WebDAV methods reach the app.
    for method in ("PROPFIND", "MKCOL", "LOCK"):
        httpx.request(method, url + "/api/demo/greet")
    assert wait_until(lambda: count(app, "_OTHER", "/api/demo/greet", 405) == 3, 3)


def test_unhandled_exception_is_500_counted_and_json(served) -> None:
    app, url = served
    r = httpx.get(url + "/api/demo/boom", headers={"X-Request-ID": "boom-1"})
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "message": "Internal server error.", "request_id": "boom-1"}
    assert r.headers["x-request-id"] == "boom-1"
    assert "secret internals" not in r.text
    assert wait_until(lambda: count(app, "GET", "/api/demo/boom", 500) >= 1, 3)


def test_client_disconnect_is_499(served) -> None:
    app, url = served
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /api/demo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + b"q" * 10)
        time.sleep(0.2)
    assert wait_until(lambda: count(app, "POST", "/api/demo/echo", 499) >= 1, 5)


def test_background_work_is_not_in_duration(served) -> None:
    app, url = served
    r = httpx.get(url + "/api/demo/background")
    assert r.status_code == 200
    labels = {"method": "GET", "route": "/api/demo/background", "status": "200"}
    # Recorded once the background task is done, but timed only to the last body byte.
    assert wait_until(lambda: sample(app, "siteapi_http_request_duration_seconds_count", **labels) == 1, 3)
    assert sample(app, "siteapi_http_request_duration_seconds_sum", **labels) < 0.5  # the task sleeps 1 s


def test_in_flight_gauge(served) -> None:
    app, url = served
    thread = threading.Thread(target=lambda: httpx.get(url + "/api/demo/slow", params={"s": 1}, timeout=5))
    thread.start()
    try:
        assert wait_until(lambda: sample(app, "siteapi_http_requests_in_progress") >= 1, 2)
    finally:
        thread.join()
    assert wait_until(lambda: sample(app, "siteapi_http_requests_in_progress") == 0, 2)


def test_labels_stay_bounded_under_junk(served) -> None:
    app, url = served
    httpx.get(url + "/warm-up-unmatched")
    with httpx.Client() as client:
        for i in range(300):
            client.request(("GET", "POST", "XYZ")[i % 3], f"{url}/junk/{i}/{'a' * (i % 50)}")
        before = app.state.metrics.http.series_count()
        for i in range(300, 600):
            client.request(("GET", "POST", "XYZ")[i % 3], f"{url}/junk/{i}?x={i}")
    assert app.state.metrics.http.series_count() == before


def test_build_info_and_default_collectors(served) -> None:
    _, url = served
    text = httpx.get(url + "/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"siteapi_build_info", "process_resident_memory_bytes", "python_info"} <= names
    assert 'siteapi_build_info{python_version="3.11' in text


def test_openmetrics_negotiated(served) -> None:
    _, url = served
    r = httpx.get(url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
    plain = httpx.get(url + "/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "# EOF" not in plain.text


def test_probes_and_metrics_excluded_by_default(served) -> None:
    app, url = served
    httpx.get(url + "/livez")
    httpx.get(url + "/metrics")
    assert count(app, "GET", "/livez", 200) == 0
    assert count(app, "GET", "/metrics", 200) == 0


def test_exclusions_are_configurable() -> None:
    app = make_app({"METRICS_EXCLUDE_PATHS": "/nothing"})
    with serve_in_thread(app) as url:
        httpx.get(url + "/livez")
    assert wait_until(lambda: count(app, "GET", "/livez", 200) == 1, 3)


def test_bearer_token_protects_metrics() -> None:
    token = "metrics-token-for-this-test-0123"
    app = make_app({"METRICS_BEARER_TOKEN": token})
    with serve_in_thread(app) as url:
        missing = httpx.get(url + "/metrics")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": token}).status_code == 401
        ok = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert token not in ok.text


def test_counter_read_at_scrape_time() -> None:
    # The API for hot-path counts: plain numbers owned by the caller, exposed as a counter.
    metrics = Metrics("9.9.9")
    counts = {("feed", "hit"): 0, ("feed", "miss"): 0}
    metrics.counter_from("demo_lookups", "Lookups.", ("resource", "result"), lambda: counts)
    counts["feed", "hit"] += 3
    text, _ = metrics.render(None)
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    family = families["siteapi_demo_lookups"]
    assert family.type == "counter"
    values = {(s.labels["resource"], s.labels["result"]): s.value for s in family.samples if s.name.endswith("_total")}
    assert values == {("feed", "hit"): 3.0, ("feed", "miss"): 0.0}
    counts["feed", "miss"] += 1  # read again at the next scrape
    assert 'siteapi_demo_lookups_total{resource="feed",result="miss"} 1.0' in metrics.render(None)[0].decode()
