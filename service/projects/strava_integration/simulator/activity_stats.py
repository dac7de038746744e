"""ActivityStats (GET /athletes/{id}/stats) computed from the stored activities."""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .seed import parse_iso_z

RECENT_S = 28 * 24 * 3600  # Strava's "recent" means the last four weeks
_GROUPS = {
    "run": frozenset({"Run", "TrailRun", "VirtualRun"}),
    "ride": frozenset({"Ride", "MountainBikeRide", "GravelRide", "EBikeRide", "EMountainBikeRide", "VirtualRide"}),
    "swim": frozenset({"Swim"}),
}


def _totals(activities: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "count": len(activities),
        "distance": round(sum(float(a.get("distance") or 0) for a in activities), 1),
        "moving_time": sum(int(a.get("moving_time") or 0) for a in activities),
        "elapsed_time": sum(int(a.get("elapsed_time") or 0) for a in activities),
        "elevation_gain": round(sum(float(a.get("total_elevation_gain") or 0) for a in activities), 1),
        "achievement_count": sum(int(a.get("achievement_count") or 0) for a in activities),
    }


def activity_stats(activities: Iterable[dict[str, Any]], now: float) -> dict[str, Any]:
    # Strava documents that stats only include activities visible to "Everyone".
    public = [a for a in activities if a.get("visibility") == "everyone" and not a.get("private")]
    year_start = datetime(datetime.fromtimestamp(now, UTC).year, 1, 1, tzinfo=UTC).timestamp()
    started = {id(a): parse_iso_z(a["start_date"]) for a in public}
    rides = [a for a in public if a.get("sport_type") in _GROUPS["ride"]]
    out: dict[str, Any] = {
        "biggest_ride_distance": max((float(a.get("distance") or 0) for a in rides), default=None),
        "biggest_climb_elevation_gain": max((float(a.get("total_elevation_gain") or 0) for a in rides), default=None),
    }
    for group, sport_types in _GROUPS.items():
        members = [a for a in public if a.get("sport_type") in sport_types]
        out[f"recent_{group}_totals"] = _totals([a for a in members if now - RECENT_S <= started[id(a)] <= now])
        out[f"ytd_{group}_totals"] = _totals([a for a in members if year_start <= started[id(a)] <= now])
        out[f"all_{group}_totals"] = _totals(members)
    return out
