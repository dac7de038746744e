"""Route maps end to end: `python -m service` against the simulator, the privacy trim and `route.svg` over HTTP.

The privacy claim is checked against the truth: the simulator's own activities give each route's
true start and end (the first and last points of the full `map.polyline` Strava holds), and every
point the service hands out, in the feed, the detail and the SVG, must lie outside the radius of
both. The SVG is checked to be exactly the drawing of the served (trimmed) pieces.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.projects.strava_integration.privacy import Point, haversine_m
from service.projects.strava_integration.route_svg import CSP, DEFAULTS, SvgParams, render, title_for
from service.projects.strava_integration.simulator import decode_polyline, encode_polyline
from tests.strava_harness import (
    ADMIN,
    LIST_CALL,
    PREFIX,
    Stack,
    assert_error,
    running_inprocess,
    running_simulator,
    running_stack,
    wait_for_calls,
)
from tests.support import wait_until

RADIUS_M = 300  # not the default, so the setting is seen to be read
SUBSCRIPTION = 4242
STRONG_ETAG = re.compile(r'^"[0-9a-f]{32}(?:-gz|-br)?"$')  # a suffix per content coding
SVG_URL = PREFIX + "/activities/{}/route.svg"
MAP_KEYS = {"summary_polyline", "polylines", "bounds"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STRAVA_PRIVACY_TRIM_METERS": str(RADIUS_M), "STRAVA_WEBHOOK_SUBSCRIPTION_ID": str(SUBSCRIPTION)}
    with running_stack(tmp_path_factory.mktemp("routes"), env=env) as running:
        running.subscription_id = SUBSCRIPTION
        yield running


def feed(stack: Stack) -> list[dict[str, Any]]:
    response = stack.feed("limit=200")
    assert response.status_code == 200, response.text
    return list(response.json()["activities"])


def true_ends(activity: dict[str, Any]) -> list[Point]:
    """Where the recording really starts and ends: Strava's full polyline, and its summary too."""
    ends: list[Point] = []
    for field in ("polyline", "summary_polyline"):
        points = decode_polyline(activity["map"][field]) if activity["map"].get(field) else []
        ends += [points[0], points[-1]] if points else []
    return ends


def served_pieces(route_map: dict[str, Any]) -> list[list[Point]]:
    assert set(route_map) == MAP_KEYS
    assert route_map["summary_polyline"] in route_map["polylines"]
    return [decode_polyline(p) for p in route_map["polylines"]]


def assert_outside(pieces: list[list[Point]], ends: list[Point], radius_m: float) -> int:
    """Every point, and points along every segment, at least `radius_m` from each end; returns points checked."""
    checked = 0
    for piece in pieces:
        assert len(piece) >= 2
        for a, b in itertools.pairwise(piece):
            for k in range(11):  # a straight segment drawn across a circle would be caught in between
                t = k / 10
                point = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
                for end in ends:
                    assert haversine_m(point, end) >= radius_m, (point, end)
                checked += 1
    return checked


def svg(stack: Stack, activity_id: int, query: str = "", **kwargs: Any) -> Any:
    return stack.get(SVG_URL.format(activity_id) + (f"?{query}" if query else ""), **kwargs)


# ---- the privacy trim ----


def test_no_served_point_lies_within_the_radius_of_a_true_start_or_end(stack: Stack) -> None:
    raw = {a["id"]: a for a in stack.sim.raw_activities()}
    items = feed(stack)
    with_routes = [i for i in items if raw[i["id"]]["map"]["summary_polyline"]]
    assert len(with_routes) >= 10, "the simulator seeds public activities with routes"
    checked = 0
    for item in with_routes:
        source = raw[item["id"]]
        ends = true_ends(source)
        assert item["map"] is not None, item["id"]  # the seeded loops are kilometres long
        pieces = served_pieces(item["map"])
        checked += assert_outside(pieces, ends, RADIUS_M)
        # Bounds are those of what remains, not of the whole route.
        lats = [p[0] for piece in pieces for p in piece]
        lngs = [p[1] for piece in pieces for p in piece]
        assert item["map"]["bounds"] == pytest.approx(
            {"south": min(lats), "north": max(lats), "west": min(lngs), "east": max(lngs)}
        )
        # The detail serves the same trimmed route, and never Strava's full polyline.
        detail = stack.api(f"/activities/{item['id']}")
        assert detail.status_code == 200, detail.text
        assert detail.json()["activity"]["map"] == item["map"]
        assert source["map"]["polyline"] not in detail.text
        # The SVG is exactly the drawing of the served pieces: nothing else reaches it.
        image = svg(stack, item["id"])
        assert image.status_code == 200
        assert image.content == render(pieces, DEFAULTS, title_for(item["id"]))
    assert checked > 1000


def test_a_route_shorter_than_the_radius_is_not_drawn(stack: Stack) -> None:
    start = (51.5, -0.12)
    walk = [(start[0] + i * 0.0002, start[1]) for i in range(10)]  # 200 m: inside the start's circle
    created = stack.sim.upsert(
        name="Round the block",
        private=False,
        visibility="everyone",
        map={"summary_polyline": encode_polyline(walk), "polyline": encode_polyline(walk)},
    )
    lists = stack.sim.calls(LIST_CALL)
    assert stack.post(PREFIX + "/refresh", headers=ADMIN).status_code == 202
    wait_for_calls(stack.sim, LIST_CALL, lists + 1)
    assert wait_until(lambda: created["id"] in {i["id"] for i in feed(stack)}, 5.0)
    [item] = [i for i in feed(stack) if i["id"] == created["id"]]
    assert item["map"] is None and item["route_svg"] is None
    assert stack.api(f"/activities/{created['id']}").json()["activity"]["map"] is None
    assert_error(svg(stack, created["id"]), 404, "not_found")


