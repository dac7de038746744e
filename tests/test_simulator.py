"""The Strava simulator, exercised over real HTTP: uvicorn on loopback in a thread, httpx as the client."""

import base64
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.projects.strava_integration.simulator import (
    MARKUP_NAME,
    SimulatedConnectionReset,
    SimulatorConfig,
    SimulatorState,
    create_simulator,
    decode_polyline,
    encode_polyline,
)
from tests.strava_harness import ADMIN, LIST_CALL, PREFIX, running_stack, wait_for_calls
from tests.support import FakeClock, serve_in_thread, wait_until

T0 = datetime(2024, 6, 1, 10, 5, tzinfo=UTC).timestamp()
CLIENT = {"client_id": "sim-client", "client_secret": "sim-secret"}
AUTH_ERROR = {
    "message": "Authorization Error",
    "errors": [{"resource": "Athlete", "field": "access_token", "code": "invalid"}],
}
BAD_REFRESH_TOKEN = {
    "message": "Bad Request",
    "errors": [{"resource": "RefreshToken", "field": "refresh_token", "code": "invalid"}],
}
DEVICES = {
    "Garmin Forerunner 965",
    "Garmin Edge 840",
    "Garmin fenix 7",
    "Garmin Swim 2",
    "Apple Watch Series 9",
    "Wahoo ELEMNT BOLT",
    "Zwift",
}
RATE_LIMITED = {
    "message": "Rate Limit Exceeded",
    "errors": [{"resource": "Application", "field": "rate limit", "code": "exceeded"}],
}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Starlette, FakeClock]]:
    clock = FakeClock(T0)
    app = create_simulator(clock=clock)
    with serve_in_thread(app) as base_url:
        yield base_url, app, clock


@pytest.fixture
def clock(served: tuple[str, Starlette, FakeClock]) -> FakeClock:
    return served[2]


@pytest.fixture
def sim(served: tuple[str, Starlette, FakeClock], clock: FakeClock) -> SimulatorState:
    # One server per module keeps the suite fast; every test starts from the seeded state at T0.
    clock.now = T0
    state: SimulatorState = served[1].state.sim
    state.reset()
    return state


@pytest.fixture
def client(served: tuple[str, Starlette, FakeClock], sim: SimulatorState) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=5) as http:
        yield http


def _refresh(client: httpx.Client, refresh_token: str) -> httpx.Response:
    return client.post("/oauth/token", data={**CLIENT, "grant_type": "refresh_token", "refresh_token": refresh_token})


def _login(client: httpx.Client, sim: SimulatorState) -> dict[str, str]:
    """Authorization header for a fresh access token."""
    response = _refresh(client, sim.refresh_token or "")
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _code_exchange(client: httpx.Client) -> httpx.Response:
    """The athlete authorizes the app (again) and the app redeems the code."""
    params = {"client_id": "sim-client", "redirect_uri": "http://localhost/cb", "response_type": "code"}
    location = client.get("/oauth/authorize", params=params).headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    return client.post("/oauth/token", data={**CLIENT, "grant_type": "authorization_code", "code": code})


def _basic(client_id: str, client_secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()}


def _usage(response: httpx.Response) -> tuple[str, str]:
    return response.headers["X-RateLimit-Usage"], response.headers["X-ReadRateLimit-Usage"]


