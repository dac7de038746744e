"""strava-integration over real HTTP, as visitors and the operator see it: `python -m service` against the simulator.

Feed shape and filters, the privacy rule, activity detail, stats, HTTP caching, the admin routes,
and the two start-up modes without Strava (sandbox, unconfigured). Every response and the whole
log are scanned for secrets and tokens when the module's service stops.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from service.projects.strava_integration.simulator import decode_polyline
from tests.strava_harness import (
    ADMIN,
    DETAIL_CALL,
    LIST_CALL,
    PREFIX,
    STATS_CALL,
    Stack,
    assert_error,
    running_stack,
    wait_for_calls,
)
from tests.support import SECRETS, ServiceProcess

TTL, STALE = 120, 900
ITEM_KEYS = {
    "id",
    "name",
    "sport_type",
    "start_date",
    "start_date_local",
    "distance_m",
    "moving_time_s",
    "elapsed_time_s",
    "total_elevation_gain_m",
    "average_speed_mps",
    "map",
    "strava_url",
    "device_name",
    "attribution",
    "route_svg",
}
FIELDS = {  # ours -> Strava's
    "name": "name",
    "sport_type": "sport_type",
    "start_date": "start_date",
    "start_date_local": "start_date_local",
    "distance_m": "distance",
    "moving_time_s": "moving_time",
    "elapsed_time_s": "elapsed_time",
    "total_elevation_gain_m": "total_elevation_gain",
    "average_speed_mps": "average_speed",
}
GROUPS = {
    "run": {"Run", "TrailRun", "VirtualRun"},
    "ride": {"Ride", "MountainBikeRide", "VirtualRide"},
    "swim": {"Swim"},
}
STRONG_ETAG = re.compile(r'^"[0-9a-f]{32}"$')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STRAVA_CACHE_TTL_SECONDS": str(TTL), "STRAVA_CACHE_STALE_SECONDS": str(STALE)}
    with running_stack(tmp_path_factory.mktemp("api"), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def raw(stack: Stack) -> dict[int, dict[str, Any]]:
    """The simulator's activities by id (this module never changes them)."""
    return {a["id"]: a for a in stack.sim.raw_activities()}


@pytest.fixture(scope="module")
def full_feed(stack: Stack) -> list[dict[str, Any]]:
    response = stack.feed("limit=200")
    assert response.status_code == 200, response.text
    return response.json()["activities"]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---- the feed ----


def test_every_feed_item_has_the_public_shape(stack: Stack, raw: dict[int, dict[str, Any]]) -> None:
    response = stack.feed("limit=200")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"activities", "count", "updated_at", "stale"}
    assert body["stale"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["updated_at"])
    items = body["activities"]
    assert body["count"] == len(items) == len(stack.sim.public_ids()) > 0
    assert [i["start_date"] for i in items] == sorted((i["start_date"] for i in items), reverse=True)
    maps = {"with": 0, "without": 0}
    for item in items:
        assert set(item) == ITEM_KEYS
        source = raw[item["id"]]
        for ours, theirs in FIELDS.items():
            assert item[ours] == source[theirs], (item["id"], ours)
        polyline = source["map"]["summary_polyline"]
        if not polyline:
            assert item["map"] is None
            maps["without"] += 1
            continue
        maps["with"] += 1
        assert set(item["map"]) == {"summary_polyline", "bounds"}
        assert item["map"]["summary_polyline"] == polyline
        bounds = item["map"]["bounds"]
        assert bounds["south"] <= bounds["north"] and bounds["west"] <= bounds["east"]
        points = decode_polyline(polyline)
        assert bounds == pytest.approx(
            {
                "south": min(p[0] for p in points),
                "north": max(p[0] for p in points),
                "west": min(p[1] for p in points),
                "east": max(p[1] for p in points),
            }
        )
    assert maps["with"] and maps["without"], maps  # both kinds were checked


def test_limit_and_sport_type_filter(stack: Stack, full_feed: list[dict[str, Any]]) -> None:
    default = stack.feed().json()
    assert default["count"] == min(30, len(full_feed))
    five = stack.feed("limit=5").json()
    assert five["count"] == 5 and five["activities"] == full_feed[:5]
    for sport in {i["sport_type"] for i in full_feed}:
        body = stack.feed(f"sport_type={sport}&limit=200").json()
        assert body["activities"] == [i for i in full_feed if i["sport_type"] == sport]
        assert body["count"] == len(body["activities"]) > 0
    kite = stack.feed("sport_type=Kitesurf").json()
    assert kite["count"] == 0 and kite["activities"] == []


