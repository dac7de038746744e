"""What leaves the service: the privacy rule and the public shapes of activities and stats.

Privacy fails closed: an activity is public only if Strava says `private` is false AND
`visibility` is `everyone`. Anything missing or unexpected keeps it in. Routes leave only
through `public_map`, trimmed around their true start and end (`privacy.TrimmedRoutes`).
"""

from __future__ import annotations

import re
from typing import Any

from service.projects.strava_integration.privacy import RouteSource
from service.values import is_int, is_number


def is_public(activity: Any) -> bool:
    return isinstance(activity, dict) and activity.get("private") is False and activity.get("visibility") == "everyone"


def summary_polyline(activity: dict[str, Any]) -> object:
    """Strava's `map.summary_polyline`, as sent (anything, or None when there is no map)."""
    raw_map = activity.get("map")
    return raw_map.get("summary_polyline") if isinstance(raw_map, dict) else None


def public_map(activity: dict[str, Any], routes: RouteSource) -> dict[str, Any] | None:
    """The route as served: the summary polyline privacy-trimmed (`routes`), its pieces and their bounds.

    Only the summary polyline is handed out, in the feed and in the detail alike: Strava's full
    `map.polyline` (thousands of points) is never served, so it needs no trim of its own.
    """
    route = routes.get(summary_polyline(activity))
    return route.as_map() if route is not None else None


def _num(value: Any) -> float | int | None:
    return value if is_number(value) else None


def _str(value: Any, limit: int = 1000) -> str | None:
    return value[:limit] if isinstance(value, str) else None


STRAVA_ACTIVITY_URL = "https://www.strava.com/activities/{id}"
ROUTE_SVG_PATH = "/api/strava-integration/activities/{id}/route.svg"
MAX_DEVICE_NAME = 100
# Data sources whose terms require the display to credit them: (credit, device name pattern, upload id
# prefix). Strava's API agreement (1 November 2025) asks for "Garmin" wherever Garmin-recorded data is
# shown. Garmin Connect's uploads carry an external_id such as "garmin_push_12345", which also covers
# an activity that arrives without a device_name.
_ATTRIBUTIONS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("Garmin", re.compile(r"\bgarmin\b", re.IGNORECASE), "garmin_"),
)


def _activity_id(value: Any) -> int | None:
    return value if is_int(value) and value >= 0 else None


def _device_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip()[:MAX_DEVICE_NAME] or None


def attribution(device_name: str | None, external_id: Any = None) -> str | None:
    """Whom the display must credit for data recorded on this device (or uploaded from there), if anyone."""
    upload = external_id.lower() if isinstance(external_id, str) else ""
    for credit, device, upload_prefix in _ATTRIBUTIONS:
        if (device_name and device.search(device_name)) or upload.startswith(upload_prefix):
            return credit
    return None


def links(activity: dict[str, Any], activity_id: int | None, public: dict[str, Any] | None) -> dict[str, Any]:
    """What Strava's brand rules and API agreement ask a display to show beside an activity."""
    device_name = _device_name(activity.get("device_name"))
    return {
        "strava_url": STRAVA_ACTIVITY_URL.format(id=activity_id) if activity_id is not None else None,
        "device_name": device_name,
        "attribution": attribution(device_name, activity.get("external_id")),
        # Served only for an activity whose (trimmed) route is handed out at all.
        "route_svg": ROUTE_SVG_PATH.format(id=activity_id) if activity_id is not None and public else None,
    }


def summary(activity: dict[str, Any], routes: RouteSource) -> dict[str, Any]:
    activity_id = _activity_id(activity.get("id"))
    public = public_map(activity, routes)
    return {
        "id": activity.get("id"),
        "name": _str(activity.get("name"), 300),
        "sport_type": _str(activity.get("sport_type") or activity.get("type"), 50),
        "start_date": _str(activity.get("start_date"), 40),
        "start_date_local": _str(activity.get("start_date_local"), 40),
        "distance_m": _num(activity.get("distance")),
        "moving_time_s": _num(activity.get("moving_time")),
        "elapsed_time_s": _num(activity.get("elapsed_time")),
        "total_elevation_gain_m": _num(activity.get("total_elevation_gain")),
        "average_speed_mps": _num(activity.get("average_speed")),
        "map": public,
        **links(activity, activity_id, public),
    }


def _object(value: Any) -> dict[str, Any]:
    """A nested object from upstream, or {} when it is anything else: its fields then read as missing."""
    return value if isinstance(value, dict) else {}


def _primary_photo(activity: dict[str, Any]) -> str | None:
    urls = _object(_object(_object(activity.get("photos")).get("primary")).get("urls"))
    if not urls:
        return None
    # The largest size Strava offers; keys are pixel widths as strings.
    best = max(urls, key=lambda k: int(k) if str(k).isdigit() else 0)
    url = urls[best]
    return url if isinstance(url, str) and url.startswith("https://") else None


def detail(activity: dict[str, Any], routes: RouteSource) -> dict[str, Any]:
    return {
        **summary(activity, routes),
        "description": _str(activity.get("description"), 5000),
        "photo_url": _primary_photo(activity),
        "max_speed_mps": _num(activity.get("max_speed")),
        "timezone": _str(activity.get("timezone"), 100),
    }


_TOTAL_FIELDS = ("count", "distance", "moving_time", "elapsed_time", "elevation_gain")
_TOTAL_NAMES = {
    "count": "count",
    "distance": "distance_m",
    "moving_time": "moving_time_s",
    "elapsed_time": "elapsed_time_s",
    "elevation_gain": "elevation_gain_m",
}


def stats(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for period, prefix in (("recent", "recent"), ("year_to_date", "ytd"), ("all_time", "all")):
        out[period] = {}
        for sport in ("run", "ride", "swim"):
            totals = _object(raw.get(f"{prefix}_{sport}_totals"))
            out[period][sport] = {_TOTAL_NAMES[f]: _num(totals.get(f)) or 0 for f in _TOTAL_FIELDS}
    return out
