"""Test-control API under /_sim: lets a test in another process steer the simulator.

Each endpoint is a thin JSON wrapper around the SimulatorState method of the same name.
POST /_sim/revoke_grant (alias /_sim/revoke) acts out "the athlete revoked the app on
strava.com": every token of the grant dies at once, and with `{"webhook_url": ...}` the
deauthorization event Strava would push is posted there (loopback only).
"""

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .events import checked_callback_url, deauthorization_event, deliver
from .responses import BodyError, JsonResponse, read_json_object, record_not_found
from .sim_config import CONTROL_PREFIX
from .state import SimulatorState

_FAULT_KEYS = frozenset({"kind", "count", "delay_s", "path_prefix"})
_REVOKE_KEYS = frozenset({"webhook_url", "subscription_id"})
MAX_SUBSCRIPTION_ID = 2**63 - 1
Handler = Callable[[SimulatorState, dict[str, Any]], Any]


def _control_error(detail: str) -> Response:
    body = {
        "message": "Bad Request",
        "errors": [{"resource": "Simulator", "field": "body", "code": "invalid"}],
        "detail": detail,
    }
    return JsonResponse(body, status_code=400)


def _json_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Parse the JSON body, run `handler`, and turn bad input into a 400 instead of a 500."""

    async def endpoint(request: Request) -> Response:
        try:
            body = await read_json_object(request)
            result = handler(request.app.state.sim, body)
        except (BodyError, ValueError, TypeError) as exc:
            return _control_error(str(exc))
        return JsonResponse(result)

    return endpoint


def _set_fault(sim: SimulatorState, body: dict[str, Any]) -> dict[str, Any]:
    unknown = set(body) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown keys: {sorted(unknown)}")
    if "kind" not in body:
        raise ValueError("kind is required")
    return {"fault": sim.set_fault(**body)}


def _set_limits(sim: SimulatorState, body: dict[str, Any]) -> dict[str, Any]:
    return {"limits": sim.set_limits(**body)}


def _set_usage(sim: SimulatorState, body: dict[str, Any]) -> dict[str, Any]:
    return {"usage": sim.set_usage(**body)}


def _upsert_activity(sim: SimulatorState, body: dict[str, Any]) -> dict[str, Any]:
    return sim.upsert_activity(body)


def _stats(sim: SimulatorState, body: dict[str, Any]) -> dict[str, Any]:
    return sim.stats()


def _reset(sim: SimulatorState, body: dict[str, Any]) -> dict[str, Any]:
    sim.reset()
    return {"reset": True}


async def revoke_grant(request: Request) -> Response:
    try:
        body = await read_json_object(request)
        unknown = set(body) - _REVOKE_KEYS
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        url = checked_callback_url(body["webhook_url"]) if body.get("webhook_url") is not None else None
        sim: SimulatorState = request.app.state.sim
        subscription_id = body.get("subscription_id", sim.config.webhook_subscription_id)
        if not isinstance(subscription_id, int) or isinstance(subscription_id, bool):
            raise ValueError("subscription_id must be an integer")
        if not 0 < subscription_id <= MAX_SUBSCRIPTION_ID:
            raise ValueError(f"subscription_id must be in [1, {MAX_SUBSCRIPTION_ID}]")
    except (BodyError, ValueError) as exc:
        return _control_error(str(exc))
    result: dict[str, Any] = {"revoked": sim.revoke()}
    if url is not None:
        # After the tokens died, as at Strava: the event only tells the app what already happened.
        event = deauthorization_event(sim.config.athlete_id, subscription_id, sim.clock())
        result["webhook"] = await deliver(url, event)
    return JsonResponse(result)


def _expire(sim: SimulatorState, body: dict[str, Any]) -> dict[str, Any]:
    sim.expire_access_tokens()
    return {"expired": True}


async def delete_activity(request: Request) -> Response:
    raw = request.path_params["id"]
    deleted = raw.isdigit() and len(raw) <= 20 and request.app.state.sim.delete_activity(int(raw))
    return Response(status_code=204) if deleted else record_not_found("Activity")


routes = [
    Route(f"{CONTROL_PREFIX}/fault", _json_endpoint(_set_fault), methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/limits", _json_endpoint(_set_limits), methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/usage", _json_endpoint(_set_usage), methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/revoke_grant", revoke_grant, methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/revoke", revoke_grant, methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/expire", _json_endpoint(_expire), methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/activities", _json_endpoint(_upsert_activity), methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/activities/{{id}}", delete_activity, methods=["DELETE"]),
    Route(f"{CONTROL_PREFIX}/stats", _json_endpoint(_stats), methods=["GET"]),
    Route(f"{CONTROL_PREFIX}/reset", _json_endpoint(_reset), methods=["POST"]),
]