def test_after_and_before_filter_by_start_time(stack: Stack, full_feed: list[dict[str, Any]]) -> None:
    starts = [int(epoch(i["start_date"])) for i in full_feed]
    after, before = starts[12], starts[3]  # newest first: index 3 is later than index 12
    between = stack.feed(f"after={after}&before={before}&limit=200").json()["activities"]
    assert between == [i for i, s in zip(full_feed, starts, strict=True) if after < s < before]
    assert len(between) == 8  # strictly between: both ends excluded
    only_after = stack.feed(f"after={after}&limit=200").json()["activities"]
    assert only_after == full_feed[:12]
    only_before = stack.feed(f"before={before}&limit=200").json()["activities"]
    assert only_before == full_feed[4:]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1e3", "limit"),
        ("limit=1.5", "limit"),
        ("limit=99999999999999999999999999999999", "limit"),
        ("limit=%EF%BC%95", "limit"),  # a full-width digit five
        ("sport_type=Run1", "sport_type"),
        ("sport_type=" + "A" * 41, "sport_type"),
        ("sport_type=Run%20Ride", "sport_type"),
        ("after=abc", "after"),
        ("before=-5", "before"),
        ("after=99999999999999999999", "after"),
        ("after=1700000000&before=1600000000", "before"),
        ("after=1700000000&before=1700000000", "before"),
    ],
)
def test_bad_parameters_get_422_naming_the_parameter(stack: Stack, query: str, parameter: str) -> None:
    body = assert_error(stack.feed(query), 422, "invalid_parameter", parameter)
    assert parameter in body["message"]
    assert body["request_id"]


@pytest.mark.parametrize("path", ["/feed", "/stats", "/activities/1"])
def test_data_routes_answer_head_and_refuse_other_methods(stack: Stack, path: str) -> None:
    # These routes are plain ASGI apps (the hot path), so Starlette's method handling is checked here.
    get = stack.get(PREFIX + path)
    head = stack.request("HEAD", PREFIX + path)
    assert head.status_code == get.status_code and head.content == b""
    if get.status_code == 200:
        assert head.headers["etag"] == get.headers["etag"]
        assert head.headers["content-length"] == get.headers["content-length"]
    post = stack.post(PREFIX + path)
    assert_error(post, 405, "method_not_allowed")
    assert post.headers["allow"] == "GET, HEAD"


# ---- privacy ----


def test_private_and_follower_only_activities_never_leave(
    stack: Stack, full_feed: list[dict[str, Any]], raw: dict[int, dict[str, Any]]
) -> None:
    hidden = stack.sim.hidden_ids()
    assert {raw[i]["visibility"] for i in hidden} == {"only_me", "followers_only"}
    assert not hidden & {i["id"] for i in full_feed}
    before = stack.sim.stats()["calls"]
    for activity_id in sorted(hidden):
        assert_error(stack.api(f"/activities/{activity_id}"), 404, "strava_not_found")
    # Hidden ids are answered from the cached public list: no detail call, no list call.
    after = stack.sim.stats()["calls"]
    assert after.get(DETAIL_CALL, 0) == before.get(DETAIL_CALL, 0)
    assert after.get(LIST_CALL, 0) == before.get(LIST_CALL, 0)


def test_stats_count_only_public_activities(stack: Stack, raw: dict[int, dict[str, Any]]) -> None:
    stats = stack.api("/stats").json()
    public = stack.sim.public_ids()
    discriminating = 0
    for group, sports in GROUPS.items():
        members = [a for a in raw.values() if a["sport_type"] in sports]
        shown = sum(1 for a in members if a["id"] in public)
        assert stats["all_time"][group]["count"] == shown, group
        assert stats["all_time"][group]["distance_m"] == pytest.approx(
            sum(a["distance"] for a in members if a["id"] in public), abs=0.2
        )
        discriminating += shown != len(members)
    assert discriminating, "the seed has hidden activities in at least one group, so this check can fail"


# ---- detail ----