# ---- the SVG route ----


def test_every_route_svg_url_answers_with_the_image(stack: Stack) -> None:
    items = feed(stack)
    urls = [i["route_svg"] for i in items if i["route_svg"] is not None]
    assert urls and len(urls) < len(items)  # some activities have no route (swims, virtual rides)
    for item in items:
        assert (item["route_svg"] is None) == (item["map"] is None)
    for url in urls:
        response = stack.get(url)
        assert response.status_code == 200, (url, response.text)
        assert response.headers["content-type"] == "image/svg+xml"
        assert response.content.startswith(b"<svg ")


def test_svg_headers_etag_and_304(stack: Stack) -> None:
    target = next(i["id"] for i in feed(stack) if i["route_svg"])
    first = svg(stack, target, "w=400&h=300&stroke=%2300AA11&stroke_width=2.5")
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/svg+xml"
    assert first.headers["content-security-policy"] == CSP
    assert "script-src" not in CSP and "default-src 'none'" in CSP  # no script can run in it
    assert STRONG_ETAG.match(first.headers["etag"])
    assert "max-age=" in first.headers["cache-control"]
    assert b'width="400" height="300"' in first.content and b'stroke="#00aa11"' in first.content
    assert first.content == render(
        served_pieces(next(i for i in feed(stack) if i["id"] == target)["map"]),
        SvgParams(400, 300, "#00aa11", 2.5),
        title_for(target),
    )
    again = svg(
        stack, target, "w=400&h=300&stroke=%2300AA11&stroke_width=2.5", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    other = svg(stack, target, headers={"If-None-Match": first.headers["etag"]})
    assert other.status_code == 200 and other.headers["etag"] != first.headers["etag"]  # other parameters


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("w=63", "w"),
        ("w=1201", "w"),
        ("w=abc", "w"),
        ("h=0", "h"),
        ("h=1e3", "h"),
        ("stroke=red", "stroke"),
        ("stroke=%23ff00zz", "stroke"),
        ("stroke=%22%3E%3Cscript%3E", "stroke"),
        ("stroke_width=0", "stroke_width"),
        ("stroke_width=21", "stroke_width"),
        ("stroke_width=nan", "stroke_width"),
        ("colour=%23ffffff", "colour"),
        ("w=100&w=200", "w"),
    ],
)
def test_bad_svg_parameters_get_422_naming_the_parameter(stack: Stack, query: str, parameter: str) -> None:
    target = next(i["id"] for i in feed(stack) if i["route_svg"])
    body = assert_error(svg(stack, target, query), 422, "invalid_parameter", parameter)
    assert parameter in body["message"]


def test_hidden_unknown_and_route_less_activities_are_404_json(stack: Stack) -> None:
    items = feed(stack)
    route_less = next(i["id"] for i in items if i["route_svg"] is None)
    hidden = next(iter(stack.sim.hidden_ids()))
    for activity_id in (hidden, route_less, 1, 99_999_999_999_999):
        response = svg(stack, activity_id)
        assert_error(response, 404, "not_found")
        assert response.headers["content-type"] == "application/json"
    assert svg(stack, hidden, "w=1").status_code == 422  # parameters are checked first, for every id alike


def test_a_webhook_hide_takes_the_svg_away_at_once(stack: Stack) -> None:
    target = next(i["id"] for i in feed(stack) if i["route_svg"])
    assert svg(stack, target).status_code == 200  # rendered and cached
    # The simulator holds the refetch the event starts: the SVG must go before any new list arrives.
    stack.sim.fault("timeout", count=1, delay_s=600, path_prefix="/api/v3/athlete/activities")
    stack.sim.upsert(id=target, private=True, visibility="only_me")
    assert stack.webhook(object_id=target, aspect_type="update", updates={"private": "true"}).status_code == 200
    assert_error(svg(stack, target), 404, "not_found")
    assert target not in {i["id"] for i in feed(stack)}
    assert wait_until(lambda: stack.sim.state.held == 1, 5)  # the refetch is still unanswered
    stack.sim.state.release_held()


# ---- trim off, and a purge ----


@pytest.fixture(scope="module")
def untrimmed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("untrimmed")
    with running_simulator() as sim, running_inprocess(sim, tmp, time.time, STRAVA_PRIVACY_TRIM_METERS="0") as running:
        yield running


def test_trim_off_serves_the_original_polyline_unchanged(untrimmed: Stack) -> None:
    raw = {a["id"]: a for a in untrimmed.sim.raw_activities()}
    served = 0
    for item in feed(untrimmed):
        original = raw[item["id"]]["map"]["summary_polyline"]
        if not original:
            assert item["map"] is None
            continue
        assert item["map"]["summary_polyline"] == original
        assert item["map"]["polylines"] == [original]
        points = decode_polyline(original)
        assert item["map"]["bounds"]["south"] == min(p[0] for p in points)
        image = svg(untrimmed, item["id"])
        assert image.content == render([points], DEFAULTS, title_for(item["id"]))
        served += 1
    assert served >= 10


def test_a_purge_takes_every_svg_away(untrimmed: Stack) -> None:
    target = next(i["id"] for i in feed(untrimmed) if i["route_svg"])
    assert svg(untrimmed, target).status_code == 200
    # The athlete revokes the app on strava.com; Strava's deauthorization event follows.
    delivered = untrimmed.sim.revoke_grant(f"{untrimmed.base_url}{PREFIX}/webhook")
    assert delivered["revoked"] is True
    assert wait_until(lambda: svg(untrimmed, target).status_code != 200, 5.0)
    assert svg(untrimmed, target).status_code >= 400
