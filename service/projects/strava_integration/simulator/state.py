"""SimulatorState: every piece of mutable simulator state behind one lock."""

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .activity_stats import activity_stats
from .faults import DEFAULT_DELAY_S, Fault, make_fault
from .grants import GrantStore
from .ratelimit import LIMIT_KEYS, USAGE_KEYS, RateLimiter
from .seed import athlete_summary, default_activity, detail_view, parse_iso_z, seed_activities, summary_view
from .sim_config import SimulatorConfig

MAX_ACTIVITY_ID = 2**53  # ids must survive a round trip through JavaScript clients
MAX_ACTIVITIES = 10_000
MAX_FIELDS = 200
VISIBILITIES = frozenset({"everyone", "followers_only", "only_me"})
Headers = list[tuple[bytes, bytes]]


class SimulatorState:
    """What the simulator knows and how it changes.

    A lock guards every method: the test fixtures serve the app from uvicorn in a background
    thread while the test thread pokes this object directly. Critical sections are tiny and
    never await, so the lock cannot stall the event loop in any meaningful way.
    """

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.RLock()
        # Seed relative to creation time and keep that anchor: reset() must reproduce the same data.
        self._anchor = clock()
        # Requests a `timeout` fault is holding right now, and how often they were let go early;
        # outside `_initialise`, so a reset never miscounts a request still held.
        self._held = 0
        self._releases = 0
        self._initialise()

    def _initialise(self) -> None:
        config, now = self.config, self.clock()
        self.tokens = GrantStore(config.initial_refresh_token, config.access_token_ttl_s)
        self.limiter = RateLimiter({key: getattr(config, key) for key in LIMIT_KEYS}, now)
        self.fault: Fault | None = None
        self.athlete = athlete_summary(config.athlete_id)
        self.activities = seed_activities(config.athlete_id, config.activity_count, self._anchor)
        self.calls: Counter[str] = Counter()
        self.total_api_calls = 0
        self.token_refreshes = 0
        self.code_exchanges = 0
        # Tokens that once worked, presented after they died: a client that keeps its token chain
        # straight (one refresh at a time, the newest token always saved) never presents one.
        self.dead_refresh_presented = 0
        self.dead_access_presented = 0
        self.grants_revoked = 0

    # ---- control operations (also exposed over HTTP under /_sim) ----

    def reset(self) -> None:
        with self._lock:
            self._initialise()

    def set_fault(
        self, kind: str, count: int | None = None, delay_s: float = DEFAULT_DELAY_S, path_prefix: str | None = None
    ) -> dict[str, Any] | None:
        fault = make_fault(kind, count, delay_s, path_prefix)
        with self._lock:
            self.fault = fault
        return fault.as_dict() if fault else None

    def set_limits(self, **values: int) -> dict[str, int]:
        with self._lock:
            self.limiter.set_limits(values)
            return dict(self.limiter.limits)

    def set_usage(self, **values: int) -> dict[str, int]:
        with self._lock:
            self.limiter.set_usage(self.clock(), values)
            return dict(self.limiter.usage)

    def revoke(self) -> bool:
        """The athlete revoked the app: every token of the grant stops working at once."""
        with self._lock:
            revoked = self.tokens.revoke_all()
            self.grants_revoked += revoked
            return revoked

    def revoke_token(self, token: str) -> bool:
        """oauth/revoke: either token of the grant ends the whole grant; False if it is not one of them."""
        with self._lock:
            if not self.tokens.owns(token):
                return False
            return self.revoke()

    def expire_access_tokens(self) -> None:
        with self._lock:
            self.tokens.expire_access()

    def upsert_activity(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge `fields` into the activity with `fields["id"]`, or create one; returns its detailed form."""
        _validate_activity_fields(fields)
        with self._lock:
            activity_id = fields.get("id")
            if activity_id is None:
                activity_id = max(self.activities, default=10_000_000_000) + 1_000
            current = self.activities.get(activity_id)
            if current is None:
                if len(self.activities) >= MAX_ACTIVITIES:
                    raise ValueError(f"at most {MAX_ACTIVITIES} activities")
                current = default_activity(activity_id, self.config.athlete_id, self.clock())
            merged = {**current, **fields, "id": activity_id}
            if isinstance(fields.get("map"), dict):
                merged["map"] = {**current["map"], **fields["map"]}
            if "device_name" in merged and merged["device_name"] is None:
                del merged["device_name"]  # null means "no device", which Strava says by leaving the key out
            self.activities[activity_id] = merged
            return detail_view(merged)

    def delete_activity(self, activity_id: int) -> bool:
        with self._lock:
            return self.activities.pop(activity_id, None) is not None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            snapshot = self.limiter.snapshot(self.clock())
            return {
                "calls": dict(self.calls),
                "total_api_calls": self.total_api_calls,
                "token_refreshes": self.token_refreshes,
                "code_exchanges": self.code_exchanges,
                "dead_refresh_presented": self.dead_refresh_presented,
                "dead_access_presented": self.dead_access_presented,
                "grant": self.tokens.number,
                "grants_revoked": self.grants_revoked,
                "refresh_token": self.tokens.refresh_token,
                "usage": {key: snapshot[key] for key in USAGE_KEYS},
                "limits": {key: snapshot[key] for key in LIMIT_KEYS},
                "fault": self.fault.as_dict() if self.fault else None,
                "activity_count": len(self.activities),
            }

    @property
    def refresh_token(self) -> str | None:
        return self.tokens.refresh_token

    # ---- held requests: a test can see that a delayed answer has not gone out yet, and end the wait ----

    @property
    def held(self) -> int:
        """How many requests a `timeout` fault is holding now (their answers have not been sent)."""
        with self._lock:
            return self._held

    def release_held(self) -> None:
        """Answer every request held now at once, as if its delay had run out."""
        with self._lock:
            self._releases += 1

    def hold(self) -> int:
        """A request starts waiting out its delay; returns the release mark to compare with."""
        with self._lock:
            self._held += 1
            return self._releases

    def released(self, mark: int) -> bool:
        with self._lock:
            return self._releases != mark

    def unhold(self) -> None:
        with self._lock:
            self._held -= 1

    # ---- request path ----

    def record_call(self, key: str, *, api: bool) -> None:
        with self._lock:
            self.calls[key] += 1
            self.total_api_calls += api

    def count_api_request(self) -> tuple[bool, Headers]:
        """Count one /api/v3 request; returns (over the limit?, rate-limit headers to send)."""
        with self._lock:
            exceeded = self.limiter.hit(self.clock())
            return exceeded, self.limiter.headers()

    def take_fault(self, path: str) -> Fault | None:
        """The fault to act out for this request, consuming one of its `count`."""
        with self._lock:
            fault = self.fault
            if fault is None or not fault.applies_to(path):
                return None
            if fault.count is not None:
                left = fault.count - 1
                self.fault = Fault(fault.kind, left, fault.delay_s, fault.path_prefix) if left > 0 else None
            return fault

    def access_valid(self, token: str) -> bool:
        with self._lock:
            state = self.tokens.access_state(token, self.clock())
            self.dead_access_presented += state == "dead"
            return state == "live"

    def refresh(self, refresh_token: str) -> dict[str, Any] | None:
        with self._lock:
            issued = self.tokens.refresh(refresh_token, self.clock())
            self.token_refreshes += issued is not None
            self.dead_refresh_presented += issued is None and self.tokens.is_dead_refresh(refresh_token)
            return issued

    def new_code(self) -> str:
        with self._lock:
            return self.tokens.new_code(self.clock())

    def redeem_code(self, code: str) -> dict[str, Any] | None:
        with self._lock:
            issued = self.tokens.redeem_code(code, self.clock())
            if issued is None:
                return None
            self.code_exchanges += 1
            return {**issued, "athlete": dict(self.athlete)}

    def deauthorize(self, access_token: str) -> bool:
        """The retired oauth/deauthorize: needs a live access token, then ends the grant."""
        with self._lock:
            if self.tokens.access_state(access_token, self.clock()) != "live":
                return False
            return self.revoke()

    def list_activities(self, *, before: int | None, after: int | None, page: int, per_page: int) -> list[dict]:
        with self._lock:
            dated = [(parse_iso_z(a["start_date"]), a["id"], a) for a in self.activities.values()]
        picked = [
            entry for entry in dated if (before is None or entry[0] < before) and (after is None or entry[0] > after)
        ]
        picked.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        offset = (page - 1) * per_page
        return [summary_view(entry[2]) for entry in picked[offset : offset + per_page]]

    def get_activity(self, activity_id: int) -> dict[str, Any] | None:
        with self._lock:
            activity = self.activities.get(activity_id)
            return detail_view(activity) if activity else None

    def athlete_stats(self) -> dict[str, Any]:
        with self._lock:
            return activity_stats(list(self.activities.values()), self.clock())


def _validate_activity_fields(fields: Any) -> None:
    if not isinstance(fields, dict):
        raise ValueError("activity must be a JSON object")
    if len(fields) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} fields")
    activity_id = fields.get("id")
    if activity_id is not None and (
        not isinstance(activity_id, int) or isinstance(activity_id, bool) or not 0 < activity_id < MAX_ACTIVITY_ID
    ):
        raise ValueError("id must be a positive integer")
    for key in ("start_date", "start_date_local"):
        if key in fields:
            try:
                parse_iso_z(fields[key])
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be an ISO 8601 timestamp like 2024-05-01T07:30:00Z") from None
    if "private" in fields and not isinstance(fields["private"], bool):
        raise ValueError("private must be a boolean")
    if "visibility" in fields and fields["visibility"] not in VISIBILITIES:
        raise ValueError(f"visibility must be one of {sorted(VISIBILITIES)}")
    if "map" in fields and not isinstance(fields["map"], dict):
        raise ValueError("map must be an object")
    if "name" in fields and not isinstance(fields["name"], str):
        raise ValueError("name must be a string")
    if fields.get("device_name") is not None and not isinstance(fields["device_name"], str):
        raise ValueError("device_name must be a string or null")
