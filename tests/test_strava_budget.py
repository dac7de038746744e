"""Budget: rate-limit headers in, refusals out, and never a sleep. Unit tests, then the real simulator."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.projects.strava_integration.budget import Budget, window_end
from service.projects.strava_integration.client import StravaClient
from service.projects.strava_integration.errors import BudgetExhausted, RateLimited
from service.projects.strava_integration.simulator import SimulatorState
from tests.strava_upstream import T0, FakeClock, Harness, strava_settings

NEXT_QUARTER = 1714558500.0  # 2024-05-01T10:15:00Z
NEXT_MIDNIGHT = 1714608000.0  # 2024-05-02T00:00:00Z


def headers(usage: tuple[int, int], limit: tuple[int, int] = (200, 2000), read: tuple[int, int] | None = None):
    read_usage = read or (0, 0)
    return httpx.Headers(
        {
            "X-RateLimit-Limit": f"{limit[0]},{limit[1]}",
            "X-RateLimit-Usage": f"{usage[0]},{usage[1]}",
            "X-ReadRateLimit-Limit": f"{limit[0] // 2},{limit[1] // 2}",
            "X-ReadRateLimit-Usage": f"{read_usage[0]},{read_usage[1]}",
        }
    )


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def budget(harness: Harness) -> Budget:
    return Budget(10, harness.strava, FakeClock())


def test_window_ends_are_quarter_hours_and_utc_midnight() -> None:
    assert window_end(T0, "15min") == NEXT_QUARTER
    assert window_end(T0, "day") == NEXT_MIDNIGHT
    assert window_end(NEXT_QUARTER, "15min") == NEXT_QUARTER + 900  # a boundary belongs to the new window


def test_headers_set_the_gauges_and_leave_room(budget: Budget, harness: Harness) -> None:
    budget.record(headers((20, 300), read=(5, 50)), 200)
    budget.check()
    assert harness.sample("siteapi_strava_ratelimit_usage", {"window": "15min", "kind": "overall"}) == 20
    assert harness.sample("siteapi_strava_ratelimit_limit", {"window": "day", "kind": "overall"}) == 2000
    assert harness.sample("siteapi_strava_ratelimit_usage", {"window": "day", "kind": "read"}) == 50
    assert harness.sample("siteapi_strava_ratelimit_limit", {"window": "15min", "kind": "read"}) == 100
    assert harness.sample("siteapi_strava_ratelimit_blocked") == 0
    snap = budget.snapshot()
    assert snap["usage"]["overall"] == {"15min": 20, "day": 300}
    assert snap["blocked_until"] is None and snap["reason"] is None


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "1,2,3", "-1,5", "10;20", "1,", "9" * 400 + ",x"],
)
def test_malformed_headers_are_ignored(budget: Budget, bad: str) -> None:
    budget.record({"X-RateLimit-Limit": bad, "X-RateLimit-Usage": "199,1999"}, 200)
    budget.record({"X-RateLimit-Limit": "200,2000", "X-RateLimit-Usage": bad}, 200)
    budget.check()  # nothing usable was learned, so nothing blocks
    assert budget.snapshot()["limits"]["overall"] == {"15min": None, "day": None}


def test_the_reserve_is_kept_in_the_15_minute_window(budget: Budget, harness: Harness) -> None:
    clock = budget.clock
    assert isinstance(clock, FakeClock)
    budget.record(headers((189, 500)), 200)
    budget.check()  # 189 < 200 - 10
    budget.record(headers((190, 501)), 200)
    with pytest.raises(BudgetExhausted) as caught:
        budget.check()
    assert caught.value.retry_after == math.ceil(NEXT_QUARTER - T0)
    assert caught.value.status == 503 and caught.value.code == "strava_budget_exhausted"
    assert harness.sample("siteapi_strava_ratelimit_blocked") == 1
    assert budget.snapshot()["blocked_until"] == "2024-05-01T10:15:00Z"

    clock.advance(NEXT_QUARTER - T0 - 0.5)
    with pytest.raises(BudgetExhausted) as caught:
        budget.check()
    assert caught.value.retry_after == 1  # never 0
    clock.advance(0.5)
    budget.check()  # the window rolled: the old usage belongs to the old window
    assert harness.sample("siteapi_strava_ratelimit_blocked") == 0
    assert budget.snapshot()["usage"]["overall"] == {"15min": None, "day": 501}


def test_the_read_limit_counts_too(budget: Budget) -> None:
    budget.record(headers((10, 10), read=(90, 90)), 200)  # read limit 100: 90 >= 100 - 10
    with pytest.raises(BudgetExhausted):
        budget.check()


def test_a_spent_daily_budget_blocks_until_utc_midnight(budget: Budget) -> None:
    clock = budget.clock
    assert isinstance(clock, FakeClock)
    budget.record(headers((5, 1900)), 200)  # daily reserve is 10 x 10
    with pytest.raises(BudgetExhausted) as caught:
        budget.check()
    assert caught.value.retry_after == math.ceil(NEXT_MIDNIGHT - T0)
    clock.advance(NEXT_QUARTER - T0 + 1)
    with pytest.raises(BudgetExhausted):
        budget.check()  # a new quarter does not help
    clock.now = NEXT_MIDNIGHT
    budget.check()


def test_429_blocks_until_the_next_quarter_even_without_headers(budget: Budget) -> None:
    budget.record({}, 429)
    with pytest.raises(BudgetExhausted) as caught:
        budget.check()
    assert caught.value.retry_after == math.ceil(NEXT_QUARTER - T0)
    assert "429" in budget.snapshot()["reason"]


def test_429_with_the_daily_limit_spent_blocks_until_midnight(budget: Budget) -> None:
    budget.record(headers((50, 2001)), 429)
    with pytest.raises(BudgetExhausted) as caught:
        budget.check()
    assert caught.value.retry_after == math.ceil(NEXT_MIDNIGHT - T0)


# ---- against the simulator, through the client ----


@pytest.fixture
async def client(
    simulator: tuple[str, SimulatorState], sim: SimulatorState, module_clock: FakeClock, tmp_path: Path
) -> AsyncIterator[StravaClient]:
    harness = Harness()
    settings = strava_settings(simulator[0], tmp_path, budget_reserve=5)
    budget = Budget(settings.budget_reserve, harness.strava, module_clock)
    client = StravaClient(settings, harness.strava, harness.redactor, module_clock, budget)
    await client.start()
    yield client
    await client.aclose()


def api_calls(sim: SimulatorState) -> int:
    return sim.stats()["total_api_calls"]


async def test_the_budget_stops_calls_before_the_limit(client: StravaClient, sim: SimulatorState) -> None:
    sim.set_limits(limit_15min=15)
    done = 0
    with pytest.raises(BudgetExhausted) as caught:
        for _ in range(20):
            await client.athlete()
            done += 1
    assert done == 10  # 15 minus the reserve of 5
    assert api_calls(sim) == 10
    assert caught.value.retry_after == math.ceil(NEXT_QUARTER - T0)
    for _ in range(3):
        with pytest.raises(BudgetExhausted):
            await client.athlete()
    assert api_calls(sim) == 10  # refused here, never sent


async def test_a_429_blocks_until_the_next_quarter_hour(
    client: StravaClient, sim: SimulatorState, module_clock: FakeClock
) -> None:
    await client.athlete()
    sim.set_usage(usage_15min=200)  # the next request goes over Strava's limit
    with pytest.raises(RateLimited) as caught:
        await client.athlete()
    assert caught.value.retry_after == math.ceil(NEXT_QUARTER - T0)
    assert caught.value.status == 503 and caught.value.code == "strava_rate_limited"
    calls = api_calls(sim)
    with pytest.raises(BudgetExhausted):
        await client.athlete()
    assert api_calls(sim) == calls
    assert client.status()["budget"]["blocked"] is True

    module_clock.now = NEXT_QUARTER + 1
    assert (await client.athlete())["id"] == 12345
    assert api_calls(sim) == calls + 1


async def test_a_spent_daily_limit_blocks_until_utc_midnight(
    client: StravaClient, sim: SimulatorState, module_clock: FakeClock
) -> None:
    sim.set_limits(limit_day=100)
    sim.set_usage(usage_day=49)  # daily reserve is 5 x 10 = 50: this request makes 50, the last one
    await client.athlete()
    with pytest.raises(BudgetExhausted) as caught:
        await client.athlete()
    assert caught.value.retry_after == math.ceil(NEXT_MIDNIGHT - T0)
    module_clock.now = NEXT_QUARTER + 60
    with pytest.raises(BudgetExhausted):
        await client.athlete()
    assert api_calls(sim) == 1
    module_clock.now = NEXT_MIDNIGHT + 5
    await client.athlete()
    assert api_calls(sim) == 2
