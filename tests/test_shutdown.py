"""Graceful shutdown: SIGTERM flips readiness, in-flight requests finish, the process exits 0."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx

from service.launcher import _accept_queue_length
from tests.support import wait_until


def test_sigterm_during_a_burst_drains_without_failures(service_factory) -> None:
    service = service_factory(
        env={"SHUTDOWN_DRAIN_SECONDS": "1.5", "SHUTDOWN_TIMEOUT_SECONDS": "10", "LOG_LEVEL": "info"},
        module="tests.run_with_demo",
    ).start()
    assert httpx.get(service.base_url + "/readyz").status_code == 200

    results: list[int | str] = []
    lock = threading.Lock()

    def slow_request() -> None:
        try:
            status: int | str = httpx.get(
                service.base_url + "/api/demo/slow", params={"s": 1.0}, timeout=10
            ).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        with lock:
            results.append(status)

    threads = [threading.Thread(target=slow_request) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # all twenty are in flight now
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)

    # During the drain the service still answers, but says it is not ready.
    assert wait_until(lambda: httpx.get(service.base_url + "/readyz").status_code == 503, 1.0)
    ready = httpx.get(service.base_url + "/readyz")
    assert ready.json()["error"] == "not_ready" and ready.json()["message"] == "draining"
    assert httpx.get(service.base_url + "/livez").status_code == 200

    for t in threads:
        t.join(15)
    assert results == [200] * 20  # zero failed in-flight requests
    service.proc.wait(15)
    assert service.proc.returncode == 0
    events = [line.get("event") for line in service.logs()]
    assert "draining" in events and "service_stopped" in events


def test_second_signal_skips_the_drain(service_factory) -> None:
    service = service_factory(env={"SHUTDOWN_DRAIN_SECONDS": "30"}).start()
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: httpx.get(service.base_url + "/readyz").status_code == 503, 2)
    service.proc.send_signal(signal.SIGTERM)
    service.proc.wait(10)
    assert service.proc.returncode == 0
    ended = [line for line in service.logs() if line.get("event") == "drain_ended"]
    assert len(ended) == 1 and ended[0]["cut_short"] is True  # did not sit out the 30 s drain
    assert ended[0]["seconds_left"] > 0


def test_accept_queue_length_is_read_from_the_kernel() -> None:
    # Shutdown waits on it before closing the listener: closing resets whatever is still queued.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        assert _accept_queue_length(listener) == 0
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            assert wait_until(lambda: _accept_queue_length(listener) == 3, 2)
            accepted, _ = listener.accept()
            accepted.close()
            assert _accept_queue_length(listener) == 2
        finally:
            for client in clients:
                client.close()
    with socket.socket(socket.AF_UNIX) as not_tcp:
        assert _accept_queue_length(not_tcp) == 0
