"""Deterministic seed data: one athlete and their activities, shaped like Strava API v3 JSON.

Everything comes from `random.Random(42)` and the anchor day, so two simulators created on the
same UTC day serve identical data. Activities are stored in their detailed form (resource_state 3);
`summary_view` strips what the list endpoint does not return.
"""

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .polyline import encode_polyline

SEED = 42
ACTIVITY_SPAN_DAYS = 90
# ".invalid" is reserved (RFC 6761): picture URLs look real but can never hit a real host.
PICTURE_HOST = "https://strava-sim.invalid"

# One public activity with a route carries this name, so front ends can show it stays text.
MARKUP_NAME = "<img src=x onerror=alert(1)>"

# Keys only GET /activities/{id} returns.
DETAIL_ONLY_KEYS = frozenset(
    {
        "description",
        "calories",
        "embed_token",
        "photos",
        "segment_efforts",
        "splits_metric",
        "laps",
        "available_zones",
        "hide_from_home",
    }
)


@dataclass(frozen=True)
class _City:
    name: str
    state: str
    country: str
    lat: float
    lng: float
    tz: str
    # Strava labels the zone with its standard offset even while DST is in effect.
    tz_label: str
    standard_offset_s: int


_CITIES = (
    _City("Berlin", "Berlin", "Germany", 52.5145, 13.3501, "Europe/Berlin", "(GMT+01:00) Europe/Berlin", 3600),
    _City("London", "England", "United Kingdom", 51.5073, -0.1657, "Europe/London", "(GMT+00:00) Europe/London", 0),
    _City("Boulder", "CO", "United States", 40.0150, -105.2705, "America/Denver", "(GMT-07:00) America/Denver", -25200),
    _City(
        "San Francisco",
        "CA",
        "United States",
        37.7694,
        -122.4862,
        "America/Los_Angeles",
        "(GMT-08:00) America/Los_Angeles",
        -28800,
    ),
)
_HOME = _CITIES[0]
_UTC = _City("", "", "", 0.0, 0.0, "UTC", "(GMT+00:00) UTC", 0)


@dataclass(frozen=True)
class _Sport:
    sport_type: str
    legacy_type: str  # the pre-2022 `type` field Strava still sends beside `sport_type`
    label: str
    distance_m: tuple[float, float]
    speed_mps: tuple[float, float]
    climb_m_per_km: tuple[float, float]
    has_gps: bool
    weight: int


_SPORTS = (
    _Sport("Run", "Run", "Run", (4_000, 21_500), (2.6, 3.7), (2, 12), True, 30),
    _Sport("TrailRun", "Run", "Trail Run", (6_000, 25_000), (1.9, 2.9), (20, 60), True, 8),
    _Sport("Ride", "Ride", "Ride", (18_000, 110_000), (6.0, 9.5), (4, 15), True, 22),
    _Sport("MountainBikeRide", "Ride", "Mountain Bike Ride", (12_000, 45_000), (3.8, 6.0), (15, 40), True, 5),
    _Sport("VirtualRide", "VirtualRide", "Virtual Ride", (15_000, 60_000), (7.0, 10.0), (5, 20), False, 10),
    _Sport("Swim", "Swim", "Swim", (1_000, 3_800), (0.6, 1.0), (0, 0), False, 10),
    _Sport("Walk", "Walk", "Walk", (1_500, 8_000), (1.1, 1.6), (1, 10), True, 10),
    _Sport("Hike", "Hike", "Hike", (5_000, 18_000), (0.8, 1.4), (30, 90), True, 5),
)
_SPORT_BY_TYPE = {s.sport_type: s for s in _SPORTS}
_GEAR = {"Run": "g9000001", "TrailRun": "g9000002", "Ride": "b9000001", "MountainBikeRide": "b9000002"}
# Recording devices by sport; None: Strava sends no device_name (a manual entry or a phone app).
_FOOT_DEVICES = ("Garmin Forerunner 965", "Garmin fenix 7", "Apple Watch Series 9", "Garmin Forerunner 965", None)
_DEVICES: dict[str, tuple[str | None, ...]] = {
    "Run": _FOOT_DEVICES,
    "TrailRun": ("Garmin fenix 7", "Garmin Forerunner 965", "Apple Watch Series 9"),
    "Walk": ("Apple Watch Series 9", None),
    "Hike": ("Garmin fenix 7", None),
    "Ride": ("Garmin Edge 840", "Wahoo ELEMNT BOLT", "Garmin Edge 840", None),
    "MountainBikeRide": ("Garmin Edge 840", "Wahoo ELEMNT BOLT"),
    "VirtualRide": ("Zwift",),
    "Swim": ("Garmin Swim 2", "Apple Watch Series 9", None),
}


