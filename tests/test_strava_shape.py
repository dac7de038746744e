"""Unit tests for what leaves the service: the privacy rule, the public map, and the public shapes.

The exact key sets are pinned on purpose: a new field in a public shape is a privacy decision,
and should show up here as a failing test until it is made deliberately.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.projects.strava_integration import shape
from service.projects.strava_integration.polyline import MAX_POLYLINE
from service.projects.strava_integration.privacy import TrimmedRoutes

# Google's documented example: https://developers.google.com/maps/documentation/utilities/polylinealgorithm
# (the codec itself is tested in test_strava_polyline, the trim in test_strava_privacy).
GOOGLE_EXAMPLE = "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
GOOGLE_BOUNDS = {"south": 38.5, "west": -126.453, "north": 43.252, "east": -120.2}
ROUTES = TrimmedRoutes(0)  # no trim: the route is served byte for byte

# The one declaration of the public item's keys; test_strava_api checks the served feed against it.
SUMMARY_KEYS = {
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
DETAIL_KEYS = SUMMARY_KEYS | {"description", "photo_url", "max_speed_mps", "timezone"}
TOTAL_KEYS = {"count", "distance_m", "moving_time_s", "elapsed_time_s", "elevation_gain_m"}


def activity(**fields: Any) -> dict[str, Any]:
    """A public activity as Strava sends it (trimmed), with `fields` on top."""
    return {
        "id": 12345678987654321,
        "name": "Morning Run",
        "type": "Run",
        "sport_type": "TrailRun",
        "start_date": "2024-05-01T06:00:00Z",
        "start_date_local": "2024-05-01T08:00:00Z",
        "timezone": "(GMT+01:00) Europe/Berlin",
        "distance": 10234.5,
        "moving_time": 3600,
        "elapsed_time": 3720,
        "total_elevation_gain": 120.0,
        "average_speed": 2.843,
        "max_speed": 4.1,
        "private": False,
        "visibility": "everyone",
        "map": {"id": "a123", "summary_polyline": GOOGLE_EXAMPLE, "polyline": GOOGLE_EXAMPLE},
        **fields,
    }


# ---- the privacy rule fails closed ----


def test_an_activity_is_public_only_when_not_private_and_visible_to_everyone() -> None:
    assert shape.is_public({"private": False, "visibility": "everyone"}) is True
    assert shape.is_public(activity()) is True


@pytest.mark.parametrize(
    "fields",
    [
        {"private": True},
        {"private": None},
        {"private": "false"},
        {"private": 0},
        {"private": []},
        {"visibility": "followers_only"},
        {"visibility": "only_me"},
        {"visibility": "Everyone"},
        {"visibility": " everyone"},
        {"visibility": None},
        {"visibility": ["everyone"]},
    ],
    ids=repr,
)
def test_anything_but_exactly_false_and_everyone_is_private(fields: dict[str, Any]) -> None:
    assert shape.is_public(activity(**fields)) is False


@pytest.mark.parametrize("missing", ["private", "visibility"])
def test_a_missing_privacy_field_keeps_the_activity_private(missing: str) -> None:
    raw = activity()
    del raw[missing]
    assert shape.is_public(raw) is False


@pytest.mark.parametrize("raw", [None, [], "public", 1, [("private", False), ("visibility", "everyone")]], ids=repr)
def test_what_is_not_an_object_is_private(raw: Any) -> None:
    assert shape.is_public(raw) is False


# ---- the public map ----


def test_the_public_map_is_the_summary_polyline_its_pieces_and_their_bounds_only() -> None:
    assert shape.public_map(activity(), ROUTES) == {
        "summary_polyline": GOOGLE_EXAMPLE,
        "polylines": [GOOGLE_EXAMPLE],
        "bounds": GOOGLE_BOUNDS,
    }


@pytest.mark.parametrize(
    "map_field",
    [None, {}, {"summary_polyline": None}, {"summary_polyline": ""}, {"summary_polyline": ["x"]}],
    ids=repr,
)
def test_no_map_without_a_summary_polyline(map_field: Any) -> None:
    assert shape.public_map(activity(map=map_field), ROUTES) is None


@pytest.mark.parametrize("encoded", [GOOGLE_EXAMPLE[:-1], "_p~iF", GOOGLE_EXAMPLE + " ", "\x7f?", "~" * 10 + "?"])
def test_a_malformed_or_truncated_polyline_gives_no_map(encoded: str) -> None:
    raw = activity(map={"summary_polyline": encoded})
    assert shape.public_map(raw, ROUTES) is None
    assert shape.summary(raw, ROUTES)["map"] is None


def test_polylines_longer_than_the_limit_are_not_served() -> None:
    at_limit = "??" * (MAX_POLYLINE // 2)
    assert len(at_limit) == MAX_POLYLINE
    assert shape.public_map(activity(map={"summary_polyline": at_limit}), ROUTES) is not None
    over = at_limit + "??"
    assert shape.public_map(activity(map={"summary_polyline": over}), ROUTES) is None


# ---- the public shapes ----


def test_summary_fields_and_types() -> None:
    assert shape.summary(activity(), ROUTES) == {
        "id": 12345678987654321,
        "name": "Morning Run",
        "sport_type": "TrailRun",
        "start_date": "2024-05-01T06:00:00Z",
        "start_date_local": "2024-05-01T08:00:00Z",
        "distance_m": 10234.5,
        "moving_time_s": 3600,
        "elapsed_time_s": 3720,
        "total_elevation_gain_m": 120.0,
        "average_speed_mps": 2.843,
        "map": shape.public_map(activity(), ROUTES),
        "strava_url": "https://www.strava.com/activities/12345678987654321",
        "device_name": None,
        "attribution": None,
        "route_svg": "/api/strava-integration/activities/12345678987654321/route.svg",
    }


def test_detail_is_the_summary_plus_its_own_fields() -> None:
    raw = activity(description="Hills.", photos={"primary": {"urls": {"600": "https://p.example/600.jpg"}}})
    out = shape.detail(raw, ROUTES)
    assert set(out) == DETAIL_KEYS
    assert {k: out[k] for k in SUMMARY_KEYS} == shape.summary(raw, ROUTES)
    assert (out["description"], out["photo_url"], out["max_speed_mps"], out["timezone"]) == (
        "Hills.",
        "https://p.example/600.jpg",
        4.1,
        "(GMT+01:00) Europe/Berlin",
    )


def test_sport_type_falls_back_to_type() -> None:
    assert shape.summary(activity(sport_type=None), ROUTES)["sport_type"] == "Run"
    assert shape.summary(activity(sport_type="", type=None), ROUTES)["sport_type"] is None


def test_nothing_else_leaves_the_service() -> None:
    # Fields Strava sends that must never be served: where the owner lives, the full-resolution
    # track, notes, the athlete object, the upload's id (it only decides the credit). Checked in the
    # serialized output, wherever they might hide. The device name is served on purpose (the credit
    # Garmin's data asks for), see test_strava_shape_attribution.
    secret_fields = {
        "start_latlng": [52.123456, 13.654321],
        "end_latlng": [52.654321, 13.123456],
        "location_city": "Secretville",
        "private_note": "gate code 4711",
        "athlete": {"id": 4242421, "firstname": "Owner"},
        "external_id": "garmin_push_31337",
        "map": {"id": "mapid-secret", "summary_polyline": "??", "polyline": "_polyline_full_secret"},
    }
    raw = activity(**secret_fields)
    body = orjson.dumps([shape.summary(raw, ROUTES), shape.detail(raw, ROUTES)])
    for leak in (b"52.12", b"52.65", b"Secretville", b"4711", b"4242421", b"Owner", b"31337", b"push", b"secret"):
        assert leak not in body
    assert set(shape.summary(raw, ROUTES)) == SUMMARY_KEYS
    assert set(shape.detail(raw, ROUTES)) == DETAIL_KEYS


@pytest.mark.parametrize(
    ("field", "limit"),
    [("name", 300), ("sport_type", 50), ("start_date", 40), ("start_date_local", 40)],
)
def test_summary_strings_are_truncated(field: str, limit: int) -> None:
    out = shape.summary(activity(**{field: "x" * (limit + 10)}), ROUTES)
    assert out[field] == "x" * limit


@pytest.mark.parametrize(("field", "limit"), [("description", 5000), ("timezone", 100)])
def test_detail_strings_are_truncated(field: str, limit: int) -> None:
    assert shape.detail(activity(**{field: "y" * (limit + 1)}), ROUTES)[field] == "y" * limit
    assert shape.detail(activity(**{field: "y" * limit}), ROUTES)[field] == "y" * limit


@pytest.mark.parametrize("value", [True, False, "12", None, [1], {"v": 1}], ids=repr)
def test_numbers_that_are_not_numbers_become_null(value: Any) -> None:
    raw = activity(distance=value, moving_time=value, average_speed=value, max_speed=value)
    out = shape.detail(raw, ROUTES)
    assert (out["distance_m"], out["moving_time_s"], out["average_speed_mps"], out["max_speed_mps"]) == (None,) * 4


@pytest.mark.parametrize("value", [123, 4.5, b"bytes", ["a"]], ids=repr)
def test_strings_that_are_not_strings_become_null(value: Any) -> None:
    out = shape.detail(activity(name=value, timezone=value, description=value), ROUTES)
    assert (out["name"], out["timezone"], out["description"]) == (None, None, None)


# ---- the photo: the largest size, https only ----


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        ({"100": "https://p.example/100.jpg", "600": "https://p.example/600.jpg"}, "https://p.example/600.jpg"),
        ({"600": "https://p.example/600.jpg", "2048": "https://p.example/2048.jpg"}, "https://p.example/2048.jpg"),
        # Numeric, not lexical: "1000" > "600".
        ({"600": "https://p.example/600.jpg", "1000": "https://p.example/1000.jpg"}, "https://p.example/1000.jpg"),
        # A key that is not a width ranks below every width.
        ({"large": "https://p.example/l.jpg", "100": "https://p.example/100.jpg"}, "https://p.example/100.jpg"),
        ({"large": "https://p.example/l.jpg"}, "https://p.example/l.jpg"),
        # The largest is not https: no photo (a smaller https one is not used instead).
        ({"100": "https://p.example/100.jpg", "600": "http://p.example/600.jpg"}, None),
        ({"600": "javascript:alert(1)"}, None),
        ({"600": "HTTPS://p.example/600.jpg"}, None),
        ({"600": "//p.example/600.jpg"}, None),
        ({"600": None}, None),
        ({"600": ["https://p.example/600.jpg"]}, None),
        ({}, None),
    ],
)
def test_photo_choice(urls: dict[str, Any], expected: str | None) -> None:
    assert shape.detail(activity(photos={"primary": {"urls": urls}}), ROUTES)["photo_url"] == expected


@pytest.mark.parametrize(
    "photos",
    [None, {}, {"primary": None}, {"primary": {}}, {"primary": {"urls": None}}, {"primary": {"urls": ["x"]}}],
    ids=repr,
)
def test_no_photo_without_primary_urls(photos: Any) -> None:
    assert shape.detail(activity(photos=photos), ROUTES)["photo_url"] is None


def test_summaries_carry_no_photo() -> None:
    raw = activity(photos={"primary": {"urls": {"600": "https://p.example/600.jpg"}}})
    assert "photo_url" not in shape.summary(raw, ROUTES)


# ---- stats ----


def test_stats_default_to_zeros_for_every_period_and_sport() -> None:
    out = shape.stats({})
    assert set(out) == {"recent", "year_to_date", "all_time"}
    for period in out.values():
        assert set(period) == {"run", "ride", "swim"}
        for totals in period.values():
            assert totals == dict.fromkeys(TOTAL_KEYS, 0)


def test_stats_map_strava_names_and_keep_numbers() -> None:
    raw = {
        "recent_run_totals": {"count": 3, "distance": 21000.5, "moving_time": 7200, "elapsed_time": 7300},
        "ytd_ride_totals": {"count": 10, "elevation_gain": 1500.0},
        "all_swim_totals": {"distance": 50000},
        "biggest_ride_distance": 180000.0,
    }
    out = shape.stats(raw)
    assert out["recent"]["run"] == {
        "count": 3,
        "distance_m": 21000.5,
        "moving_time_s": 7200,
        "elapsed_time_s": 7300,
        "elevation_gain_m": 0,
    }
    assert out["year_to_date"]["ride"]["count"] == 10
    assert out["year_to_date"]["ride"]["elevation_gain_m"] == 1500.0
    assert out["all_time"]["swim"]["distance_m"] == 50000
    assert out["recent"]["ride"] == dict.fromkeys(TOTAL_KEYS, 0)
    assert "biggest_ride_distance" not in orjson.dumps(out).decode()


@pytest.mark.parametrize("value", [None, "3", True, [3]], ids=repr)
def test_stats_values_that_are_not_numbers_become_zero(value: Any) -> None:
    totals = {"count": value, "distance": value, "achievement_count": 7}
    out = shape.stats({"recent_run_totals": totals, "ytd_run_totals": None})
    assert out["recent"]["run"] == dict.fromkeys(TOTAL_KEYS, 0)  # and unknown fields are dropped
    assert out["year_to_date"]["run"] == dict.fromkeys(TOTAL_KEYS, 0)


# ---- malformed nested values from upstream ----
# The top-level fields fail closed to None; a nested value that is not an object leaves its part out
# (no map, no photo, zeros) instead of raising inside the loader, which would answer a 500.


@pytest.mark.parametrize("map_field", ["x", ["??"], 7], ids=repr)
def test_a_map_that_is_not_an_object_gives_no_map(map_field: Any) -> None:
    assert shape.summary(activity(map=map_field), ROUTES)["map"] is None


@pytest.mark.parametrize("photos", ["x", ["p"], {"primary": "x"}, {"primary": ["u"]}], ids=repr)
def test_photos_that_are_not_objects_give_no_photo(photos: Any) -> None:
    assert shape.detail(activity(photos=photos), ROUTES)["photo_url"] is None


@pytest.mark.parametrize("totals", ["x", [1, 2], 5], ids=repr)
def test_stats_totals_that_are_not_objects_become_zero(totals: Any) -> None:
    assert shape.stats({"recent_run_totals": totals})["recent"]["run"] == dict.fromkeys(TOTAL_KEYS, 0)
