"""Connecting the owner's account and keeping it connected: OAuth flow, rotating tokens, restarts.

`/auth/start` → the simulator's authorize page → `/auth/callback` stores a token set the feed
then uses; every way the callback can be misused gets a 400. Strava rotates the refresh token on
each refresh, so a restart must use the saved one, not the (now dead) one in the environment; a
corrupt token file falls back to the environment and health says what happened.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from tests.strava_harness import (
    ADMIN,
    CLIENT_ID,
    LIST_CALL,
    PREFIX,
    Stack,
    assert_error,
    running_inprocess,
    running_simulator,
    running_stack,
)
from tests.strava_upstream import T0, FakeClock
from tests.support import SECRETS

CALLBACK = "/api/strava-integration/auth/callback"
AUTH_START = "/api/strava-integration/auth/start"


def start(stack: Stack) -> tuple[str, dict[str, str]]:
    """`/auth/start` as the operator's browser sees it: the authorize URL and its query."""
    response = stack.get(PREFIX + "/auth/start", headers=ADMIN, follow_redirects=False)
    assert response.status_code == 302, response.text
    assert response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return location, query


def approve(stack: Stack, location: str) -> tuple[str, dict[str, str]]:
    """The athlete approves on (simulated) Strava, which redirects back with a code: path and query."""
    response = httpx.get(location, follow_redirects=False, timeout=5)
    assert response.status_code == 302, response.text
    back = urlsplit(response.headers["location"])
    query = {k: v[0] for k, v in parse_qs(back.query).items()}
    stack.secrets.add(query["code"])  # an authorization code is a secret too
    return back.path, query


def callback(stack: Stack, **params: str) -> httpx.Response:
    return stack.get(CALLBACK, params=params)


# ---- the connect flow (a service that starts without a refresh token) ----


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("oauth"), env={"STRAVA_REFRESH_TOKEN": ""}) as running:
        yield running


def test_connect_from_unconfigured_to_a_working_feed(stack: Stack) -> None:
    assert_error(stack.feed(), 503, "strava_not_configured")
    assert stack.health()["status"] == "warn" and AUTH_START in stack.health()["output"]

    location, query = start(stack)
    assert location.startswith(f"{stack.sim.url}/oauth/authorize?")
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == stack.base_url + CALLBACK
    assert "activity:read" in query["scope"].split(",")
    assert "activity:read_all" not in query["scope"].split(",")  # Strava then applies privacy zones
    assert query["response_type"] == "code"
    assert len(query["state"]) >= 32

    path, back = approve(stack, location)
    assert path == CALLBACK
    assert back["state"] == query["state"] and back["code"]
    connected = callback(stack, **back)
    assert connected.status_code == 200, connected.text
    assert connected.json() == {"status": "connected", "athlete_id": stack.sim.state.config.athlete_id}
    assert stack.sim.stats()["code_exchanges"] == 1

    assert stack.token_file.exists()
    assert stat.S_IMODE(stack.token_file.stat().st_mode) == 0o600
    saved = orjson.loads(stack.token_file.read_bytes())
    assert saved["refresh_token"] == stack.sim.stats()["refresh_token"]
    assert saved["athlete_id"] == stack.sim.state.config.athlete_id
    feed = stack.feed()
    assert feed.status_code == 200 and feed.json()["count"] > 0
    assert stack.health()["status"] == "pass"
    assert stack.status()["token"]["token_source"] == "oauth"

    # The same state a second time (a replayed callback): refused, and no code is redeemed.
    assert_error(callback(stack, **back), 400, "invalid_state", "state")
    assert stack.sim.stats()["code_exchanges"] == 1


def test_tampered_missing_or_malformed_state_is_refused(stack: Stack) -> None:
    exchanges = stack.sim.stats()["code_exchanges"]
    location, _ = start(stack)
    _, back = approve(stack, location)
    payload, _, signature = back["state"].rpartition(".")
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    expires, _, nonce = payload.partition(".")
    for state in (
        f"{payload}.{flipped}",  # signature changed
        f"{int(expires) + 3600}.{nonce}.{signature}",  # a later expiry, same signature
        "not-a-state",
        "a.b.c",
        "",
    ):
        assert_error(callback(stack, **{**back, "state": state}), 400, "invalid_state", "state")
    assert_error(callback(stack, code=back["code"], scope=back["scope"]), 400, "invalid_state", "state")
    assert stack.sim.stats()["code_exchanges"] == exchanges


def test_denied_authorization_is_refused(stack: Stack) -> None:
    location, _ = start(stack)
    _, back = approve(stack, location)
    # What Strava sends when the athlete clicks "Cancel".
    body = assert_error(callback(stack, state=back["state"], error="access_denied"), 400, "authorization_denied")
    assert "authorize" in body["message"]


