"""Strava API v3 read endpoints. Auth, rate limits and faults happen in front of these (pipeline.py).

Served twice: under /api/v3 (`https://www.strava.com/api/v3`) and at the root, as Strava serves
them from `https://www.api-v3.strava.com` after 1 June 2027.
"""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .responses import JsonResponse, bad_request, record_not_found, strava_error
from .sim_config import API_PREFIX
from .state import SimulatorState

MAX_PER_PAGE = 200  # Strava silently caps per_page at 200
DEFAULT_PER_PAGE = 30
MAX_PAGE = 100_000
MAX_EPOCH = 10**11


class _BadParam(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _sim(request: Request) -> SimulatorState:
    return request.app.state.sim


def _int_param(request: Request, name: str, low: int, high: int) -> int | None:
    """An integer query parameter clamped to [low, high]; None when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > 20:
        raise _BadParam(name)
    try:
        value = int(raw)
    except ValueError:
        raise _BadParam(name) from None
    return min(max(value, low), high)


async def get_athlete(request: Request) -> Response:
    return JsonResponse(_sim(request).athlete)


async def list_athlete_activities(request: Request) -> Response:
    try:
        before = _int_param(request, "before", -MAX_EPOCH, MAX_EPOCH)
        after = _int_param(request, "after", -MAX_EPOCH, MAX_EPOCH)
        page = _int_param(request, "page", 1, MAX_PAGE) or 1
        per_page = _int_param(request, "per_page", 1, MAX_PER_PAGE) or DEFAULT_PER_PAGE
    except _BadParam as exc:
        return bad_request("Application", exc.name)
    activities = _sim(request).list_activities(before=before, after=after, page=page, per_page=per_page)
    return JsonResponse(activities)


def _path_id(request: Request) -> int | None:
    raw = request.path_params["id"]
    return int(raw) if raw.isdigit() and len(raw) <= 20 else None


async def get_activity(request: Request) -> Response:
    # The owner gets private activities too, exactly as from Strava: filtering is the client's job.
    activity_id = _path_id(request)
    activity = _sim(request).get_activity(activity_id) if activity_id is not None else None
    if activity is None:
        return record_not_found("Activity")
    return JsonResponse(activity)


async def get_athlete_stats(request: Request) -> Response:
    athlete_id = _path_id(request)
    if athlete_id is None:
        return record_not_found("Athlete")
    if athlete_id != _sim(request).config.athlete_id:
        # Stats are only available for the athlete the token belongs to.
        return strava_error(403, "Forbidden", "Athlete", "id", "forbidden")
    return JsonResponse(_sim(request).athlete_stats())


_ENDPOINTS = (
    ("/athlete", get_athlete),
    ("/athlete/activities", list_athlete_activities),
    ("/activities/{id}", get_activity),
    ("/athletes/{id}/stats", get_athlete_stats),
)
routes = [
    Route(prefix + path, endpoint, methods=["GET"]) for prefix in (API_PREFIX, "") for path, endpoint in _ENDPOINTS
]