def _all_activities(client: httpx.Client, auth: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get("/api/v3/athlete/activities", params={"per_page": 200}, headers=auth)
    assert response.status_code == 200
    return response.json()


# ---- OAuth ----


def test_refresh_rotates_and_the_old_refresh_token_fails_at_once(client: httpx.Client, sim: SimulatorState) -> None:
    first = _refresh(client, "sim-refresh-0")
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"token_type", "access_token", "expires_at", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_at"] == int(T0) + 6 * 3600
    assert body["expires_in"] == 6 * 3600
    assert body["refresh_token"] != "sim-refresh-0"

    stale = _refresh(client, "sim-refresh-0")
    assert stale.status_code == 400
    assert stale.json() == {
        "message": "Bad Request",
        "errors": [{"resource": "RefreshToken", "field": "refresh_token", "code": "invalid"}],
    }

    second = _refresh(client, body["refresh_token"])
    assert second.status_code == 200
    assert second.json()["access_token"] != body["access_token"]
    assert _refresh(client, body["refresh_token"]).status_code == 400
    assert client.get("/_sim/stats").json()["refresh_token"] == second.json()["refresh_token"]
    # Earlier access tokens stay valid until they expire.
    for token in (body["access_token"], second.json()["access_token"]):
        assert client.get("/api/v3/athlete", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize(
    ("credentials", "field"),
    [
        ({"client_id": "sim-client", "client_secret": "nope"}, "client_secret"),
        ({"client_id": "sim-client"}, "client_secret"),
        ({"client_id": "other-app", "client_secret": "sim-secret"}, "client_id"),
        ({"client_secret": "sim-secret"}, "client_id"),
    ],
)
def test_wrong_client_credentials_are_answered_as_strava_does(
    client: httpx.Client, sim: SimulatorState, credentials: dict[str, str], field: str
) -> None:
    form = {**credentials, "grant_type": "refresh_token", "refresh_token": "sim-refresh-0"}
    response = client.post("/oauth/token", data=form)
    # Real Strava: 401, message "Bad Request", and the field that is wrong.
    assert response.status_code == 401
    assert response.json() == {
        "message": "Bad Request",
        "errors": [{"resource": "Application", "field": field, "code": "invalid"}],
    }
    # The valid refresh token was not consumed by the failed attempt, nor counted as a dead one.
    assert _refresh(client, "sim-refresh-0").status_code == 200
    assert sim.stats()["dead_refresh_presented"] == 0


def test_authorization_code_flow(client: httpx.Client, sim: SimulatorState) -> None:
    params = {
        "client_id": "sim-client",
        "redirect_uri": "http://localhost:8000/callback",
        "response_type": "code",
        "scope": "read,activity:read_all",
        "state": "xyz",
    }
    redirect = client.get("/oauth/authorize", params=params)
    assert redirect.status_code == 302
    location = urlsplit(redirect.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("http", "localhost:8000", "/callback")
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"]
    assert query["scope"] == ["read,activity:read_all"]
    assert "scope=read,activity:read_all" in location.query  # commas stay literal, as Strava sends them

    exchange = {**CLIENT, "grant_type": "authorization_code", "code": query["code"][0]}
    granted = client.post("/oauth/token", data=exchange)
    assert granted.status_code == 200
    assert granted.json()["athlete"]["id"] == 12345
    assert granted.json()["refresh_token"] == sim.refresh_token
    assert client.post("/oauth/token", data=exchange).status_code == 400  # single use
    assert _refresh(client, "sim-refresh-0").status_code == 400  # the code replaced the old refresh token
    assert client.post("/oauth/token", data={**exchange, "code": "bogus"}).json()["errors"][0]["field"] == "code"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"client_id": "other"}, "client_id"),
        ({"redirect_uri": "not a url"}, "redirect_uri"),
        ({"response_type": "token"}, "response_type"),
        ({"scope": "read,admin"}, "scope"),
    ],
)
def test_authorize_rejects_bad_parameters(client: httpx.Client, override: dict[str, str], field: str) -> None:
    params = {"client_id": "sim-client", "redirect_uri": "http://localhost/cb", "response_type": "code"}
    response = client.get("/oauth/authorize", params={**params, **override})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


