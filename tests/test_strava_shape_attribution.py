"""The links and credits Strava's rules ask a display to show: strava_url, device_name, attribution, route_svg."""

from __future__ import annotations

from typing import Any

import pytest

from service.projects.strava_integration import shape

# Google's documented example: (38.5, -120.2), (40.7, -120.95), (43.252, -126.453).
POLYLINE = "_p~iF~ps|U_ulLnnqC_mqNvxq`@"


def activity(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 12345678901,
        "name": "Morning Run",
        "sport_type": "Run",
        "private": False,
        "visibility": "everyone",
        "map": {"summary_polyline": POLYLINE},
        "device_name": "Garmin Forerunner 255",
    }
    return {**base, **overrides}


def test_strava_url_links_the_activity_on_strava() -> None:
    assert shape.summary(activity())["strava_url"] == "https://www.strava.com/activities/12345678901"


@pytest.mark.parametrize("bad", [None, "12345", 1.5, True, -3, [1]])
def test_no_strava_url_without_an_integer_id(bad: Any) -> None:
    item = shape.summary(activity(id=bad))
    assert item["strava_url"] is None
    assert item["route_svg"] is None


def test_route_svg_is_the_project_relative_url_when_a_map_is_served() -> None:
    item = shape.summary(activity())
    assert item["map"] is not None
    assert item["route_svg"] == "/api/strava-integration/activities/12345678901/route.svg"


@pytest.mark.parametrize("route", [{}, {"summary_polyline": ""}, {"summary_polyline": "\x01broken"}, None])
def test_no_route_svg_without_a_served_map(route: Any) -> None:
    item = shape.summary(activity(map=route))
    assert item["map"] is None
    assert item["route_svg"] is None


@pytest.mark.parametrize(
    ("device", "credit"),
    [
        ("Garmin Forerunner 255", "Garmin"),
        ("garmin edge 540", "Garmin"),
        ("GARMIN", "Garmin"),
        ("Forerunner (Garmin)", "Garmin"),
        ("Zwift", None),
        ("Apple Watch Series 9", None),
        ("Wahoo ELEMNT BOLT", None),
        ("Strava App", None),
        ("Garminator 3000", None),  # a word match, not a substring one
        ("NotGarmin", None),
    ],
)
def test_attribution_credits_garmin_only_for_garmin_devices(device: str, credit: str | None) -> None:
    item = shape.summary(activity(device_name=device))
    assert item["device_name"] == device
    assert item["attribution"] == credit


@pytest.mark.parametrize("absent", [None, "", "   ", 42, {"name": "Garmin"}])
def test_device_name_is_null_when_strava_gives_none(absent: Any) -> None:
    item = shape.summary(activity(device_name=absent))
    assert item["device_name"] is None
    assert item["attribution"] is None


@pytest.mark.parametrize(
    ("external_id", "credit"),
    [("garmin_push_12345678901", "Garmin"), ("Garmin_Ping_42", "Garmin"), ("activity_1.fit", None), (7, None)],
)
def test_garmin_uploads_are_credited_without_a_device_name(external_id: Any, credit: str | None) -> None:
    item = shape.summary(activity(device_name=None, external_id=external_id))
    assert item["device_name"] is None
    assert item["attribution"] == credit


def test_missing_device_name_key() -> None:
    raw = activity()
    del raw["device_name"]
    item = shape.summary(raw)
    assert item["device_name"] is None and item["attribution"] is None


def test_device_name_is_bounded_and_trimmed() -> None:
    item = shape.summary(activity(device_name="  Garmin " + "x" * 5000))
    assert item["device_name"] is not None
    assert len(item["device_name"]) == shape.MAX_DEVICE_NAME
    assert item["device_name"].startswith("Garmin x")
    assert item["attribution"] == "Garmin"


def test_detail_carries_the_same_fields() -> None:
    raw = activity(description="", max_speed=4.2)
    item = shape.detail(raw)
    for key in ("strava_url", "device_name", "attribution", "route_svg"):
        assert item[key] == shape.summary(raw)[key]
    assert item["attribution"] == "Garmin"