def test_missing_activity_read_scope_is_refused(stack: Stack) -> None:
    exchanges = stack.sim.stats()["code_exchanges"]
    location, _ = start(stack)
    _, back = approve(stack, location)
    # The athlete unticked "View data about your activities" on Strava's page.
    body = assert_error(callback(stack, **{**back, "scope": "read"}), 400, "insufficient_scope")
    assert "activity:read" in body["message"]
    assert stack.sim.stats()["code_exchanges"] == exchanges  # the code was never redeemed

    location, _ = start(stack)
    _, back = approve(stack, location)
    assert_error(callback(stack, state=back["state"]), 422, "invalid_parameter", "code")


def test_a_state_expires_after_ten_minutes(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    with running_simulator(clock) as sim, running_inprocess(sim, tmp_path, clock, STRAVA_REFRESH_TOKEN="") as stack:
        early, _ = start(stack)
        clock.advance(300)
        late, _ = start(stack)
        clock.advance(301)  # the first state is 601 s old, the second 301 s
        _, back = approve(stack, early)
        body = assert_error(callback(stack, **back), 400, "invalid_state", "state")
        assert "expired" in body["message"]
        _, back = approve(stack, late)
        assert callback(stack, **back).status_code == 200
        assert stack.feed().status_code == 200
        assert sim.stats()["code_exchanges"] == 1


# ---- rotation across restarts ----


def test_rotated_tokens_survive_a_restart_with_the_dead_environment_token(tmp_path: Path) -> None:
    env_token = SECRETS["STRAVA_REFRESH_TOKEN"]
    with running_simulator() as sim:
        with running_stack(tmp_path, sim=sim) as first:
            assert first.feed().status_code == 200
            assert sim.stats()["token_refreshes"] == 1
        # Strava rotated it: the token the environment still holds is dead at once.
        dead = sim.refresh_with(env_token)
        assert dead.status_code == 400
        assert sim.stats()["token_refreshes"] == 1
        sim.control("expire")  # and the saved access token has expired meanwhile: the restart must refresh

        with running_stack(tmp_path, sim=sim) as second:  # same environment, same token file
            feed = second.feed()
            assert feed.status_code == 200 and feed.json()["count"] > 0
            assert sim.stats()["token_refreshes"] == 2  # with the saved refresh token
            status = second.status()
            assert status["token"]["auth_ok"] is True and status["token"]["token_source"] == "file"
            assert second.health()["status"] == "pass"
            saved = orjson.loads(second.token_file.read_bytes())
            assert saved["refresh_token"] == sim.stats()["refresh_token"] != env_token


def corrupt(token_file: Path) -> None:
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_bytes(b'{"refresh_token": "trunc')


def test_a_corrupt_token_file_falls_back_to_the_environment(tmp_path: Path) -> None:
    with running_simulator() as sim:
        corrupt(tmp_path / "strava" / "tokens.json")
        with running_stack(tmp_path, sim=sim) as stack:
            assert stack.feed().status_code == 200
            assert stack.health()["status"] == "pass"
            assert orjson.loads(stack.token_file.read_bytes())["refresh_token"] == sim.stats()["refresh_token"]
            assert stack.service is not None
            events = [line for line in stack.service.logs() if line.get("event") == "strava_token_file_corrupt"]
            assert events and events[0]["level"] == "warning"


def test_a_corrupt_token_file_with_a_dead_environment_token_says_what_to_do(tmp_path: Path) -> None:
    with running_simulator() as sim:
        assert sim.refresh_with(SECRETS["STRAVA_REFRESH_TOKEN"]).status_code == 200  # rotated: the env's is dead
        corrupt(tmp_path / "strava" / "tokens.json")
        with running_stack(tmp_path, sim=sim) as stack:
            lists = sim.calls(LIST_CALL)
            body = assert_error(stack.feed(), 503, "strava_auth_rejected")
            assert AUTH_START in body["message"]
            health = stack.get("/health")
            assert health.status_code == 503
            check = health.json()["checks"]["strava-integration"][0]
            assert check["status"] == "fail"
            assert AUTH_START in check["output"]
            assert "token file" in check["output"] and "STRAVA_REFRESH_TOKEN" in check["output"]
            assert stack.get("/readyz").status_code == 200
            time.sleep(0.1)
            assert sim.calls(LIST_CALL) == lists

            # The operator reconnects: the feed works again without a restart.
            location, _ = start(stack)
            _, back = approve(stack, location)
            assert callback(stack, **back).status_code == 200
            assert stack.feed().status_code == 200
            assert stack.health()["status"] == "pass"
