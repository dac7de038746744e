"""Strava webhooks: subscription validation and events, answered well within Strava's 2 s.

The handler validates, counts and hands the event to `on_event`, which only drops cache
entries and schedules refreshes; nothing here waits on Strava.

Strava retries an event up to three times, and behind a load balancer each try may reach another
instance: the first to claim `strava-integration:webhook:<object_type>:<object_id>:<aspect_type>:
<event_time>` in the store handles it, the others answer 200 and skip it. Two kinds are never
claimed, since a forger could claim them ahead of the real event: deauthorizations (each is
checked with Strava anyway) and events dated in the future. A store that does not answer means
the event is handled anyway: its effects are idempotent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from observability.metrics import Metrics
from service.errors import ApiError
from service.security import secret_matches
from service.store import Store, StoreError
from service.values import is_int

log = structlog.get_logger("strava.webhook")

MAX_EVENT_BYTES = 8 * 1024
MAX_CHALLENGE = 256
MAX_ID = 2**64 - 1  # what the JSON parser reads as an integer (and the spec declares)
MAX_EXACT_FLOAT = 2**53  # above this a float is not an exact integer any more
OBJECT_TYPES = ("activity", "athlete")
ASPECT_TYPES = ("create", "update", "delete")
CLAIM_TTL_S = 3600  # longer than Strava keeps retrying an event
CLAIM_SKEW_S = 60  # an event_time further ahead than this is not claimed (see the module docstring)


@dataclass(frozen=True, slots=True)
class Event:
    object_type: str
    object_id: int
    aspect_type: str
    owner_id: int
    subscription_id: int
    event_time: int
    updates: dict[str, Any]

    @property
    def deauthorization(self) -> bool:
        return self.object_type == "athlete" and str(self.updates.get("authorized", "")).lower() == "false"


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, float) and value.is_integer() and value <= MAX_EXACT_FLOAT:
        value = int(value)  # JSON has one number type: 5.0 is the integer 5
    if not is_int(value) or not 0 <= value <= MAX_ID:
        raise ApiError(400, "invalid_event", f"{name}: expected a non-negative integer", parameter=name)
    return value


def parse_event(raw: bytes) -> Event:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "malformed_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_event", "The body must be a JSON object.")
    object_type = body.get("object_type")
    if object_type not in OBJECT_TYPES:
        raise ApiError(400, "invalid_event", "object_type: expected activity or athlete", parameter="object_type")
    aspect_type = body.get("aspect_type")
    if aspect_type not in ASPECT_TYPES:
        raise ApiError(400, "invalid_event", "aspect_type: expected create, update or delete", parameter="aspect_type")
    updates = body.get("updates", {})
    if not isinstance(updates, dict):
        raise ApiError(400, "invalid_event", "updates: expected an object", parameter="updates")
    return Event(
        object_type=object_type,
        object_id=_int(body, "object_id"),
        aspect_type=aspect_type,
        owner_id=_int(body, "owner_id"),
        subscription_id=_int(body, "subscription_id"),
        event_time=_int(body, "event_time"),
        updates=updates,
    )


class Webhook:
    def __init__(
        self,
        *,
        verify_token: str | None,
        subscription_id: int | None,
        owner_id: Callable[[], int | None],
        on_event: Callable[[Event], Awaitable[None]],
        metrics: Metrics,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.verify_token = verify_token
        self.subscription_id = subscription_id
        self.owner_id = owner_id
        self.on_event = on_event
        self.events = metrics.counter(
            "strava_webhook_events",
            "Strava webhook events by type and outcome.",
            ("object_type", "aspect_type", "outcome"),
        )
        self.counts = {"accepted": 0, "ignored": 0, "invalid": 0, "duplicate": 0}
        self.last_event_at: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def validate(self, request: Request) -> Response:
        params = request.query_params
        mode = params.get("hub.mode")
        challenge = params.get("hub.challenge")
        token = params.get("hub.verify_token")
        # A 400 with its own code: `invalid_parameter` is the 422 of our own API's queries, and
        # Strava's validation request is answered as Strava's documentation describes.
        if mode != "subscribe":
            raise ApiError(400, "invalid_challenge", "hub.mode: expected subscribe", parameter="hub.mode")
        if not challenge or len(challenge) > MAX_CHALLENGE or not challenge.isprintable():
            raise ApiError(
                400, "invalid_challenge", "hub.challenge: expected a short printable string", parameter="hub.challenge"
            )
        if not self.verify_token or not secret_matches(token, self.verify_token):
            raise ApiError(403, "forbidden", "The verify token does not match.")
        return Response(orjson.dumps({"hub.challenge": challenge}), media_type="application/json")

    async def receive(self, request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_EVENT_BYTES:
            raise ApiError(413, "payload_too_large", f"Webhook events are at most {MAX_EVENT_BYTES} bytes.")
        try:
            event = parse_event(raw)
        except ApiError:
            self._count("invalid", "invalid", "invalid")
            raise
        owner = self.owner_id()
        if (self.subscription_id is not None and event.subscription_id != self.subscription_id) or (
            owner is not None and event.owner_id != owner
        ):
            # Strava still wants a 200, or it retries; we just do nothing with it.
            self._count(event.object_type, event.aspect_type, "ignored")
            log.info("webhook_ignored", object_type=event.object_type, aspect_type=event.aspect_type)
            return _ok()
        if not await self._claim(event):
            self._count(event.object_type, event.aspect_type, "duplicate")
            log.info("webhook_duplicate", object_type=event.object_type, aspect_type=event.aspect_type)
            return _ok()
        self._count(event.object_type, event.aspect_type, "accepted")
        self.last_event_at = event.event_time
        task = asyncio.get_running_loop().create_task(self._handle(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _ok()

    async def _claim(self, event: Event) -> bool:
        """True unless another delivery of this event (here or on another instance) came first."""
        if self.store is None or event.deauthorization or event.event_time > self.clock() + CLAIM_SKEW_S:
            return True
        key = f"strava-integration:webhook:{event.object_type}:{event.object_id}:{event.aspect_type}:{event.event_time}"
        try:
            return await self.store.set_if_absent(key, b"1", CLAIM_TTL_S)
        except StoreError as exc:
            log.warning("webhook_unclaimed", reason="store unavailable; handled anyway", error=type(exc).__name__)
            return True

    async def _handle(self, event: Event) -> None:
        try:
            await self.on_event(event)
        except Exception as exc:
            log.warning("webhook_event_failed", object_type=event.object_type, error=type(exc).__name__)

    def _count(self, object_type: str, aspect_type: str, outcome: str) -> None:
        self.counts[outcome] += 1
        self.events.labels(object_type, aspect_type, outcome).inc()

    def status(self) -> dict[str, Any]:
        return {**self.counts, "last_event_time": self.last_event_at}

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _ok() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")