def test_activity_detail_has_description_and_photo(stack: Stack, raw: dict[int, dict[str, Any]]) -> None:
    public = stack.sim.public_ids()
    chosen = next(
        a for a in sorted(raw.values(), key=lambda a: a["id"]) if a["id"] in public and a["photos"]["primary"]
    )
    calls = stack.sim.calls(DETAIL_CALL)
    response = stack.api(f"/activities/{chosen['id']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"activity", "updated_at", "stale"} and body["stale"] is False
    item = body["activity"]
    assert set(item) == ITEM_KEYS | {"description", "photo_url", "max_speed_mps", "timezone"}
    assert item["id"] == chosen["id"] and item["name"] == chosen["name"]
    assert item["description"] == chosen["description"]
    assert item["photo_url"] == chosen["photos"]["primary"]["urls"]["600"]  # the largest size
    assert item["max_speed_mps"] == chosen["max_speed"]
    assert stack.sim.calls(DETAIL_CALL) == calls + 1
    assert stack.api(f"/activities/{chosen['id']}").content == response.content
    assert stack.sim.calls(DETAIL_CALL) == calls + 1  # cached

    without_photo = next(a for a in raw.values() if a["id"] in public and not a["photos"]["primary"])
    assert stack.api(f"/activities/{without_photo['id']}").json()["activity"]["photo_url"] is None


def test_unknown_activities_are_404_without_an_upstream_call(stack: Stack) -> None:
    before = stack.sim.stats()["total_api_calls"]
    for activity_id in (1, 999_999_999_999, 2**53):
        assert_error(stack.api(f"/activities/{activity_id}"), 404, "strava_not_found")
    assert_error(stack.api("/activities/not-a-number"), 404, "not_found")
    assert stack.sim.stats()["total_api_calls"] == before


# ---- stats ----


def test_stats_have_run_ride_and_swim_totals_for_three_periods(stack: Stack) -> None:
    response = stack.api("/stats")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"recent", "year_to_date", "all_time", "updated_at", "stale"}
    strava = stack.sim.state.athlete_stats()
    for period, prefix in (("recent", "recent"), ("year_to_date", "ytd"), ("all_time", "all")):
        assert set(body[period]) == {"run", "ride", "swim"}
        for sport in ("run", "ride", "swim"):
            totals = strava[f"{prefix}_{sport}_totals"]
            assert body[period][sport] == {
                "count": totals["count"],
                "distance_m": totals["distance"],
                "moving_time_s": totals["moving_time"],
                "elapsed_time_s": totals["elapsed_time"],
                "elevation_gain_m": totals["elevation_gain"],
            }
    assert body["all_time"]["run"]["count"] >= body["year_to_date"]["run"]["count"] >= body["recent"]["run"]["count"]
    assert body["all_time"]["run"]["count"] > 0 and body["all_time"]["ride"]["count"] > 0


# ---- HTTP caching ----


@pytest.mark.parametrize("path", ["/feed?limit=7", "/stats", "/activities/{public}"])
def test_strong_etags_and_cache_control(stack: Stack, path: str, full_feed: list[dict[str, Any]]) -> None:
    path = path.format(public=full_feed[0]["id"])
    first = stack.api(path)
    second = stack.api(path)
    assert first.status_code == second.status_code == 200
    etag = first.headers["etag"]
    assert STRONG_ETAG.fullmatch(etag), etag
    assert first.headers["cache-control"] == f"public, max-age={TTL}, stale-while-revalidate={STALE}"
    assert second.headers["etag"] == etag
    assert second.content == first.content  # the same bytes: serialized once, served as they are

    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        not_modified = stack.api(path, headers={"If-None-Match": header})
        assert not_modified.status_code == 304, header
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        assert not_modified.headers["cache-control"] == first.headers["cache-control"]
    other = stack.api(path, headers={"If-None-Match": '"0123456789abcdef0123456789abcdef"'})
    assert other.status_code == 200 and other.content == first.content and other.headers["etag"] == etag


def test_different_queries_have_different_etags(stack: Stack) -> None:
    etags = {stack.feed(q).headers["etag"] for q in ("limit=1", "limit=2", "sport_type=Run", "")}
    assert len(etags) == 4


# ---- admin ----


@pytest.mark.parametrize(("method", "path"), [("GET", "/status"), ("POST", "/refresh"), ("GET", "/auth/start")])
def test_admin_routes_need_the_key(stack: Stack, method: str, path: str) -> None:
    calls = stack.sim.stats()["total_api_calls"]
    missing = stack.request(method, PREFIX + path)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "X-API-Key"
    wrong = stack.request(method, PREFIX + path, headers={"X-API-Key": SECRETS["STRAVA_ADMIN_API_KEY"][:-1] + "X"})
    assert_error(wrong, 403, "forbidden")
    assert_error(stack.request(method, PREFIX + path, headers={"X-API-Key": ""}), 401, "unauthorized")
    assert stack.sim.stats()["total_api_calls"] == calls


def test_refresh_starts_a_new_list_call(stack: Stack) -> None:
    lists, stats = stack.sim.calls(LIST_CALL), stack.sim.calls(STATS_CALL)
    response = stack.post(PREFIX + "/refresh", headers=ADMIN)
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    wait_for_calls(stack.sim, LIST_CALL, lists + 1)
    wait_for_calls(stack.sim, STATS_CALL, stats + 1)


