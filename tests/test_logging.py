"""Logs: one JSON object per line, an access line per request, request ids, no secrets."""

from __future__ import annotations

import io
import re
import threading
import time
from datetime import datetime

import httpx
import orjson
import structlog

from observability.logging import LineSink, configure_logging, flush_logs, lines_dropped, request_id_var
from observability.redact import REDACTED, Redactor
from service.app import create_app
from service.settings import load_settings
from tests.support import ServiceProcess, configure_test_logging, wait_until

ACCESS_FIELDS = {
    "timestamp",
    "level",
    "event",
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "bytes",
    "client",
    "user_agent",
}


def access_lines(service: ServiceProcess) -> list[dict]:
    return [line for line in service.logs() if line.get("event") == "request"]


def test_every_line_is_json_with_an_access_line_per_request(service_factory) -> None:
    service = service_factory(env={"LOG_LEVEL": "info", "FORWARDED_ALLOW_IPS": "127.0.0.1"}).start()
    httpx.get(service.base_url + "/", headers={"X-Request-ID": "log-test-1", "User-Agent": "agent/1"})
    httpx.get(service.base_url + "/missing", headers={"X-Forwarded-For": "203.0.113.9"})
    httpx.get(service.base_url + "/livez")
    service.stop()
    raw = service.log_path.read_bytes().splitlines()
    assert raw, "no log output"
    for line in raw:
        assert isinstance(orjson.loads(line), dict)  # every line, uvicorn's included, is one JSON object
    lines = access_lines(service)
    assert len(lines) == 2  # /livez logs at debug, filtered out at info
    first, second = lines
    assert set(first) >= ACCESS_FIELDS
    assert first["request_id"] == "log-test-1"
    assert first["status"] == 200 and first["route"] == "/" and first["user_agent"] == "agent/1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["timestamp"])  # ISO 8601 UTC, ms
    assert abs(datetime.fromisoformat(first["timestamp"]).timestamp() - time.time()) < 60
    assert second["status"] == 404 and second["route"] == "__unmatched__"
    assert second["client"] == "203.0.113.9"  # real client from a trusted proxy's header
    uvicorn_lines = [line for line in service.logs() if line.get("logger", "").startswith("uvicorn")]
    assert uvicorn_lines and all("timestamp" in line and "level" in line for line in uvicorn_lines)


def test_untrusted_proxy_header_is_ignored(service_factory) -> None:
    service = service_factory(env={"LOG_LEVEL": "info", "FORWARDED_ALLOW_IPS": "10.9.9.9"}).start()
    httpx.get(service.base_url + "/", headers={"X-Forwarded-For": "203.0.113.9"})
    service.stop()
    assert access_lines(service)[0]["client"] == "127.0.0.1"


def test_probes_log_at_debug(service_factory) -> None:
    service = service_factory(env={"LOG_LEVEL": "debug"}).start()
    httpx.get(service.base_url + "/readyz")
    service.stop()
    probe = [line for line in access_lines(service) if line["path"] == "/readyz"]
    assert probe and probe[0]["level"] == "debug"


def test_secrets_in_a_request_never_reach_the_log(service_factory) -> None:
    service = service_factory(env={"LOG_LEVEL": "debug"}).start()
    secrets = {
        "access_token": "at-secret-111111",
        "refresh_token": "rt-secret-222222",
        "client_secret": "cs-secret-333333",
        "code": "code-secret-444444",
        "hub.verify_token": "vt-secret-555555",
    }
    httpx.get(
        service.base_url + "/api/strava-integration/nothing",
        params=secrets,
        headers={"Authorization": "Bearer bearer-secret-666666", "X-API-Key": "apikey-secret-777777"},
    )
    service.stop()
    text = service.raw_log()
    for value in (*secrets.values(), "bearer-secret-666666", "apikey-secret-777777"):
        assert value not in text
    assert "access_token=[REDACTED]" in text  # the query is still logged, minus the values


def test_rejected_request_id_is_neither_logged_nor_echoed(service_factory) -> None:
    service = service_factory(env={"LOG_LEVEL": "info"}).start()
    bad = "evil<script>" + "x" * 20
    r = httpx.get(service.base_url + "/", headers={"X-Request-ID": bad})
    assert r.headers["x-request-id"] != bad
    service.stop()
    assert "evil<script>" not in service.raw_log()


def test_console_format_for_local_development(service_factory) -> None:
    service = service_factory(env={"LOG_FORMAT": "console", "LOG_LEVEL": "info"}).start()
    httpx.get(service.base_url + "/")
    service.stop()
    text = service.raw_log()
    assert "\x1b[" in text  # colored
    assert "request" in text
    assert not text.lstrip().startswith("{")


def test_log_level_filters(service_factory) -> None:
    service = service_factory(env={"LOG_LEVEL": "warning"}).start()
    httpx.get(service.base_url + "/")
    httpx.get(service.base_url + "/nope")
    service.stop()
    assert access_lines(service) == []


# Unit level: the redaction processor and the pipeline on their own.


