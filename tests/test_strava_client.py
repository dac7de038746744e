"""StravaClient against the simulator in a real uvicorn: auth retries, deadlines, faults, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from service.errors import ApiError
from service.projects.strava_integration import client as client_module
from service.projects.strava_integration.budget import Budget
from service.projects.strava_integration.client import (
    MAX_RETRIES,
    AuthRejected,
    NotConfigured,
    StravaClient,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from service.projects.strava_integration.simulator import SimulatorState
from tests.strava_upstream import SIM, T0, FakeClock, Harness, strava_settings
from tests.support import eventually, free_port

ClientFactory = Callable[..., Awaitable[tuple[StravaClient, Harness]]]


@pytest.fixture
async def make_client(
    simulator: tuple[str, SimulatorState], sim: SimulatorState, module_clock: FakeClock, tmp_path: Path
) -> AsyncIterator[ClientFactory]:
    made: list[StravaClient] = []

    async def factory(**overrides: Any) -> tuple[StravaClient, Harness]:
        harness = Harness()
        settings = strava_settings(simulator[0], tmp_path, **overrides)
        budget = Budget(settings.budget_reserve, harness.strava, module_clock)
        client = StravaClient(settings, harness.strava, harness.redactor, module_clock, budget)
        await client.start()
        made.append(client)
        return client, harness

    yield factory
    for client in made:
        await client.aclose()


def calls(sim: SimulatorState, key: str) -> int:
    return sim.stats()["calls"].get(key, 0)


def requests(harness: Harness, endpoint: str, status: str) -> float:
    return harness.sample("siteapi_strava_upstream_requests_total", {"endpoint": endpoint, "status": status}) or 0


async def test_the_typed_helpers_return_strava_json(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client()
    athlete = await client.athlete()
    assert athlete["id"] == SIM.athlete_id
    page = await client.activities(page=1, per_page=5)
    assert len(page) == 5 and all("id" in a for a in page)
    newest_start = page[0]["start_date"]
    older = await client.activities(page=1, per_page=200, before=int(T0) - 30 * 86400)
    assert all(a["start_date"] < newest_start for a in older)
    detail = await client.activity(page[0]["id"])
    assert detail["id"] == page[0]["id"]
    stats = await client.stats(SIM.athlete_id)
    assert isinstance(stats, dict) and stats
    assert requests(harness, "athlete", "200") == 1
    assert requests(harness, "activities", "200") == 2
    assert requests(harness, "token", "200") == 1  # one refresh served them all
    assert harness.sample("siteapi_strava_upstream_request_duration_seconds_count", {"endpoint": "activity"}) == 1
    assert harness.sample("siteapi_strava_ratelimit_usage", {"window": "15min", "kind": "overall"}) == 5
    with pytest.raises(ValueError):
        await client.activities(per_page=500)


async def test_a_401_refreshes_once_and_retries(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client()
    await client.athlete()
    sim.expire_access_tokens()  # Strava revoked the access token early; ours still looks fresh
    assert (await client.athlete())["id"] == SIM.athlete_id
    assert sim.stats()["token_refreshes"] == 2
    assert requests(harness, "athlete", "401") == 1
    assert requests(harness, "athlete", "200") == 2


async def test_a_401_after_a_refresh_is_not_retried_forever(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, _ = await make_client()
    await client.athlete()
    sim.revoke()  # access and refresh tokens die together
    with pytest.raises(AuthRejected) as caught:
        await client.athlete()
    assert "/api/strava-integration/auth/start" in caught.value.message
    assert calls(sim, "GET /api/v3/athlete") == 2
    assert client.status()["tokens"]["auth_ok"] is False


async def test_not_found_and_other_4xx(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client()
    with pytest.raises(UpstreamNotFound) as caught:
        await client.activity(1)
    assert caught.value.status == 404 and caught.value.code == "strava_not_found"
    with pytest.raises(UpstreamBadResponse) as caught_bad:
        await client.stats(SIM.athlete_id + 1)  # Strava: 403 for someone else's stats
    assert caught_bad.value.status == 502
    assert requests(harness, "stats", "403") == 1
    assert calls(sim, "GET /api/v3/athletes/{id}/stats") == 1  # 4xx is never retried


async def test_a_single_503_is_retried(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client()
    sim.set_fault("http_503", count=1)
    assert (await client.athlete())["id"] == SIM.athlete_id
    assert requests(harness, "athlete", "503") == 1
    assert requests(harness, "athlete", "200") == 1


async def test_a_lasting_503_fails_within_the_deadline(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client(request_timeout_seconds=3.0)
    await client.athlete()
    sim.set_fault("http_503")
    with pytest.raises(UpstreamUnavailable) as caught:  # retries spent, not the deadline: not a timeout
        await client.athlete()
    assert caught.value.status == 503  # Strava said 503: so do we
    assert requests(harness, "athlete", "503") == 1 + MAX_RETRIES
    assert calls(sim, "GET /api/v3/athlete") == 2 + MAX_RETRIES


async def test_backoff_never_sleeps_past_the_deadline(
    make_client: ClientFactory, sim: SimulatorState, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, harness = await make_client(request_timeout_seconds=0.15)
    await client.athlete()
    monkeypatch.setattr(client_module.random, "uniform", lambda low, high: high)  # always the longest backoff
    sim.set_fault("http_502")
    with pytest.raises(UpstreamUnavailable) as caught:  # not UpstreamTimeout: we never started that sleep
        await client.athlete()
    assert caught.value.status == 502
    assert requests(harness, "athlete", "502") == 1


async def test_a_slow_strava_ends_in_a_timeout_at_the_deadline(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client(request_timeout_seconds=0.5)
    await client.athlete()
    sim.set_fault("timeout", delay_s=600.0)  # Strava would answer only after the test's own time-out
    with pytest.raises(UpstreamTimeout) as caught:
        await client.athlete()
    assert await eventually(lambda: sim.held == 0, 5)  # we hung up: nobody waits for that answer
    assert caught.value.status == 504 and caught.value.code == "strava_timeout"
    assert requests(harness, "athlete", "timeout") == 1
    last = client.status()["last_upstream_error"]
    assert last["type"] == "UpstreamTimeout" and last["at"].endswith("Z")


async def test_malformed_json_is_a_bad_response(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, _ = await make_client()
    await client.athlete()
    sim.set_fault("malformed_json", count=1)
    with pytest.raises(UpstreamBadResponse) as caught:
        await client.activities()
    assert caught.value.status == 502 and caught.value.code == "strava_bad_response"
    assert isinstance(await client.activities(), list)  # the fault was used up


async def test_a_connection_reset_is_unavailable(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client()
    await client.athlete()
    sim.set_fault("reset")
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.athlete()
    assert caught.value.status == 502
    assert requests(harness, "athlete", "error") == 1 + MAX_RETRIES
    sim.set_fault("reset", count=1)
    assert (await client.athlete())["id"] == SIM.athlete_id  # one reset: retried on a new connection


async def test_nothing_listening_is_unavailable(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, harness = await make_client(api_url=f"http://127.0.0.1:{free_port()}/api/v3")
    with pytest.raises(UpstreamUnavailable):
        await client.athlete()
    assert requests(harness, "athlete", "error") == 1 + MAX_RETRIES


async def test_unconfigured_sends_nothing(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, _ = await make_client(client_secret=None)
    with pytest.raises(NotConfigured) as caught:
        await client.athlete()
    assert caught.value.status == 503 and caught.value.code == "strava_not_configured"
    assert sim.stats()["calls"] == {}


async def test_status_and_logs_hold_no_secrets(make_client: ClientFactory, sim: SimulatorState) -> None:
    client, _ = await make_client()
    with capture_logs() as logs:
        await client.athlete()
        sim.set_fault("http_500", count=1)
        with pytest.raises(UpstreamUnavailable):
            await client.athlete()
    status = client.status()
    saved = orjson.loads(client.settings.token_file.read_bytes())
    text = orjson.dumps([status, logs], default=str).decode()
    for secret in (saved["access_token"], saved["refresh_token"], SIM.client_secret):
        assert secret not in text
    failed = [e for e in logs if e["event"] == "strava_upstream_failed"]
    assert failed and failed[0]["endpoint"] == "athlete" and failed[0]["status"] == 500
    assert status["tokens"]["auth_ok"] is True
    assert status["last_upstream_error"]["code"] == "strava_unavailable"
    assert set(status["budget"]) >= {"limits", "usage", "blocked_until", "reason"}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UpstreamUnavailable(), 502, "strava_unavailable"),
        (UpstreamUnavailable(status=503), 503, "strava_unavailable"),
        (UpstreamTimeout(), 504, "strava_timeout"),
        (UpstreamBadResponse(), 502, "strava_bad_response"),
        (UpstreamNotFound(), 404, "strava_not_found"),
        (AuthRejected(), 503, "strava_auth_rejected"),
        (NotConfigured(), 503, "strava_not_configured"),
    ],
)
def test_errors_carry_our_status_and_a_stable_code(error: UpstreamError, status: int, code: str) -> None:
    # They are the API's errors themselves: rendered as they are, by the one error renderer.
    assert isinstance(error, ApiError)
    assert (error.status, error.code) == (status, code)
    assert error.message and "Retry-After" not in error.headers


def test_a_budget_error_renders_retry_after() -> None:
    from service.projects.strava_integration.client import BudgetExhausted, RateLimited

    for error in (BudgetExhausted(0), RateLimited(120)):
        assert error.status == 503
        assert error.retry_after is not None and int(error.headers["Retry-After"]) == error.retry_after >= 1
