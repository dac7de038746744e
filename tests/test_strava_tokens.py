"""TokenManager against the Strava simulator in a real uvicorn: rotation, persistence, single-flight.

Shared helpers live in tests/strava_upstream.py; the simulator fixtures in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from observability.metrics import Metrics
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.errors import (
    AuthRejected,
    CredentialsRejected,
    NotConfigured,
    UpstreamUnavailable,
)
from service.projects.strava_integration.shared_tokens import TOKENS_KEY
from service.projects.strava_integration.simulator import SimulatorState
from service.store import MemoryStore, StoreMetrics
from tests.strava_upstream import SIM, SIX_HOURS, T0, Harness, make_tokens, refresh_calls, strava_settings
from tests.support import FakeClock

# ---- fixtures ----


@pytest.fixture
def clock(module_clock: FakeClock, simulator: tuple[str, SimulatorState]) -> FakeClock:
    module_clock.now = T0
    simulator[1].reset()  # fresh tokens, limits, faults and counters for every test
    return module_clock


@pytest.fixture
def sim(simulator: tuple[str, SimulatorState], clock: FakeClock) -> SimulatorState:
    return simulator[1]


@pytest.fixture
def settings(simulator: tuple[str, SimulatorState], tmp_path: Path) -> StravaSettings:
    return strava_settings(simulator[0], tmp_path)


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def harness() -> Harness:
    return Harness()


# ---- tests ----


async def test_rotation_persists_the_newest_token_set_and_survives_a_restart(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(settings, http, clock, harness)
    tokens.load()
    assert tokens.status()["token_source"] == "environment"

    first = await tokens.access_token()
    first_refresh = sim.refresh_token
    assert first_refresh != SIM.initial_refresh_token
    assert await tokens.access_token() == first  # still fresh: no second refresh
    assert refresh_calls(sim) == 1

    clock.advance(SIX_HOURS - 200)  # expires within 5 minutes: refresh again
    second = await tokens.access_token()
    assert second != first
    assert sim.stats()["token_refreshes"] == 2

    # The rotated-away refresh token is dead at Strava.
    dead = await http.post(
        f"{settings.oauth_url}/token",
        data={
            "client_id": SIM.client_id,
            "client_secret": SIM.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": first_refresh,
        },
    )
    assert dead.status_code == 400

    path = settings.token_file
    saved = orjson.loads(path.read_bytes())
    assert saved["refresh_token"] == sim.refresh_token
    assert saved["access_token"] == second
    assert saved["athlete_id"] is None or isinstance(saved["athlete_id"], int)
    assert isinstance(saved["expires_at"], int) and saved["saved_at"].endswith("Z")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp files left
    assert harness.sample("siteapi_strava_token_refreshes_total", {"outcome": "success"}) == 2
    assert harness.sample("siteapi_strava_token_expires_at_seconds") == saved["expires_at"]

    # A restart: the environment still holds the original, long-dead token; the file wins.
    restarted = make_tokens(settings, http, clock, Harness())
    restarted.load()
    assert restarted.status()["token_source"] == "file"
    assert await restarted.access_token() == second  # loaded, not refreshed
    clock.advance(SIX_HOURS)
    third = await restarted.access_token()
    assert third not in (first, second)
    assert sim.stats()["token_refreshes"] == 3
    assert orjson.loads(path.read_bytes())["refresh_token"] == sim.refresh_token


async def test_concurrent_callers_share_one_refresh(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(settings, http, clock, harness)
    tokens.load()
    results = await asyncio.gather(*(tokens.access_token() for _ in range(20)))
    assert len(set(results)) == 1
    assert sim.stats()["token_refreshes"] == 1

    clock.advance(SIX_HOURS)  # expired: again twenty callers, one refresh
    results = await asyncio.gather(*(tokens.access_token() for _ in range(20)))
    assert len(set(results)) == 1
    assert sim.stats()["token_refreshes"] == 2


async def test_concurrent_callers_share_one_failed_refresh(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    sim.set_fault("http_503", path_prefix="/oauth")
    tokens = make_tokens(settings, http, clock, harness)
    tokens.load()
    results = await asyncio.gather(*(tokens.access_token() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, UpstreamUnavailable) for r in results)
    assert refresh_calls(sim) == 1
    assert harness.sample("siteapi_strava_token_refreshes_total", {"outcome": "error"}) == 1


async def test_a_refresh_failure_hands_out_the_still_valid_token(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(settings, http, clock, harness)
    tokens.load()
    held = await tokens.access_token()
    clock.advance(SIX_HOURS - 120)  # inside the refresh margin, but not expired
    sim.set_fault("http_502", path_prefix="/oauth")
    assert await tokens.access_token() == held
    clock.advance(110)  # now too close to expiry to hand out
    with pytest.raises(UpstreamUnavailable):
        await tokens.access_token()


async def test_a_refused_refresh_token_ends_the_grant_and_runs_the_revocation_hook_once(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(settings, http, clock, harness)
    purges: list[bool] = []

    async def on_revoked(everywhere: bool) -> None:
        purges.append(tokens.connected)  # the tokens are gone from memory before the data is purged

    tokens.on_revoked = on_revoked
    tokens.load()
    await tokens.access_token()
    assert harness.sample("siteapi_strava_auth_ok") == 1
    sim.revoke()  # the owner revoked the app on strava.com; no event reached us
    clock.advance(SIX_HOURS)

    with pytest.raises(AuthRejected) as caught:
        await tokens.access_token()
    assert "/api/strava-integration/auth/start" in caught.value.message
    assert caught.value.status == 503 and caught.value.code == "strava_auth_rejected"
    assert purges == [False]
    assert not settings.token_file.exists()
    status = tokens.status()
    assert status["auth_ok"] is False and status["ended"] == "revoked" and status["credentials_rejected"] is False
    assert "/api/strava-integration/auth/start" in status["last_error"]
    assert harness.sample("siteapi_strava_auth_ok") == 0
    assert harness.sample("siteapi_strava_token_refreshes_total", {"outcome": "rejected"}) == 1

    calls = refresh_calls(sim)
    for _ in range(5):  # the dead token is never presented again, now or later
        with pytest.raises(NotConfigured) as later:
            await tokens.access_token()
        assert "/api/strava-integration/auth/start" in later.value.message
        clock.advance(61)
    assert refresh_calls(sim) == calls
    assert purges == [False]


async def test_a_refused_fallback_does_not_bring_the_refused_set_back_from_the_store(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    """A restart from the file while the store still holds the same set, then a revocation: both refused."""
    store = MemoryStore(StoreMetrics(Metrics("test-store")), clock)  # outlives the instance, as Redis does
    first = make_tokens(settings, http, clock, harness, store)
    await first.start()
    await first.access_token()  # the set goes to the store and to the file
    restarted = make_tokens(settings, http, clock, Harness(), store)
    await restarted.start()
    assert restarted.status()["token_source"] == "file"
    sim.revoke()  # the owner revoked the app on strava.com
    # The grant check a deauthorization event runs (revocation.py): the file's token is refused,
    # then the environment's; the store's copy of the first refused set must not count as news.
    with pytest.raises(AuthRejected):
        await restarted.fresh_refresh()
    status = restarted.status()
    assert status["ended"] == "revoked" and status["auth_ok"] is False and not restarted.connected
    assert orjson.loads(await store.get(TOKENS_KEY) or b"{}").get("ended") == "revoked"
    with pytest.raises(NotConfigured):
        await restarted.access_token()


async def test_wrong_client_credentials_keep_the_grant_and_the_held_token(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    good = make_tokens(settings, http, clock, harness)
    good.load()
    held = await good.access_token()
    saved = settings.token_file.read_bytes()
    # The operator mistyped the secret and restarted: the saved token set is loaded as before.
    tokens = make_tokens(replace(settings, client_secret="wrong-secret-value"), http, clock, Harness())
    purges: list[str] = []

    async def on_revoked(everywhere: bool) -> None:
        purges.append("purged")

    tokens.on_revoked = on_revoked
    tokens.load()
    clock.advance(SIX_HOURS - 60)  # inside the refresh margin: a refresh is tried, and refused
    assert await tokens.access_token() == held  # still valid for a minute, so still used
    status = tokens.status()
    assert status["credentials_rejected"] is True and status["ended"] is None and status["auth_ok"] is False
    assert "STRAVA_CLIENT_ID/STRAVA_CLIENT_SECRET" in status["last_error"]
    assert "re-authorize" not in status["last_error"]
    assert settings.token_file.read_bytes() == saved and purges == []
    calls = refresh_calls(sim)
    clock.advance(40)  # now too close to expiry to hand out
    with pytest.raises(CredentialsRejected) as caught:
        await tokens.access_token()
    assert caught.value.code == "strava_credentials_rejected"
    assert refresh_calls(sim) == calls  # the same refusal is not asked again within a minute
    assert tokens.connected and purges == [] and settings.token_file.exists()


async def test_a_dead_persisted_token_falls_back_to_the_environment_once(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    # e.g. a sandbox simulator that restarted: the file's token is unknown, the environment's works.
    settings.token_file.parent.mkdir(parents=True)
    settings.token_file.write_bytes(orjson.dumps({"refresh_token": "stale-refresh-token", "expires_at": 0}))
    tokens = make_tokens(settings, http, clock, harness)
    tokens.load()
    assert tokens.status()["token_source"] == "file"
    await tokens.access_token()
    assert tokens.status()["token_source"] == "environment"
    assert orjson.loads(settings.token_file.read_bytes())["refresh_token"] == sim.refresh_token


async def test_a_corrupt_token_file_falls_back_to_the_environment_token(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    settings.token_file.parent.mkdir(parents=True)
    settings.token_file.write_bytes(b'{"refresh_token": ')
    tokens = make_tokens(settings, http, clock, harness)
    with capture_logs() as logs:
        tokens.load()
    assert any(e["event"] == "strava_token_file_corrupt" and e["log_level"] == "warning" for e in logs)
    assert tokens.status()["token_source"] == "environment"
    assert await tokens.access_token()
    assert orjson.loads(settings.token_file.read_bytes())["refresh_token"] == sim.refresh_token


async def test_tokens_never_reach_the_logs_and_are_taught_to_the_redactor(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(settings, http, clock, harness)
    with capture_logs() as logs:
        tokens.load()
        access = await tokens.access_token()
        saved = orjson.loads(settings.token_file.read_bytes())
        sim.revoke()
        clock.advance(SIX_HOURS)
        with pytest.raises(AuthRejected):
            await tokens.access_token()
    rendered = orjson.dumps(logs, default=str).decode()
    for secret in (access, saved["refresh_token"], SIM.client_secret, SIM.initial_refresh_token):
        assert secret not in rendered
        assert harness.redactor.scrub(f"x {secret} y") == "x [REDACTED] y"
    assert any(e["event"] == "strava_token_refreshed" for e in logs)
    status_text = orjson.dumps(tokens.status()).decode()
    assert access not in status_text and saved["refresh_token"] not in status_text


async def test_exchange_code_stores_a_new_grant_and_learns_the_athlete(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(replace(settings, refresh_token=None), http, clock, harness)
    tokens.load()
    assert tokens.status()["configured"] is False
    assert harness.sample("siteapi_strava_auth_ok") == 0

    athlete = await tokens.exchange_code(sim.new_code(), scope="read,activity:read_all")
    assert athlete["id"] == SIM.athlete_id
    assert tokens.athlete_id == SIM.athlete_id
    status = tokens.status()
    assert status["token_source"] == "oauth" and status["auth_ok"] is True and status["configured"] is True
    assert status["athlete_id"] == SIM.athlete_id
    saved = orjson.loads(settings.token_file.read_bytes())
    assert saved["refresh_token"] == sim.refresh_token
    assert saved["athlete_id"] == SIM.athlete_id and saved["scope"] == "read,activity:read_all"
    assert await tokens.access_token() == saved["access_token"]

    with pytest.raises(AuthRejected):  # codes work once
        await tokens.exchange_code("not-a-real-code")
    assert tokens.status()["auth_ok"] is True  # a bad code does not spoil the grant we hold


async def test_ending_the_grant_deletes_the_tokens(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(settings, http, clock, harness)
    tokens.load()
    await tokens.access_token()
    assert settings.token_file.exists()
    assert await tokens.disconnect() is True  # what the admin's disconnect runs; revoked at Strava too
    assert not settings.token_file.exists()
    assert tokens.status()["auth_ok"] is False and tokens.status()["token_source"] is None
    assert harness.sample("siteapi_strava_auth_ok") == 0
    with pytest.raises(NotConfigured):
        await tokens.access_token()
    assert sim.stats()["token_refreshes"] == 1


async def test_without_credentials_no_request_is_made(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, sim: SimulatorState, harness: Harness
) -> None:
    tokens = make_tokens(replace(settings, client_id=None), http, clock, harness)
    tokens.load()
    with pytest.raises(NotConfigured):
        await tokens.access_token()
    assert refresh_calls(sim) == 0
    assert tokens.status()["configured"] is False


def test_file_io_helpers_use_private_modes(tmp_path: Path) -> None:
    from service.projects.strava_integration.tokens import write_token_file

    target = tmp_path / "new" / "tokens.json"
    write_token_file(target, b"{}")
    write_token_file(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(target.parent).st_mode) == 0o700
