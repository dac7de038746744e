"""When Strava misbehaves: faults, its rate limit, and a crowd on a cold cache.

Faults and budget run the app in-process on a fake clock shared with the simulator, so TTLs and
rate-limit windows pass without waiting. The crowd runs against `python -m service`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.projects.strava_integration.budget import window_end
from tests.figures import record
from tests.strava_harness import (
    ADMIN,
    LIST_CALL,
    PREFIX,
    TOKEN_CALL,
    Sim,
    Stack,
    assert_error,
    running_inprocess,
    running_simulator,
    running_stack,
    wait_for_calls,
)
from tests.strava_upstream import T0, FakeClock
from tests.support import wait_until

TTL = 5
STALE = 600
DEADLINE_S = 1.0  # STRAVA_REQUEST_TIMEOUT_SECONDS here
ENV = {
    "STRAVA_CACHE_TTL_SECONDS": str(TTL),
    "STRAVA_CACHE_STALE_SECONDS": str(STALE),
    "STRAVA_REQUEST_TIMEOUT_SECONDS": str(DEADLINE_S),
    "STRAVA_CONNECT_TIMEOUT_SECONDS": "0.5",
    "STRAVA_BUDGET_RESERVE": "2",
}
AUTH_START = "/api/strava-integration/auth/start"
# Simulator fault -> what a visitor gets on a cold cache.
FAULTS = {
    "http_500": (502, "strava_unavailable"),
    "http_502": (502, "strava_unavailable"),
    "http_503": (503, "strava_unavailable"),
    "http_504": (502, "strava_unavailable"),
    "timeout": (504, "strava_timeout"),
    "malformed_json": (502, "strava_bad_response"),
    "reset": (502, "strava_unavailable"),
}
survived: dict[str, float] = {}  # fault -> worst latency of a request made while it was on


@pytest.fixture(scope="module")
def module_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def simulator(module_clock: FakeClock) -> Iterator[Sim]:
    with running_simulator(module_clock) as sim:
        yield sim
    if survived:
        record(
            "upstream faults",
            faults_survived=len(survived),
            worst_latency_s=round(max(survived.values()), 3),
            deadline_s=DEADLINE_S,
            latency_s={k: round(v, 3) for k, v in survived.items()},
        )


@pytest.fixture
def clock(module_clock: FakeClock, simulator: Sim) -> FakeClock:
    module_clock.now = T0
    simulator.state.reset()  # fresh tokens, limits, usage, faults and counters for every test
    return module_clock


@pytest.fixture
def stack(simulator: Sim, clock: FakeClock, tmp_path: Path) -> Iterator[Stack]:
    with running_inprocess(simulator, tmp_path, clock, **ENV) as running:
        yield running


def timed_feed(stack: Stack, fault: str) -> httpx.Response:
    started = time.perf_counter()
    response = stack.feed()
    elapsed = time.perf_counter() - started
    survived[fault] = max(survived.get(fault, 0.0), elapsed)  # a figure for the report, not a check
    assert response.status_code != 500, response.text
    return response


def fresh_after_ttl(stack: Stack, clock: FakeClock) -> dict[str, Any]:
    """Let the TTL pass; the next answers are stale until the background refresh lands, then fresh."""
    clock.advance(TTL + 1)
    for _ in range(50):
        body = stack.feed().json()
        if body["stale"] is False:
            return body
        time.sleep(0.05)
    raise AssertionError("the service did not recover on its own")


# ---- faults ----


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_is_survived_warm_or_cold_and_recovered_from(
    stack: Stack, simulator: Sim, clock: FakeClock, fault: str
) -> None:
    status, code = FAULTS[fault]
    options = {"delay_s": 5.0} if fault == "timeout" else {}

    # Cold: nothing cached, so a clear error, fast, never a 500.
    simulator.fault(fault, **options)
    body = assert_error(timed_feed(stack, fault), status, code)
    assert "strava" in body["message"].lower()
    assert stack.get("/readyz").status_code == 200
    check = stack.health()
    assert check["status"] == "warn" and code in check["output"], check
    cold_error = stack.status()["last_upstream_error"]
    simulator.fault("none")
    recovered = stack.feed()
    assert recovered.status_code == 200 and recovered.json()["stale"] is False
    cached = recovered.json()["activities"]

    # Warm: once the TTL has passed, the cached list is served, marked stale.
    simulator.fault(fault, **options)
    lists = simulator.calls(LIST_CALL)
    clock.advance(TTL + 1)
    stale = timed_feed(stack, fault)
    assert stale.status_code == 200
    assert stale.json()["stale"] is True and stale.json()["activities"] == cached
    wait_for_calls(simulator, LIST_CALL, lists + 1)  # the background refresh tried ...
    assert wait_until(lambda: stack.status()["last_upstream_error"] != cold_error, 2 * DEADLINE_S + 1)
    assert stack.status()["last_upstream_error"]["code"] == code
    again = timed_feed(stack, fault)  # ... failed, and the old list is still what we serve
    assert again.status_code == 200 and again.json()["stale"] is True
    assert stack.get("/readyz").status_code == 200
    assert stack.health()["status"] == "warn"

    simulator.fault("none")
    body = fresh_after_ttl(stack, clock)
    assert body["activities"] == cached
    assert stack.health()["status"] == "pass"


def test_stale_data_is_not_served_past_the_stale_window(stack: Stack, simulator: Sim, clock: FakeClock) -> None:
    assert stack.feed().json()["stale"] is False
    simulator.fault("http_502")
    clock.advance(TTL + STALE - 10)  # inside the window: served, stale
    assert stack.feed().json()["stale"] is True
    wait_for_calls(simulator, LIST_CALL, 2)
    clock.advance(20)  # past it: too old to show, even with Strava down
    assert_error(stack.feed(), 502, "strava_unavailable")
    simulator.fault("none")
    assert stack.feed().json()["stale"] is False


def test_a_429_is_survived(stack: Stack, simulator: Sim, clock: FakeClock) -> None:
    assert stack.feed().status_code == 200
    simulator.control("usage", {"read_usage_15min": simulator.state.config.read_limit_15min})
    until = window_end(clock(), "15min")

    # Cold (stats were never fetched): 503 with the seconds until Strava's window rolls over.
    started = time.perf_counter()
    cold = stack.api("/stats")
    survived["429"] = time.perf_counter() - started
    assert_error(cold, 503, "strava_rate_limited")
    assert cold.headers["retry-after"] == str(math.ceil(until - clock()))
    # Warm: stale data.
    clock.advance(TTL + 1)
    warm = timed_feed(stack, "429")
    assert warm.status_code == 200 and warm.json()["stale"] is True
    assert stack.get("/readyz").status_code == 200
    assert stack.health()["status"] == "warn"

    clock.now = until + 1  # the window rolled over
    assert fresh_after_ttl(stack, clock)["stale"] is False
    assert stack.api("/stats").status_code == 200


def test_a_revoked_grant_purges_the_data_and_health_says_where_to_reconnect(
    stack: Stack, simulator: Sim, clock: FakeClock
) -> None:
    assert stack.feed().status_code == 200
    simulator.control("revoke")  # the athlete revoked access on strava.com; no webhook reached us

    started = time.perf_counter()
    cold = stack.api("/stats")
    survived["revoked_refresh_token"] = time.perf_counter() - started
    body = assert_error(cold, 503, "strava_auth_rejected")
    assert AUTH_START in body["message"]
    # Strava refused the grant: what was cached of the owner's is not served any more, stale or not.
    body = assert_error(stack.feed(), 503, "strava_not_configured")
    assert AUTH_START in body["message"]
    assert stack.status()["cache"]["entries"] == 0

    health = stack.get("/health")
    check = health.json()["checks"]["strava-integration"][0]
    assert health.status_code == 503 and check["status"] == "fail"
    assert AUTH_START in check["output"]
    assert stack.get("/readyz").status_code == 200
    refreshes = simulator.calls(TOKEN_CALL)
    calls = simulator.stats()["total_api_calls"]
    for _ in range(3):
        clock.advance(TTL + 1)
        assert_error(stack.feed(), 503, "strava_not_configured")
    time.sleep(0.1)
    assert simulator.calls(TOKEN_CALL) == refreshes  # the dead token is never presented again
    assert simulator.stats()["total_api_calls"] == calls


# ---- the rate-limit budget ----


def test_calls_stop_at_the_budget_and_resume_in_the_next_window(stack: Stack, simulator: Sim, clock: FakeClock) -> None:
    limit, reserve = 15, 2
    simulator.control("limits", {"read_limit_15min": limit})
    first = stack.feed().json()
    assert first["stale"] is False

    # Every TTL a visitor comes by and a refresh goes out, until only the reserve is left.
    quiet = 0
    for _ in range(limit + 5):
        before = simulator.calls(LIST_CALL)
        clock.advance(TTL + 1)
        response = stack.feed()
        assert response.status_code == 200
        assert response.json()["stale"] is True and response.json()["activities"] == first["activities"]
        if before < limit - reserve:
            wait_for_calls(simulator, LIST_CALL, before + 1)
            # ...and stored: else it could land after the next clock step and look fresh there.
            assert wait_until(lambda: stack.status()["cache"]["ages_s"].get("activities") == 0, 5)
        else:
            time.sleep(0.1)
            assert simulator.calls(LIST_CALL) == before
            quiet += 1
    assert quiet >= 3
    stats = simulator.stats()
    assert stats["calls"][LIST_CALL] == stats["total_api_calls"] == limit - reserve
    assert stats["usage"]["read_usage_15min"] == limit - reserve

    until = window_end(clock(), "15min")
    retry_after = str(math.ceil(until - clock()))
    status = stack.status()["budget"]
    assert status["blocked"] is True and status["retry_after"] == int(retry_after)
    check = stack.health()
    assert check["status"] == "warn" and "budget" in check["output"]
    # Nothing cached for these: 503 with Retry-After, and no call.
    public_id = first["activities"][3]["id"]
    for path in ("/stats", f"/activities/{public_id}"):
        cold = stack.api(path)
        assert_error(cold, 503, "strava_budget_exhausted")
        assert cold.headers["retry-after"] == retry_after
    refresh = stack.post(PREFIX + "/refresh", headers=ADMIN)
    assert_error(refresh, 503, "strava_budget_exhausted")
    assert refresh.headers["retry-after"] == retry_after
    assert simulator.stats()["total_api_calls"] == limit - reserve

    clock.now = until + 1  # the next quarter hour: calls resume
    assert fresh_after_ttl(stack, clock)["stale"] is False
    assert stack.api("/stats").status_code == 200
    assert stack.health()["status"] == "pass"


def test_after_a_429_no_call_goes_out_until_the_window_resets(stack: Stack, simulator: Sim, clock: FakeClock) -> None:
    assert stack.feed().status_code == 200
    limit = simulator.state.config.read_limit_15min
    simulator.control("usage", {"read_usage_15min": limit})  # someone else spent it: the next call gets 429
    clock.advance(TTL + 1)
    assert stack.feed().json()["stale"] is True
    calls = wait_for_calls(simulator, LIST_CALL, 2)
    assert wait_until(lambda: stack.status()["budget"]["blocked"], 2)
    assert "429" in stack.status()["budget"]["reason"]

    simulator.control("usage", {"read_usage_15min": 0, "usage_15min": 0})  # Strava would take calls again
    for _ in range(5):
        clock.advance(TTL + 1)
        assert stack.feed().json()["stale"] is True
    time.sleep(0.1)
    assert simulator.calls(LIST_CALL) == calls  # but we wait for the window, as Strava asked

    clock.now = window_end(clock(), "15min") + 1
    assert fresh_after_ttl(stack, clock)["stale"] is False
    assert simulator.calls(LIST_CALL) == calls + 1


# ---- single-flight ----


async def test_fifty_concurrent_requests_on_a_cold_cache_make_one_upstream_call(tmp_path: Path) -> None:
    with running_simulator() as sim, running_stack(tmp_path, sim=sim) as stack:
        url = stack.base_url + PREFIX + "/feed"
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            responses = await asyncio.gather(*(client.get(url) for _ in range(50)))
        assert [r.status_code for r in responses] == [200] * 50
        assert len({r.content for r in responses}) == 1
        stack.seen.append(responses[0].text)
        stats = sim.stats()
        assert stats["calls"][LIST_CALL] == 1
        assert stats["calls"].get(TOKEN_CALL, 0) <= 1
        assert stats["total_api_calls"] == 1