def test_status_shows_expiry_budget_cache_and_errors_but_no_token(stack: Stack, raw: dict[int, Any]) -> None:
    # A detail fetch that fails gives /status a last error to show.
    public = sorted(stack.sim.public_ids())
    uncached = public[len(public) // 2]
    stack.sim.fault("http_500", count=1, path_prefix=f"/api/v3/activities/{uncached}")
    quarter = time.time() // 900  # Strava's usage counts restart every quarter hour
    assert_error(stack.api(f"/activities/{uncached}"), 502, "strava_unavailable")

    response = stack.api("/status", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    status = response.json()
    token = status["token"]
    assert token["auth_ok"] is True and token["configured"] is True
    expires = datetime.fromisoformat(token["access_token_expires_at"].replace("Z", "+00:00"))
    assert expires.timestamp() > datetime.now().timestamp() + 3600
    budget = status["budget"]
    if time.time() // 900 == quarter:
        assert 0 < budget["usage"]["read"]["15min"] <= stack.sim.stats()["usage"]["read_usage_15min"]
    assert budget["limits"]["read"]["15min"] == stack.sim.state.config.read_limit_15min
    assert budget["blocked"] is False
    assert status["cache"]["entries"] >= 3
    assert {"activities", "stats"} <= set(status["cache"]["ages_s"])
    assert all(age >= 0 for age in status["cache"]["ages_s"].values())
    assert status["last_upstream_error"]["code"] == "strava_unavailable"
    assert status["last_upstream_error"]["status"] == 502
    assert set(status["webhook"]) >= {"accepted", "ignored", "invalid"}

    stack.learn_tokens()
    saved = stack.token_file.read_text()
    live_tokens = [stack.sim.stats()["refresh_token"], *re.findall(r'"(?:access|refresh)_token":"([^"]+)"', saved)]
    assert len(live_tokens) == 3
    for secret in [*live_tokens, *SECRETS.values()]:
        assert secret not in response.text

    # Health says Strava is failing until a call succeeds again.
    assert stack.health()["status"] == "warn" and "strava_unavailable" in stack.health()["output"]
    assert stack.api(f"/activities/{uncached}").status_code == 200
    assert stack.health()["status"] == "pass"


def test_health_passes_and_metrics_need_the_bearer_token(stack: Stack) -> None:
    check = stack.health()
    assert check["status"] == "pass" and "ok" in check["output"]
    assert_error(stack.get("/metrics"), 401, "unauthorized")
    text = stack.metrics()
    assert "siteapi_strava_upstream_requests_total" in text
    assert 'siteapi_strava_cache_requests_total{resource="feed",result="hit"}' in text


# ---- without Strava: sandbox and unconfigured ----


def test_sandbox_serves_a_simulated_feed_and_says_so(sandbox_service: ServiceProcess) -> None:
    base = sandbox_service.base_url
    feed = httpx.get(base + PREFIX + "/feed", timeout=10)
    assert feed.status_code == 200, feed.text
    assert feed.json()["count"] > 0 and feed.json()["stale"] is False
    health = httpx.get(base + "/health", timeout=10)
    check = health.json()["checks"]["strava-integration"][0]
    assert "sandbox" in check["output"]
    assert httpx.get(base + "/", timeout=10).json()["sandbox"] is True
    lines = sandbox_service.logs()
    assert any(line.get("event") == "strava_sandbox" and line.get("level") == "warning" for line in lines)
    log = sandbox_service.raw_log()
    for secret in SECRETS.values():
        assert secret not in log and secret not in feed.text and secret not in health.text


def test_without_credentials_the_feed_is_503_and_health_warns(service_factory: type[ServiceProcess], tmp_path) -> None:
    service = service_factory(env={"DATA_DIR": str(tmp_path)}).start()
    feed = httpx.get(service.base_url + PREFIX + "/feed", timeout=10)
    body = assert_error(feed, 503, "strava_not_configured")
    assert "/api/strava-integration/auth/start" in body["message"]
    health = httpx.get(service.base_url + "/health", timeout=10)
    assert health.status_code == 200
    check = health.json()["checks"]["strava-integration"][0]
    assert check["status"] == "warn" and "not configured" in check["output"]
    assert httpx.get(service.base_url + "/readyz", timeout=10).status_code == 200
    assert httpx.get(service.base_url + "/", timeout=10).json()["sandbox"] is False
    service.stop()
    assert not any(line.get("event") == "strava_sandbox" for line in service.logs())