def _device_name(sport_type: str, activity_id: int) -> str | None:
    # Its own generator, seeded by the id: the shared one's sequence (and so every other seeded
    # value) stays what it was before devices varied.
    return random.Random(activity_id).choice(_DEVICES.get(sport_type, (None,)))


def athlete_summary(athlete_id: int) -> dict[str, Any]:
    """GET /athlete for a token without profile:read_all (resource_state 2)."""
    pictures = f"{PICTURE_HOST}/pictures/athletes/{athlete_id}/1"
    return {
        "id": athlete_id,
        "username": "sim_athlete",
        "resource_state": 2,
        "firstname": "Simone",
        "lastname": "Sandbox",
        "bio": "",
        "city": _HOME.name,
        "state": _HOME.state,
        "country": _HOME.country,
        "sex": "F",
        "premium": True,
        "summit": True,
        "created_at": "2019-03-14T08:15:02Z",
        "updated_at": "2024-01-02T17:40:11Z",
        "badge_type_id": 1,
        "weight": 61.0,
        "profile_medium": f"{pictures}/medium.jpg",
        "profile": f"{pictures}/large.jpg",
        "friend": None,
        "follower": None,
    }


def iso_z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_z(value: str) -> float:
    """Epoch seconds of a Strava timestamp; a value without zone is taken as UTC."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _local_time(city: _City, local_naive: datetime) -> tuple[datetime, int]:
    """UTC moment and utc_offset for a wall-clock time in `city`."""
    try:
        delta = local_naive.replace(tzinfo=ZoneInfo(city.tz)).utcoffset()
    except ZoneInfoNotFoundError:  # no tzdata on this host: fall back to the standard offset
        delta = None
    offset = int(delta.total_seconds()) if delta is not None else city.standard_offset_s
    return local_naive.replace(tzinfo=UTC) - timedelta(seconds=offset), offset


def _loop(rng: random.Random, city: _City, distance_m: float) -> list[tuple[float, float]]:
    """A closed, slightly wobbly loop a few km across near the city centre."""
    centre_lat = city.lat + rng.uniform(-0.03, 0.03)
    centre_lng = city.lng + rng.uniform(-0.03, 0.03)
    radius_m = min(distance_m / (2 * math.pi), 3_000.0)
    deg_lat = radius_m / 111_320
    deg_lng = radius_m / (111_320 * math.cos(math.radians(centre_lat)))
    start = rng.uniform(0, 2 * math.pi)
    points = []
    for k in range(48):
        angle = start + 2 * math.pi * k / 48
        wobble = 1 + rng.uniform(-0.08, 0.08)
        points.append(
            (centre_lat + deg_lat * wobble * math.sin(angle), centre_lng + deg_lng * wobble * math.cos(angle))
        )
    points.append(points[0])
    return points


def _visibility(index: int) -> tuple[bool, str]:
    # Fixed pattern rather than dice so that 40 activities always hold 6 private ("only_me")
    # and 6 follower-only ones: the service must filter both, tests rely on finding them.
    if index % 7 == 3:
        return True, "only_me"
    if index % 7 == 5:
        return False, "followers_only"
    return False, "everyone"


def _sport(rng: random.Random, index: int) -> _Sport:
    # Force a few GPS-less sports so an empty summary_polyline is always present.
    if index % 10 == 4:
        return _SPORT_BY_TYPE["Swim"]
    if index % 10 == 9:
        return _SPORT_BY_TYPE["VirtualRide"]
    return rng.choices(_SPORTS, weights=[s.weight for s in _SPORTS])[0]


def _part_of_day(hour: int) -> str:
    if hour < 11:
        return "Morning"
    if hour < 14:
        return "Lunch"
    if hour < 17:
        return "Afternoon"
    return "Evening" if hour < 21 else "Night"


def build_activity(
    rng: random.Random,
    index: int,
    activity_id: int,
    athlete_id: int,
    local_start: datetime,
    city: _City,
    sport: _Sport | None = None,
) -> dict[str, Any]:
    sport = sport or _sport(rng, index)
    private, visibility = _visibility(index)
    distance = round(rng.uniform(*sport.distance_m), 1)
    moving_time = max(60, int(distance / rng.uniform(*sport.speed_mps)))
    average_speed = round(distance / moving_time, 3)
    start_utc, utc_offset = _local_time(city, local_start)
    points = _loop(rng, city, distance) if sport.has_gps else []
    photo_count = rng.randint(1, 4) if points and rng.random() < 0.3 else 0
    has_heartrate = sport.sport_type != "Swim" or rng.random() < 0.5
    watts = sport.legacy_type in ("Ride", "VirtualRide") and rng.random() < 0.7
    average_watts = round(rng.uniform(140, 240), 1) if watts else None
    activity: dict[str, Any] = {
        "resource_state": 3,
        "athlete": {"id": athlete_id, "resource_state": 1},
        "name": f"{_part_of_day(local_start.hour)} {sport.label}",
        "distance": distance,
        "moving_time": moving_time,
        "elapsed_time": moving_time + rng.randint(0, moving_time // 6),
        "total_elevation_gain": round(distance / 1000 * rng.uniform(*sport.climb_m_per_km), 1),
        "type": sport.legacy_type,
        "sport_type": sport.sport_type,
        "workout_type": 0 if sport.legacy_type == "Run" else None,
        "id": activity_id,
        "external_id": f"sim_{activity_id}.fit",
        "upload_id": activity_id * 10 + 7,
        "upload_id_str": str(activity_id * 10 + 7),
        "start_date": iso_z(start_utc),
        # Strava's quirk: local wall-clock time, yet suffixed with Z.
        "start_date_local": iso_z(local_start),
        "timezone": city.tz_label,
        "utc_offset": float(utc_offset),
        "location_city": None,
        "location_state": None,
        "location_country": city.country,
        "start_latlng": [round(points[0][0], 2), round(points[0][1], 2)] if points else [],
        "end_latlng": [round(points[-1][0], 2), round(points[-1][1], 2)] if points else [],
        "achievement_count": rng.randint(0, 4),
        "kudos_count": 0 if private else rng.randint(0, 25),
        "comment_count": 0 if private else rng.randint(0, 3),
        "athlete_count": 1 if sport.sport_type in ("Swim", "VirtualRide") else rng.randint(1, 3),
        "photo_count": 0,
        "total_photo_count": photo_count,
        "map": {
            "id": f"a{activity_id}",
            "summary_polyline": encode_polyline(points[::4]) if points else "",  # 49 points: keeps the closing one
            "polyline": encode_polyline(points) if points else "",
            "resource_state": 3,
        },
        "trainer": sport.sport_type == "VirtualRide",
        "commute": sport.sport_type == "Ride" and rng.random() < 0.2,
        "manual": False,
        "private": private,
        "visibility": visibility,
        "flagged": False,
        "gear_id": _GEAR.get(sport.sport_type),
        "from_accepted_tag": False,
        "average_speed": average_speed,
        "max_speed": round(average_speed * rng.uniform(1.3, 2.2), 1),
        "average_watts": average_watts,
        "kilojoules": round(average_watts * moving_time / 1000, 1) if average_watts else None,
        "device_watts": watts,
        "has_heartrate": has_heartrate,
        "average_heartrate": round(rng.uniform(125, 160), 1) if has_heartrate else None,
        "max_heartrate": float(rng.randint(165, 190)) if has_heartrate else None,
        "heartrate_opt_out": False,
        "display_hide_heartrate_option": has_heartrate,
        "elev_high": round(rng.uniform(40, 120), 1) if points else None,
        "elev_low": round(rng.uniform(20, 40), 1) if points else None,
        "pr_count": rng.randint(0, 2),
        "has_kudoed": False,
        "description": rng.choice([None, "", "Easy one.", "Legs felt heavy after yesterday.", "New route!"]),
        "calories": round(distance / 1000 * rng.uniform(40, 70), 1),
        "device_name": _device_name(sport.sport_type, activity_id),
        "embed_token": f"{rng.getrandbits(160):040x}",
        "photos": _photos(rng, activity_id, photo_count),
        "segment_efforts": [],
        "splits_metric": [],
        "laps": [],
        "available_zones": [],
        "hide_from_home": False,
    }
    if activity["device_name"] is None:
        del activity["device_name"]  # Strava leaves the key out rather than sending null
    return activity


def _photos(rng: random.Random, activity_id: int, count: int) -> dict[str, Any]:
    if not count:
        return {"primary": None, "count": 0}
    unique_id = f"{rng.getrandbits(128):032x}"
    base = f"{PICTURE_HOST}/photos/{activity_id}/{unique_id}"
    return {
        "primary": {
            "id": None,
            "unique_id": unique_id,
            "urls": {"100": f"{base}-128x96.jpg", "600": f"{base}-768x576.jpg"},
            "source": 1,
        },
        "use_primary_photo": True,
        "count": count,
    }


def seed_activities(athlete_id: int, count: int, anchor: float) -> dict[int, dict[str, Any]]:
    """`count` activities in the ACTIVITY_SPAN_DAYS before the UTC day of `anchor`, keyed by id."""
    rng = random.Random(SEED)
    anchor_day = datetime.fromtimestamp(anchor, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    drafts = []
    for index in range(count):
        # Stay >= 1.5 days back so no local wall-clock time can land after the anchor.
        days_ago = 1.5 + (ACTIVITY_SPAN_DAYS - 2) * (index + rng.random()) / max(count, 1)
        day = (anchor_day - timedelta(days=days_ago)).replace(tzinfo=None, hour=0)
        local_start = day + timedelta(hours=rng.choice((6, 7, 12, 17, 18, 19)), minutes=rng.randint(0, 59))
        city = _HOME if rng.random() < 0.8 else rng.choice(_CITIES[1:])
        drafts.append((index, local_start, city))
    activities: dict[int, dict[str, Any]] = {}
    # Strava ids grow with upload time, so the oldest activity gets the smallest id.
    next_id = 10_000_000_000
    for index, local_start, city in reversed(drafts):
        next_id += rng.randint(20_000, 900_000)
        activities[next_id] = build_activity(rng, index, next_id, athlete_id, local_start, city)
    _name_one_with_markup(activities)
    return activities


def _name_one_with_markup(activities: dict[int, dict[str, Any]]) -> None:
    """Give MARKUP_NAME to the second-newest public activity with a route: on any first page."""
    public_with_routes = [
        a
        for a in sorted(activities.values(), key=lambda a: a["start_date"], reverse=True)
        if a["visibility"] == "everyone" and not a["private"] and a["map"]["summary_polyline"]
    ]
    if len(public_with_routes) >= 2:
        public_with_routes[1]["name"] = MARKUP_NAME


def default_activity(activity_id: int, athlete_id: int, now: float) -> dict[str, Any]:
    """Base record for an activity created through the control API (a manual, GPS-less run)."""
    rng = random.Random(activity_id)
    start = datetime.fromtimestamp(now - 3600, UTC).replace(microsecond=0, tzinfo=None)
    activity = build_activity(rng, 0, activity_id, athlete_id, start, _UTC, _SPORT_BY_TYPE["Run"])
    activity.update(
        name="Manual Run",
        manual=True,
        location_country=None,
        start_latlng=[],
        end_latlng=[],
        map={"id": f"a{activity_id}", "summary_polyline": "", "polyline": "", "resource_state": 3},
        photos={"primary": None, "count": 0},
        total_photo_count=0,
    )
    activity.pop("device_name", None)  # typed in by hand: no device recorded it
    return activity


def summary_view(activity: dict[str, Any]) -> dict[str, Any]:
    """SummaryActivity as listed by GET /athlete/activities."""
    out = {k: v for k, v in activity.items() if k not in DETAIL_ONLY_KEYS}
    out["resource_state"] = 2
    activity_map = activity.get("map") or {}
    out["map"] = {
        "id": activity_map.get("id", f"a{activity.get('id')}"),
        "summary_polyline": activity_map.get("summary_polyline", ""),
        "resource_state": 2,
    }
    return out


def detail_view(activity: dict[str, Any]) -> dict[str, Any]:
    """DetailedActivity as returned by GET /activities/{id}."""
    out = dict(activity)
    out["resource_state"] = 3
    out["map"] = {**(activity.get("map") or {}), "resource_state": 3}
    return out