def test_redactor_removes_secret_keys_at_any_depth_and_query_values() -> None:
    redactor = Redactor(secrets=("known-secret-value",))
    event = {
        "event": "x",
        "headers": {"Authorization": "Bearer abc.def", "X-API-Key": "k1234567", "Accept": "json"},
        "access_token": "t1",
        "nested": [{"refresh_token": "t2", "client_secret": "t3"}],
        "url": "https://h/oauth/token?code=c0de&client_secret=s3cr3t&ok=1",
        "note": "prefix known-secret-value suffix",
        "auth": "Bearer zzz.yyy",
    }
    out = redactor(None, "info", event)
    assert out["headers"]["Authorization"] == REDACTED
    assert out["headers"]["X-API-Key"] == REDACTED
    assert out["headers"]["Accept"] == "json"
    assert out["access_token"] == REDACTED
    assert out["nested"][0] == {"refresh_token": REDACTED, "client_secret": REDACTED}
    assert "c0de" not in out["url"] and "s3cr3t" not in out["url"] and "ok=1" in out["url"]
    assert out["note"] == f"prefix {REDACTED} suffix"
    assert "zzz" not in out["auth"]


def test_access_line_target_and_agent_are_scrubbed_before_they_are_cut() -> None:
    redactor = Redactor(secrets=("known-secret-value",))
    # The known secret straddles the cut: cutting first would leave "known-secr" in the line.
    path = "/p/" + "x" * 20
    cut = len(path) + 1 + 5
    target = redactor.scrub_target(path, b"q=ab known-secret-value&access_token=tok123", cut)
    assert target == f"{path}?q=ab "
    assert "known" not in redactor.scrub_target(path, b"q=ab known-secret-value", 200)
    assert "tok123" not in redactor.scrub_target("/cb", b"access_token=tok123&x=1", 200)
    assert redactor.scrub_header(b"agent Bearer abc.def", 200) == f"agent Bearer {REDACTED}"
    assert redactor.scrub_header(b"a" * 600, 512) == "a" * 512


def test_access_line_memo_forgets_when_a_secret_is_learned() -> None:
    redactor = Redactor()
    assert redactor.scrub_target("/cb", b"x=learned-later-1", 200) == "/cb?x=learned-later-1"
    assert redactor.scrub_header(b"ua learned-later-1", 200) == "ua learned-later-1"
    redactor.add_secret("learned-later-1")
    assert redactor.scrub_target("/cb", b"x=learned-later-1", 200) == f"/cb?x={REDACTED}"
    assert redactor.scrub_header(b"ua learned-later-1", 200) == f"ua {REDACTED}"


def test_access_line_memo_stays_bounded() -> None:
    redactor = Redactor()
    for i in range(5000):
        redactor.scrub_target(f"/p/{i}", b"", 200)
        redactor.scrub_header(f"agent/{i}".encode(), 200)
    redactor.scrub_target("/long" + "y" * 4000, b"", 200)  # too long to remember
    assert len(redactor._memo) <= 1024
    assert not any(len(key[0]) > 600 for key in redactor._memo if isinstance(key, tuple))


def test_pipeline_renders_one_json_line_with_request_id_and_redaction() -> None:
    stream = io.BytesIO()
    redactor = configure_logging("info", "json", stream=stream)
    try:
        _log_and_check(stream, redactor)
    finally:
        configure_test_logging()  # back to the session's log file


def _log_and_check(stream: io.BytesIO, redactor: Redactor) -> None:
    redactor.add_secret("learned-at-runtime-123")
    token = request_id_var.set("rid-xyz")
    try:
        structlog.get_logger("t").info("hello", refresh_token="rt", detail="learned-at-runtime-123 seen")
        structlog.get_logger("t").debug("filtered out")
    finally:
        request_id_var.reset(token)
    assert wait_until(lambda: stream.getvalue().endswith(b"\n"), 2)
    time.sleep(0.05)
    flush_logs()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert line["event"] == "hello" and line["request_id"] == "rid-xyz" and line["level"] == "info"
    assert line["refresh_token"] == REDACTED
    assert "learned-at-runtime-123" not in lines[0].decode()


class _StuckReader(io.RawIOBase):
    """A log reader that has stopped reading: every write blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.release.wait(10)
        return len(data)


def test_lines_the_sink_drops_are_a_metric(monkeypatch) -> None:
    monkeypatch.setattr(LineSink, "MAX_QUEUED", 5)
    reader = _StuckReader()
    configure_logging("info", "json", stream=reader)  # type: ignore[arg-type]
    try:
        registry = create_app(load_settings({})).state.metrics.registry
        before = registry.get_sample_value("siteapi_log_lines_dropped_total")
        assert before is not None and before == lines_dropped()
        for i in range(50):
            structlog.get_logger("t").info("flood", i=i)
        # The writer takes at most one batch of 5 before it blocks, and 5 more wait in the queue.
        after = registry.get_sample_value("siteapi_log_lines_dropped_total")
        assert after is not None and after - before >= 40
    finally:
        reader.release.set()
        configure_test_logging()
    # A counter: the old sink's drops are still counted after logging is configured again.
    assert registry.get_sample_value("siteapi_log_lines_dropped_total") >= after
