"""Webhook events the simulator sends itself, as Strava's push subscription would.

Only to loopback: the simulator is a test and sandbox tool and must never reach another host.
"""

from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DELIVERY_TIMEOUT_S = 5.0
MAX_URL_CHARS = 2048


def checked_callback_url(value: Any) -> str:
    """A loopback http(s) URL, or ValueError saying what is wrong with it."""
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        raise ValueError(f"webhook_url must be a string of at most {MAX_URL_CHARS} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError("webhook_url must be an http(s) URL on 127.0.0.1, localhost or ::1")
    return value


def deauthorization_event(athlete_id: int, subscription_id: int, now: float) -> dict[str, Any]:
    """What Strava posts when the athlete revokes the application on strava.com."""
    return {
        "aspect_type": "update",
        "event_time": int(now),
        "object_id": athlete_id,
        "object_type": "athlete",
        "owner_id": athlete_id,
        "subscription_id": subscription_id,
        "updates": {"authorized": "false"},
    }


async def deliver(url: str, event: dict[str, Any]) -> dict[str, Any]:
    """POST the event once (Strava retries; a test that wants a retry asks again); report the outcome."""
    try:
        # trust_env=False: no proxy variable may send this anywhere but the loopback URL given.
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S, trust_env=False) as client:
            response = await client.post(url, content=orjson.dumps(event), headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        return {"delivered": False, "error": type(exc).__name__}
    return {"delivered": True, "status": response.status_code}