def test_deauthorize_revokes_every_token(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    refresh_token = sim.refresh_token or ""
    response = client.post("/oauth/deauthorize", headers=auth)
    assert response.status_code == 200
    assert response.json() == {"access_token": auth["Authorization"].removeprefix("Bearer ")}
    assert client.get("/api/v3/athlete", headers=auth).status_code == 401
    assert _refresh(client, refresh_token).status_code == 400
    assert client.post("/oauth/deauthorize", headers=auth).status_code == 401


# ---- auth on /api/v3 ----


def test_api_needs_a_live_bearer_token(client: httpx.Client, sim: SimulatorState, clock: FakeClock) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = client.get("/api/v3/athlete", headers=headers)
        assert response.status_code == 401
        assert response.json() == AUTH_ERROR
        assert "X-RateLimit-Usage" in response.headers
    auth = _login(client, sim)
    athlete = client.get("/api/v3/athlete", headers=auth)
    assert athlete.status_code == 200
    assert {"id", "username", "firstname", "lastname", "city", "country", "profile", "profile_medium"} <= set(
        athlete.json()
    )
    clock.advance(6 * 3600 - 1)
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200
    clock.advance(1)
    assert client.get("/api/v3/athlete", headers=auth).json() == AUTH_ERROR


def test_control_expire_and_revoke(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    assert client.post("/_sim/expire").status_code == 200
    assert client.get("/api/v3/athlete", headers=auth).status_code == 401
    auth = _login(client, sim)  # the refresh token survived the expiry
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200
    refresh_token = sim.refresh_token or ""
    assert client.post("/_sim/revoke").status_code == 200
    assert client.get("/api/v3/athlete", headers=auth).status_code == 401
    assert _refresh(client, refresh_token).status_code == 400
    assert client.get("/_sim/stats").json()["refresh_token"] is None


# ---- activities and stats ----


def test_activity_list_is_newest_first_and_paginates(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    everything = _all_activities(client, auth)
    assert len(everything) == 40
    starts = [a["start_date"] for a in everything]
    assert starts == sorted(starts, reverse=True)
    assert all(a["resource_state"] == 2 and "description" not in a for a in everything)

    default_page = client.get("/api/v3/athlete/activities", headers=auth).json()
    assert [a["id"] for a in default_page] == [a["id"] for a in everything[:30]]
    pages = [
        client.get("/api/v3/athlete/activities", params={"page": p, "per_page": 15}, headers=auth).json()
        for p in (1, 2, 3, 4)
    ]
    assert [len(p) for p in pages] == [15, 15, 10, 0]
    assert [a["id"] for p in pages for a in p] == [a["id"] for a in everything]


def test_per_page_is_capped_at_200(client: httpx.Client, sim: SimulatorState) -> None:
    for n in range(170):
        sim.upsert_activity({"id": 1_000 + n})
    auth = _login(client, sim)
    response = client.get("/api/v3/athlete/activities", params={"per_page": 1000}, headers=auth)
    assert len(response.json()) == 200


def test_before_and_after_filters(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    everything = _all_activities(client, auth)
    pivot = int(datetime.fromisoformat(everything[9]["start_date"]).timestamp())
    newer = client.get("/api/v3/athlete/activities", params={"after": pivot, "per_page": 200}, headers=auth).json()
    older = client.get("/api/v3/athlete/activities", params={"before": pivot, "per_page": 200}, headers=auth).json()
    assert [a["id"] for a in newer] == [a["id"] for a in everything[:9]]
    assert [a["id"] for a in older] == [a["id"] for a in everything[10:]]
    window = {"after": pivot - 7 * 86400, "before": pivot + 1, "per_page": 200}
    between = client.get("/api/v3/athlete/activities", params=window, headers=auth).json()
    assert between
    assert all(pivot - 7 * 86400 < datetime.fromisoformat(a["start_date"]).timestamp() <= pivot for a in between)
    bad = client.get("/api/v3/athlete/activities", params={"before": "yesterday"}, headers=auth)
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "before"


def test_activity_detail_and_not_found(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    everything = _all_activities(client, auth)
    with_photo = next(a for a in everything if a["total_photo_count"] > 0)
    detail = client.get(f"/api/v3/activities/{with_photo['id']}", headers=auth).json()
    assert detail["resource_state"] == 3
    assert "description" in detail
    assert set(detail["photos"]["primary"]["urls"]) == {"100", "600"}
    assert detail["photos"]["count"] == with_photo["total_photo_count"]
    assert len(decode_polyline(detail["map"]["polyline"])) > len(decode_polyline(with_photo["map"]["summary_polyline"]))

    without_photo = next(a for a in everything if a["total_photo_count"] == 0)
    photos = client.get(f"/api/v3/activities/{without_photo['id']}", headers=auth).json()["photos"]
    assert photos == {"primary": None, "count": 0}

    private = next(a for a in everything if a["private"])
    assert client.get(f"/api/v3/activities/{private['id']}", headers=auth).status_code == 200

    for missing in ("1", "not-a-number"):
        response = client.get(f"/api/v3/activities/{missing}", headers=auth)
        assert response.status_code == 404
        assert response.json() == {
            "message": "Record Not Found",
            "errors": [{"resource": "Activity", "field": "id", "code": "not found"}],
        }
        assert response.headers["X-RateLimit-Limit"] == "200,2000"


def test_athlete_stats(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    everything = _all_activities(client, auth)
    response = client.get("/api/v3/athletes/12345/stats", headers=auth)
    assert response.status_code == 200
    stats = response.json()
    public_runs = [a for a in everything if a["sport_type"] in ("Run", "TrailRun") and a["visibility"] == "everyone"]
    assert stats["all_run_totals"]["count"] == len(public_runs)
    assert stats["all_run_totals"]["distance"] == pytest.approx(sum(a["distance"] for a in public_runs), abs=0.2)
    assert stats["all_run_totals"]["moving_time"] == sum(a["moving_time"] for a in public_runs)
    recent_cutoff = T0 - 28 * 86400
    recent = [a for a in public_runs if datetime.fromisoformat(a["start_date"]).timestamp() >= recent_cutoff]
    assert stats["recent_run_totals"]["count"] == len(recent) < len(public_runs)
    for group in ("run", "ride", "swim"):
        for period in ("recent", "ytd", "all"):
            totals = stats[f"{period}_{group}_totals"]
            assert set(totals) == {
                "count",
                "distance",
                "moving_time",
                "elapsed_time",
                "elevation_gain",
                "achievement_count",
            }
    assert stats["all_swim_totals"]["count"] > 0
    forbidden = client.get("/api/v3/athletes/999/stats", headers=auth)
    assert forbidden.status_code == 403
    assert forbidden.json()["message"] == "Forbidden"


def test_seed_invariants(client: httpx.Client, sim: SimulatorState) -> None:
    everything = _all_activities(client, _login(client, sim))
    assert len({a["id"] for a in everything}) == 40
    assert sum(a["private"] for a in everything) >= 5
    assert all(a["visibility"] == "only_me" for a in everything if a["private"])
    assert sum(not a["private"] and a["visibility"] != "everyone" for a in everything) >= 5
    legacy = {"Run": "Run", "TrailRun": "Run", "Ride": "Ride", "MountainBikeRide": "Ride", "VirtualRide": "VirtualRide"}
    assert len({a["sport_type"] for a in everything}) >= 5
    no_gps = [a for a in everything if a["map"]["summary_polyline"] == ""]
    assert no_gps
    assert {a["sport_type"] for a in no_gps} <= {"Swim", "VirtualRide"}
    for activity in everything:
        assert activity["type"] == legacy.get(activity["sport_type"], activity["sport_type"])
        assert activity["start_date"].endswith("Z")
        assert activity["start_date_local"].endswith("Z")
        assert T0 - 91 * 86400 < datetime.fromisoformat(activity["start_date"]).timestamp() < T0
        assert activity["elapsed_time"] >= activity["moving_time"] > 0
        assert activity["max_speed"] > activity["average_speed"] > 0
        assert activity["athlete"] == {"id": 12345, "resource_state": 1}
        assert activity["map"]["id"] == f"a{activity['id']}"
        if activity["map"]["summary_polyline"]:
            points = decode_polyline(activity["map"]["summary_polyline"])
            assert len(points) >= 5
            assert points[0] == points[-1]  # a loop
            lat, lng = activity["start_latlng"]
            assert abs(points[0][0] - lat) < 0.01 and abs(points[0][1] - lng) < 0.01
    # Same seed, same day: identical data from a second simulator.
    again = create_simulator(clock=FakeClock(T0)).state.sim
    assert again.list_activities(before=None, after=None, page=1, per_page=200) == everything


def test_polyline_codec_matches_googles_reference() -> None:
    points = [(38.5, -120.2), (40.7, -120.95), (43.252, -126.453)]
    assert encode_polyline(points) == "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
    assert decode_polyline("_p~iF~ps|U_ulLnnqC_mqNvxq`@") == points
    with pytest.raises(ValueError):
        decode_polyline("_p~iF~ps|U_")


# ---- rate limits ----


def test_rate_limit_headers_count_every_api_request(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    first = client.get("/api/v3/athlete", headers=auth)
    assert first.headers["X-RateLimit-Limit"] == "200,2000"
    assert first.headers["X-ReadRateLimit-Limit"] == "100,1000"
    assert _usage(first) == ("1,1", "1,1")
    assert _usage(client.get("/api/v3/athlete")) == ("2,2", "2,2")  # a 401 counts too
    assert _usage(client.get("/api/v3/activities/1", headers=auth)) == ("3,3", "3,3")
    assert _refresh(client, sim.refresh_token or "").status_code == 200  # /oauth is not counted
    assert _usage(client.get("/api/v3/athlete", headers=auth)) == ("4,4", "4,4")


def test_429_past_the_limit_and_counting_continues(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    assert client.post("/_sim/limits", json={"read_limit_15min": 3}).json()["limits"]["read_limit_15min"] == 3
    assert [client.get("/api/v3/athlete", headers=auth).status_code for _ in range(3)] == [200, 200, 200]
    limited = client.get("/api/v3/athlete", headers=auth)
    assert limited.status_code == 429
    assert limited.json() == RATE_LIMITED
    assert limited.headers["X-ReadRateLimit-Limit"] == "3,1000"
    assert _usage(limited) == ("4,4", "4,4")
    assert _usage(client.get("/api/v3/athlete", headers=auth)) == ("5,5", "5,5")
    assert sim.stats()["usage"]["read_usage_15min"] == 5


def test_overall_limit_also_triggers_429(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    client.post("/_sim/usage", json={"usage_day": 2000})
    response = client.get("/api/v3/athlete", headers=auth)
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Usage"] == "1,2001"


def test_window_resets_at_the_next_quarter_hour(client: httpx.Client, sim: SimulatorState, clock: FakeClock) -> None:
    clock.now = datetime(2024, 6, 1, 10, 14, 55, tzinfo=UTC).timestamp()
    auth = _login(client, sim)
    sim.set_limits(read_limit_15min=2)
    assert [client.get("/api/v3/athlete", headers=auth).status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(4)  # 10:14:59, still the same window
    assert client.get("/api/v3/athlete", headers=auth).status_code == 429
    clock.advance(1)  # 10:15:00
    response = client.get("/api/v3/athlete", headers=auth)
    assert response.status_code == 200
    assert _usage(response) == ("1,5", "1,5")


def test_daily_window_resets_at_utc_midnight(client: httpx.Client, sim: SimulatorState, clock: FakeClock) -> None:
    clock.now = datetime(2024, 6, 1, 23, 59, 50, tzinfo=UTC).timestamp()
    auth = _login(client, sim)
    sim.set_usage(usage_day=1500, read_usage_day=999)
    assert _usage(client.get("/api/v3/athlete", headers=auth)) == ("1,1501", "1,1000")
    assert client.get("/api/v3/athlete", headers=auth).status_code == 429
    clock.advance(10)  # 00:00:00 UTC
    response = client.get("/api/v3/athlete", headers=auth)
    assert response.status_code == 200
    assert _usage(response) == ("1,1", "1,1")


# ---- faults ----


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_fault_for_count_requests(client: httpx.Client, sim: SimulatorState, status: int) -> None:
    auth = _login(client, sim)
    assert client.post("/_sim/fault", json={"kind": f"http_{status}", "count": 2}).status_code == 200
    faulted = [client.get("/api/v3/athlete", headers=auth) for _ in range(3)]
    assert [r.status_code for r in faulted] == [status, status, 200]
    assert faulted[0].json()["message"]
    assert faulted[0].headers["content-type"].startswith("application/json")
    assert [_usage(r)[0] for r in faulted] == ["1,1", "2,2", "3,3"]


def test_fault_until_cleared_and_control_api_unaffected(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    client.post("/_sim/fault", json={"kind": "http_503", "count": None})
    assert [client.get("/api/v3/athlete", headers=auth).status_code for _ in range(4)] == [503] * 4
    assert client.get("/_sim/stats").json()["fault"]["kind"] == "http_503"
    assert _refresh(client, sim.refresh_token or "").status_code == 200  # no path_prefix: only /api/v3
    client.post("/_sim/fault", json={"kind": "none"})
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200


def test_fault_with_path_prefix_hits_the_token_endpoint(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    sim.set_fault("http_502", count=1, path_prefix="/oauth/token")
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200
    refresh_token = sim.refresh_token or ""
    assert _refresh(client, refresh_token).status_code == 502
    assert _refresh(client, refresh_token).status_code == 200  # the faulted call did not rotate the token


def test_timeout_fault_outlasts_the_client_timeout(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    sim.set_fault("timeout", count=1, delay_s=600.0)
    with pytest.raises(httpx.ReadTimeout):  # held far past the client's patience
        client.get("/api/v3/athlete", headers=auth, timeout=0.2)
    assert wait_until(lambda: sim.held == 0, 5)  # the client hung up: the held request ended
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200  # count used up
    assert sim.stats()["usage"]["usage_15min"] == 2


def test_a_held_request_is_answered_when_its_delay_runs_out_or_on_release(
    client: httpx.Client, sim: SimulatorState
) -> None:
    auth = _login(client, sim)
    sim.set_fault("timeout", count=1, delay_s=0.05)
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200  # the short delay ran out

    sim.set_fault("timeout", count=1, delay_s=600.0)
    answers: list[int] = []
    waiting = threading.Thread(
        target=lambda: answers.append(client.get("/api/v3/athlete", headers=auth, timeout=30).status_code)
    )
    waiting.start()
    assert wait_until(lambda: sim.held == 1, 5)
    assert answers == []  # held: no answer while the delay lasts
    sim.release_held()
    waiting.join(10)
    assert answers == [200] and sim.held == 0
    assert sim.stats()["usage"]["usage_15min"] == 2


def test_malformed_json_fault(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    client.post("/_sim/fault", json={"kind": "malformed_json", "count": 1})
    response = client.get("/api/v3/athlete/activities", headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.text.startswith("[{")
    assert response.headers["X-RateLimit-Usage"] == "1,1"
    with pytest.raises(ValueError):
        response.json()
    assert len(client.get("/api/v3/athlete/activities", headers=auth).json()) == 30


def test_reset_fault_drops_the_connection(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    client.post("/_sim/fault", json={"kind": "reset", "count": 1})
    with pytest.raises(httpx.TransportError):
        client.get("/api/v3/athlete", headers=auth)
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200
    assert sim.stats()["usage"]["usage_15min"] == 2  # the dropped request was billed


@pytest.mark.parametrize(
    "server_options", [{"loop": "asyncio", "http": "h11"}, {"loop": "uvloop", "http": "httptools"}]
)
def test_reset_fault_works_on_each_uvicorn_stack(server_options: dict[str, str]) -> None:
    app = create_simulator(clock=FakeClock(T0))
    app.state.sim.set_fault("reset", count=1, path_prefix="/oauth")
    with serve_in_thread(app, **server_options) as base_url, httpx.Client(base_url=base_url) as client:
        # ReadError ("connection reset by peer") rather than RemoteProtocolError proves an RST, not a FIN.
        with pytest.raises(httpx.ReadError):
            _refresh(client, "sim-refresh-0")
        assert _refresh(client, "sim-refresh-0").status_code == 200


async def test_reset_fault_in_process_raises() -> None:
    app = create_simulator(clock=FakeClock(T0))
    app.state.sim.set_fault("reset")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        with pytest.raises(SimulatedConnectionReset):
            await client.get("/api/v3/athlete")


# ---- control API ----


def test_control_activities_upsert_and_delete(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    newest = _all_activities(client, auth)[0]
    merged = client.post("/_sim/activities", json={"id": newest["id"], "name": "Renamed", "private": True})
    assert merged.status_code == 200
    assert merged.json()["name"] == "Renamed"
    assert merged.json()["distance"] == newest["distance"]  # partial update keeps the rest
    detail = client.get(f"/api/v3/activities/{newest['id']}", headers=auth).json()
    assert (detail["name"], detail["private"]) == ("Renamed", True)

    created = client.post("/_sim/activities", json={"name": "Brand new", "start_date": "2024-06-01T09:00:00Z"}).json()
    assert created["id"] not in {newest["id"]}
    listed = _all_activities(client, auth)
    assert listed[0]["id"] == created["id"]
    assert len(listed) == 41

    assert client.delete(f"/_sim/activities/{created['id']}").status_code == 204
    assert client.get(f"/api/v3/activities/{created['id']}", headers=auth).status_code == 404
    assert client.delete(f"/_sim/activities/{created['id']}").status_code == 404
    assert client.post("/_sim/activities", json={"start_date": "soon"}).status_code == 400


def test_control_usage_limits_stats_and_reset(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    assert client.post("/_sim/usage", json={"usage_15min": 50, "read_usage_15min": 40}).status_code == 200
    response = client.get("/api/v3/activities/1", headers=auth)
    assert _usage(response) == ("51,1", "41,1")
    client.post("/_sim/limits", json={"limit_15min": 60, "limit_day": 600})
    assert client.get("/api/v3/athlete", headers=auth).headers["X-RateLimit-Limit"] == "60,600"

    stats = client.get("/_sim/stats").json()
    assert stats["calls"] == {"POST /oauth/token": 1, "GET /api/v3/activities/{id}": 1, "GET /api/v3/athlete": 1}
    assert stats["total_api_calls"] == 2
    assert stats["token_refreshes"] == 1
    assert stats["usage"] == {"usage_15min": 52, "usage_day": 2, "read_usage_15min": 42, "read_usage_day": 2}

    assert client.post("/_sim/reset").status_code == 200
    stats = client.get("/_sim/stats").json()
    assert (stats["calls"], stats["refresh_token"], stats["limits"]["limit_15min"]) == ({}, "sim-refresh-0", 200)
    assert client.get("/api/v3/athlete", headers=auth).status_code == 401  # tokens were reset too


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sim/fault", b'{"kind": "explode"}'),
        ("/_sim/fault", b'{"kind": "timeout", "delay_s": -1}'),
        ("/_sim/fault", b'{"kind": "http_500", "colour": "red"}'),
        ("/_sim/limits", b'{"limit_15min": "many"}'),
        ("/_sim/usage", b'{"usage_15min": -1}'),
        ("/_sim/usage", b"{not json"),
        ("/_sim/activities", b"[1, 2]"),
        ("/_sim/limits", b"x" * 70_000),
    ],
)
def test_control_rejects_bad_input(client: httpx.Client, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"] == "Bad Request"


def test_in_process_state_methods() -> None:
    config = SimulatorConfig(activity_count=12, athlete_id=7)
    state = create_simulator(config, clock=FakeClock(T0)).state.sim
    assert len(state.activities) == 12
    assert state.athlete["id"] == 7
    assert state.set_fault("http_500", count=1) == {
        "kind": "http_500",
        "count": 1,
        "delay_s": 30.0,
        "path_prefix": None,
    }
    assert state.take_fault("/api/v3/athlete") is not None
    assert state.take_fault("/api/v3/athlete") is None  # count used up
    with pytest.raises(ValueError):
        state.set_limits(limit_15min=0)


# ---- the athlete revokes the app; oauth/revoke; dead tokens ----


def test_revoke_grant_kills_every_token_and_a_new_authorization_starts_a_new_grant(
    client: httpx.Client, sim: SimulatorState
) -> None:
    # Two access tokens alive at once, as two service instances would hold them.
    first = _refresh(client, "sim-refresh-0").json()
    second = _refresh(client, first["refresh_token"]).json()
    assert client.post("/_sim/revoke_grant").json() == {"revoked": True}

    for token in (first["access_token"], second["access_token"]):
        response = client.get("/api/v3/athlete/activities", headers={"Authorization": f"Bearer {token}"})
        assert (response.status_code, response.json()) == (401, AUTH_ERROR)
    refused = _refresh(client, second["refresh_token"])
    assert (refused.status_code, refused.json()) == (400, BAD_REFRESH_TOKEN)
    stats = client.get("/_sim/stats").json()
    assert (stats["dead_access_presented"], stats["dead_refresh_presented"]) == (2, 1)
    assert (stats["grant"], stats["grants_revoked"], stats["refresh_token"]) == (1, 1, None)
    assert client.post("/_sim/revoke").json() == {"revoked": False}  # nothing left to revoke

    granted = _code_exchange(client)
    assert granted.status_code == 200
    fresh = {"Authorization": f"Bearer {granted.json()['access_token']}"}
    assert client.get("/api/v3/athlete", headers=fresh).status_code == 200
    assert _refresh(client, granted.json()["refresh_token"]).status_code == 200
    # The old grant's tokens stay dead in the new one.
    assert (
        client.get("/api/v3/athlete", headers={"Authorization": f"Bearer {first['access_token']}"}).status_code == 401
    )
    assert _refresh(client, second["refresh_token"]).status_code == 400
    stats = client.get("/_sim/stats").json()
    assert (stats["grant"], stats["code_exchanges"], stats["dead_refresh_presented"]) == (2, 1, 2)


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for the service's webhook endpoint: records every event posted to /webhook."""
    received: list[dict[str, Any]] = []

    async def webhook(request: Request) -> Response:
        received.append(
            {"content_type": request.headers.get("content-type"), "event": orjson.loads(await request.body())}
        )
        return Response(status_code=200)

    with serve_in_thread(Starlette(routes=[Route("/webhook", webhook, methods=["POST"])])) as url:
        yield url, received


def test_revoke_grant_posts_the_deauthorization_event(
    client: httpx.Client, sim: SimulatorState, clock: FakeClock, webhook_receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook_receiver
    auth = _login(client, sim)
    answer = client.post("/_sim/revoke_grant", json={"webhook_url": f"{url}/webhook", "subscription_id": 77})
    assert answer.status_code == 200
    assert answer.json() == {"revoked": True, "webhook": {"delivered": True, "status": 200}}
    assert received == [
        {
            "content_type": "application/json",
            "event": {
                "aspect_type": "update",
                "event_time": int(T0),
                "object_id": 12345,
                "object_type": "athlete",
                "owner_id": 12345,
                "subscription_id": 77,
                "updates": {"authorized": "false"},
            },
        }
    ]
    # The tokens were dead before the event went out.
    assert client.get("/api/v3/athlete", headers=auth).status_code == 401

    # Without subscription_id: the configured one. A receiver that is down is reported, not raised.
    _code_exchange(client)
    client.post("/_sim/revoke_grant", json={"webhook_url": f"{url}/webhook"})
    assert received[-1]["event"]["subscription_id"] == SimulatorConfig.webhook_subscription_id
    _code_exchange(client)
    gone = client.post("/_sim/revoke_grant", json={"webhook_url": "http://127.0.0.1:9/webhook"}).json()
    assert gone["revoked"] is True and gone["webhook"]["delivered"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"webhook_url": "http://example.com/webhook"},  # loopback only
        {"webhook_url": "ftp://127.0.0.1/webhook"},
        {"webhook_url": 5},
        {"subscription_id": "1"},
        {"subscription_id": 0},
        {"colour": "red"},
    ],
)
def test_revoke_grant_rejects_bad_input_and_revokes_nothing(
    client: httpx.Client, sim: SimulatorState, body: dict[str, Any]
) -> None:
    auth = _login(client, sim)
    response = client.post("/_sim/revoke_grant", json=body)
    assert response.status_code == 400 and response.json()["message"] == "Bad Request"
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
@pytest.mark.parametrize("with_hint", [True, False])
def test_oauth_revoke_with_either_token_ends_the_whole_grant(
    client: httpx.Client, sim: SimulatorState, which: str, with_hint: bool
) -> None:
    issued = _refresh(client, "sim-refresh-0").json()
    form = {"token": issued[which], **({"token_type_hint": which} if with_hint else {})}
    response = client.post("/oauth/revoke", data=form, headers=_basic("sim-client", "sim-secret"))
    assert response.status_code == 200
    auth = {"Authorization": f"Bearer {issued['access_token']}"}
    assert client.get("/api/v3/athlete", headers=auth).json() == AUTH_ERROR
    assert _refresh(client, issued["refresh_token"]).json() == BAD_REFRESH_TOKEN
    stats = client.get("/_sim/stats").json()
    assert stats["calls"]["POST /oauth/revoke"] == 1
    assert (stats["grants_revoked"], stats["refresh_token"]) == (1, None)
    # Revoking again, or a token never issued, is no error (RFC 7009): 200, nothing changes.
    again = client.post("/oauth/revoke", data=form, headers=_basic("sim-client", "sim-secret"))
    assert again.status_code == 200
    assert client.get("/_sim/stats").json()["grants_revoked"] == 1


def test_oauth_revoke_ignores_a_token_it_does_not_know(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    response = client.post("/oauth/revoke", data={"token": "f" * 40}, headers=_basic("sim-client", "sim-secret"))
    assert response.status_code == 200
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({}, "client_id"),
        (_basic("sim-client", "wrong"), "client_secret"),
        (_basic("other-app", "sim-secret"), "client_id"),
        ({"Authorization": "Basic not-base64!"}, "client_id"),
        ({"Authorization": "Bearer sim-secret"}, "client_id"),
        # The credentials belong in the Authorization header, not the form.
        ({"X-Ignored": "1"}, "client_id"),
    ],
)
def test_oauth_revoke_needs_the_applications_basic_credentials(
    client: httpx.Client, sim: SimulatorState, headers: dict[str, str], field: str
) -> None:
    auth = _login(client, sim)
    form = {"token": auth["Authorization"].removeprefix("Bearer "), **CLIENT}
    response = client.post("/oauth/revoke", data=form, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "message": "Bad Request",
        "errors": [{"resource": "Application", "field": field, "code": "invalid"}],
    }
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200  # nothing was revoked


@pytest.mark.parametrize(
    ("form", "field", "code"),
    [
        ({}, "token", "missing"),
        ({"token": ""}, "token", "missing"),
        ({"token": "x", "token_type_hint": "id"}, "token_type_hint", "invalid"),
    ],
)
def test_oauth_revoke_rejects_a_missing_token_or_unknown_hint(
    client: httpx.Client, sim: SimulatorState, form: dict[str, str], field: str, code: str
) -> None:
    response = client.post("/oauth/revoke", data=form, headers=_basic("sim-client", "sim-secret"))
    assert response.status_code == 400
    assert response.json()["errors"] == [{"resource": "Token", "field": field, "code": code}]
    assert sim.refresh_token == "sim-refresh-0"


def test_dead_tokens_presented_are_counted_apart_from_unknown_ones(
    client: httpx.Client, sim: SimulatorState, clock: FakeClock
) -> None:
    first = _refresh(client, "sim-refresh-0").json()
    assert _refresh(client, first["refresh_token"]).status_code == 200
    assert client.get("/_sim/stats").json()["dead_refresh_presented"] == 0  # a clean chain presents none

    for dead in ("sim-refresh-0", first["refresh_token"]):  # both rotated away
        assert _refresh(client, dead).json() == BAD_REFRESH_TOKEN
    assert _refresh(client, "never-issued").status_code == 400
    assert client.get("/api/v3/athlete", headers={"Authorization": "Bearer never-issued"}).status_code == 401
    stats = client.get("/_sim/stats").json()
    assert (stats["dead_refresh_presented"], stats["dead_access_presented"]) == (2, 0)

    auth = {"Authorization": f"Bearer {first['access_token']}"}
    assert client.get("/api/v3/athlete", headers=auth).status_code == 200  # rotated, but not expired
    clock.advance(6 * 3600)
    assert client.get("/athlete", headers=auth).status_code == 401  # expired: dead, in either layout
    assert client.get("/_sim/stats").json()["dead_access_presented"] == 1


def test_short_lived_access_tokens_of_many_holders_live_until_they_expire(clock: FakeClock) -> None:
    # Several service instances sharing one simulator each keep the access token they got.
    app = create_simulator(SimulatorConfig(access_token_ttl_s=60), clock=clock)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=5) as http:
        refresh_token, access_tokens = "sim-refresh-0", []
        for _ in range(30):
            issued = _refresh(http, refresh_token).json()
            refresh_token = issued["refresh_token"]
            access_tokens.append(issued["access_token"])
            assert issued["expires_in"] == 60
        for token in access_tokens:
            assert http.get("/athlete", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        clock.advance(60)
        assert http.get("/athlete", headers={"Authorization": f"Bearer {access_tokens[-1]}"}).status_code == 401
        assert app.state.sim.stats()["dead_refresh_presented"] == 0


# ---- both API layouts ----


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/athlete", "GET /api/v3/athlete"),
        ("/athlete/activities?per_page=5", "GET /api/v3/athlete/activities"),
        ("/activities/{newest}", "GET /api/v3/activities/{id}"),
        ("/athletes/12345/stats", "GET /api/v3/athletes/{id}/stats"),
    ],
)
def test_root_layout_serves_the_same_api_and_counts_it_under_the_old_names(
    client: httpx.Client, sim: SimulatorState, path: str, key: str
) -> None:
    auth = _login(client, sim)
    path = path.format(newest=_all_activities(client, auth)[0]["id"])
    before = client.get("/_sim/stats").json()["calls"].get(key, 0)
    old, new = client.get(f"/api/v3{path}", headers=auth), client.get(path, headers=auth)
    assert (old.status_code, new.status_code) == (200, 200)
    assert new.json() == old.json()
    assert _usage(new) == ("3,3", "3,3")  # billed like the old layout (the listing above was the first)
    unauthorized = client.get(path)
    assert (unauthorized.status_code, unauthorized.json()) == (401, AUTH_ERROR)
    calls = client.get("/_sim/stats").json()["calls"]
    assert calls[key] == before + 3
    assert not any(name.startswith(("GET /athlete", "GET /activities")) for name in calls)


def test_faults_hit_both_layouts(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    sim.set_fault("http_503", count=2, path_prefix="/api/v3/athlete/activities")
    assert client.get("/athlete", headers=auth).status_code == 200
    assert client.get("/athlete/activities", headers=auth).status_code == 503
    assert client.get("/api/v3/athlete/activities", headers=auth).status_code == 503
    sim.set_fault("http_500", count=1)  # no prefix: every API call, in either layout, and never /oauth
    assert _refresh(client, sim.refresh_token or "").status_code == 200
    assert client.get("/athletes/12345/stats", headers=auth).status_code == 500
    assert client.get("/unknown", headers=auth).status_code == 404  # unknown root paths are API paths too


# ---- what the activities carry ----


def test_device_names_vary_and_are_sometimes_absent(client: httpx.Client, sim: SimulatorState) -> None:
    auth = _login(client, sim)
    listed = _all_activities(client, auth)
    details = [client.get(f"/api/v3/activities/{a['id']}", headers=auth).json() for a in listed]
    for summary, detail in zip(listed, details, strict=True):
        assert summary.get("device_name") == detail.get("device_name")  # the list carries it as the detail does
        assert "device_name" not in detail or detail["device_name"] in DEVICES  # absent, never null
        if detail["sport_type"] == "VirtualRide":
            assert detail["device_name"] == "Zwift"
    names = [d.get("device_name") for d in details]
    assert sum(1 for n in names if n and n.startswith("Garmin")) >= 5
    assert {"Apple Watch Series 9", "Wahoo ELEMNT BOLT", "Zwift"} <= set(names)
    assert names.count(None) >= 3

    newest = listed[0]["id"]
    assert "device_name" not in client.post("/_sim/activities", json={"id": newest, "device_name": None}).json()
    assert client.post("/_sim/activities", json={"id": newest, "device_name": "Garmin Edge 840"}).status_code == 200
    assert client.get(f"/activities/{newest}", headers=auth).json()["device_name"] == "Garmin Edge 840"
    assert client.post("/_sim/activities", json={"id": newest, "device_name": 5}).status_code == 400
    assert "device_name" not in client.post("/_sim/activities", json={"name": "Typed in"}).json()  # manual


def test_one_public_activity_with_a_route_is_named_with_markup(client: httpx.Client, sim: SimulatorState) -> None:
    everything = _all_activities(client, _login(client, sim))
    public = [a for a in everything if a["visibility"] == "everyone" and not a["private"]]
    with_routes = [a for a in public if a["map"]["summary_polyline"]]
    assert len(with_routes) >= 15
    marked = [a for a in everything if a["name"] == MARKUP_NAME]
    assert MARKUP_NAME == "<img src=x onerror=alert(1)>"
    assert len(marked) == 1 and marked[0] in with_routes[:5]


# ---- with the real service ----


def test_the_service_keeps_its_token_chain_straight_through_rotations(tmp_path: Path) -> None:
    """The dead-token counter against the real client, over the root layout the harness wires."""
    with running_stack(tmp_path) as stack:
        assert stack.feed().status_code == 200
        for rotation in range(1, 4):
            stack.sim.control("expire")  # every access token dies; the refresh token lives on
            lists = stack.sim.calls(LIST_CALL)
            assert stack.post(PREFIX + "/refresh", headers=ADMIN).status_code == 202
            wait_for_calls(stack.sim, LIST_CALL, lists + 2)  # the 401, then the retry with a fresh token
            assert stack.sim.stats()["token_refreshes"] == 1 + rotation
        stats = stack.sim.stats()
        assert stats["dead_access_presented"] >= 3  # expired tokens were presented (and answered 401)
        assert stack.sim.dead_refresh_presented() == 0
        assert stack.sim.revoke_grant() == {"revoked": True}
        assert stack.sim.dead_refresh_presented() == 0  # revoked, but not presented yet
