"""What leaves the service: the privacy rule and the public shapes of activities and stats.

Privacy fails closed: an activity is public only if Strava says `private` is false AND
`visibility` is `everyone`. Anything missing or unexpected keeps it in.
"""

from __future__ import annotations

from typing import Any

from service.values import is_number

MAX_POLYLINE = 100_000  # characters; longer strings are not decoded (and not served)


def is_public(activity: Any) -> bool:
    return isinstance(activity, dict) and activity.get("private") is False and activity.get("visibility") == "everyone"


def decode_polyline(encoded: str) -> list[tuple[float, float]]:
    """Google's encoded polyline algorithm (precision 5). Raises ValueError on a malformed string."""
    points: list[tuple[float, float]] = []
    index = lat = lng = 0
    length = len(encoded)
    while index < length:
        deltas = []
        for _ in range(2):
            shift = result = 0
            while True:
                if index >= length:
                    raise ValueError("truncated polyline")
                byte = ord(encoded[index]) - 63
                index += 1
                if not 0 <= byte < 64:
                    raise ValueError("invalid polyline character")
                result |= (byte & 0x1F) << shift
                shift += 5
                if byte < 0x20:
                    break
                if shift > 30:
                    raise ValueError("polyline value too long")
            deltas.append(~(result >> 1) if result & 1 else result >> 1)
        lat += deltas[0]
        lng += deltas[1]
        points.append((lat / 1e5, lng / 1e5))
    return points


def polyline_bounds(encoded: str) -> dict[str, float] | None:
    try:
        points = decode_polyline(encoded)
    except ValueError:
        return None
    if not points:
        return None
    lats = [p[0] for p in points]
    lngs = [p[1] for p in points]
    return {"south": min(lats), "west": min(lngs), "north": max(lats), "east": max(lngs)}


def public_map(activity: dict[str, Any]) -> dict[str, Any] | None:
    summary = (activity.get("map") or {}).get("summary_polyline")
    if not isinstance(summary, str) or not summary or len(summary) > MAX_POLYLINE:
        return None
    bounds = polyline_bounds(summary)
    if bounds is None:
        return None
    return {"summary_polyline": summary, "bounds": bounds}


def _num(value: Any) -> float | int | None:
    return value if is_number(value) else None


def _str(value: Any, limit: int = 1000) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def summary(activity: dict[str, Any]) -> dict[str, Any]:
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
        "map": public_map(activity),
    }


def _primary_photo(activity: dict[str, Any]) -> str | None:
    primary = (activity.get("photos") or {}).get("primary") or {}
    urls = primary.get("urls") or {}
    if not isinstance(urls, dict) or not urls:
        return None
    # The largest size Strava offers; keys are pixel widths as strings.
    best = max(urls, key=lambda k: int(k) if str(k).isdigit() else 0)
    url = urls[best]
    return url if isinstance(url, str) and url.startswith("https://") else None


def detail(activity: dict[str, Any]) -> dict[str, Any]:
    return {
        **summary(activity),
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
            totals = raw.get(f"{prefix}_{sport}_totals") or {}
            out[period][sport] = {_TOTAL_NAMES[f]: _num(totals.get(f)) or 0 for f in _TOTAL_FIELDS}
    return out
