"""Strava's rate-limit budget, kept from the headers of its responses; it never sleeps.

Strava counts requests in a 15-minute window (restarting at :00/:15/:30/:45 UTC) and a daily one
(restarting at midnight UTC), overall and for reads. We stop calling while any count is within
`reserve` (ten times that for the day) of its limit, or after a 429, until the window rolls over.
A usage number belongs to the window it was observed in: once that window has passed it is void.

The limits are Strava's per application, so with a shared store every instance spends one budget:
each reading goes to `strava-integration:budget:readings` (kept to the day's end) and each block
to `strava-integration:budget:blocked-until` (kept as long as it lasts). `sync()`, before each
upstream call (never on the hot path), takes in what the other instances saw; a store that does
not answer leaves this instance with its own view.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import structlog

from observability.timestamps import iso_utc
from service.projects.strava_integration.errors import BudgetExhausted
from service.projects.strava_integration.upstream_metrics import KINDS, WINDOWS, StravaMetrics
from service.store import Store, StoreError

log = structlog.get_logger("strava.budget")

QUARTER_S = 15 * 60
DAY_S = 24 * 3600
DAILY_RESERVE_FACTOR = 10
_HEADERS = {
    "overall": ("x-ratelimit-limit", "x-ratelimit-usage"),
    "read": ("x-readratelimit-limit", "x-readratelimit-usage"),
}
_LENGTH = {"15min": QUARTER_S, "day": DAY_S}
READINGS_KEY = "strava-integration:budget:readings"
BLOCKED_KEY = "strava-integration:budget:blocked-until"


def window_end(now: float, window: str) -> float:
    """When the window containing `now` rolls over: the next quarter hour or the next UTC midnight."""
    length = _LENGTH[window]
    return (math.floor(now / length) + 1) * length


def _pair(value: str | None) -> tuple[int, int] | None:
    """'15min,day' as two non-negative ints, or None for anything else."""
    if not value:
        return None
    parts = value.split(",")
    if len(parts) != 2:
        return None
    try:
        a, b = int(parts[0].strip()), int(parts[1].strip())
    except ValueError:
        return None
    return (a, b) if a >= 0 and b >= 0 else None


@dataclass(slots=True)
class _Reading:
    """One kind's limits and usage as last reported, with the windows they were reported in."""

    limit: dict[str, int]
    usage: dict[str, int]
    window_index: dict[str, int]  # window -> floor(observed_at / length)


class Budget:
    def __init__(
        self, reserve: int, metrics: StravaMetrics, clock: Callable[[], float], store: Store | None = None
    ) -> None:
        self.reserve = reserve
        self.metrics = metrics
        self.clock = clock
        # One instance's own memory is the whole truth without a shared store.
        self.store = store if store is not None and store.backend != "memory" else None
        self._readings: dict[str, _Reading] = {}
        self._observed_at: float | None = None
        self._blocked_until: float | None = None
        self._reason: str | None = None
        self._writes: set[asyncio.Task[None]] = set()
        # Evaluated at scrape time: a block ends by the clock, not by a call.
        metrics.ratelimit_blocked.set_function(lambda: 1.0 if self.blocked_until() is not None else 0.0)

    def _reserve(self, window: str) -> int:
        return self.reserve * (DAILY_RESERVE_FACTOR if window == "day" else 1)

    def _current_usage(self, kind: str, window: str, now: float) -> int | None:
        reading = self._readings.get(kind)
        if reading is None or reading.window_index[window] != math.floor(now / _LENGTH[window]):
            return None
        return reading.usage[window]

    def record(self, headers: Mapping[str, str], status: int) -> None:
        """Learn from one Strava response (any status): its rate-limit headers, and a 429."""
        now = self.clock()
        blocked_before = self._blocked_until
        observed_before = self._observed_at
        lowered = {name.lower(): value for name, value in headers.items()}
        for kind in KINDS:
            limit_header, usage_header = _HEADERS[kind]
            limits, usage = _pair(lowered.get(limit_header)), _pair(lowered.get(usage_header))
            if limits is None or usage is None:
                continue
            self._readings[kind] = _Reading(
                limit=dict(zip(WINDOWS, limits, strict=True)),
                usage=dict(zip(WINDOWS, usage, strict=True)),
                window_index={w: math.floor(now / _LENGTH[w]) for w in WINDOWS},
            )
            self._observed_at = now
            self._publish(kind)
        if status == 429:
            # Strava says stop. Wait for the day if a daily count is the spent one, else the quarter.
            window = "day" if self._spent_daily(now) else "15min"
            self._block(now, window, f"Strava answered 429 ({window} window)")
        else:
            self._evaluate(now)
        if self.store is not None and (self._observed_at != observed_before or self._blocked_until != blocked_before):
            # Written at once, in the background: record() runs inside the client's request path.
            task = asyncio.get_running_loop().create_task(self._share(now, self._blocked_until != blocked_before))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _share(self, now: float, blocked: bool) -> None:
        assert self.store is not None
        try:
            if blocked and self._blocked_until is not None:
                until, reason = self._blocked_until, self._reason
                current = _shared_block(await self.store.get(BLOCKED_KEY))
                if current is None or current[0] < until:
                    record = orjson.dumps({"until": until, "reason": reason})
                    await self.store.set(BLOCKED_KEY, record, ttl_s=max(until - now, 1.0))
            if self._readings:
                readings = {kind: asdict(r) for kind, r in self._readings.items()}
                record = orjson.dumps({"observed_at": self._observed_at, "readings": readings})
                await self.store.set(READINGS_KEY, record, ttl_s=max(window_end(now, "day") - now, 1.0))
        except StoreError as exc:
            log.warning("strava_budget_not_shared", error=type(exc).__name__)

    async def sync(self) -> None:
        """Take in the other instances' readings and blocks (two store reads; none without a shared store)."""
        if self.store is None:
            return
        try:
            block = _shared_block(await self.store.get(BLOCKED_KEY))
            raw = await self.store.get(READINGS_KEY)
        except StoreError:
            return  # our own view, then: it still blocks on everything this instance met
        now = self.clock()
        if block is not None and block[0] > now and (self._blocked_until is None or self._blocked_until < block[0]):
            self._blocked_until, self._reason = block
        shared = _shared_readings(raw)
        if shared is not None and (self._observed_at is None or shared[0] > self._observed_at):
            self._observed_at, self._readings = shared
            for kind in self._readings:
                self._publish(kind)

    def _publish(self, kind: str) -> None:
        reading = self._readings[kind]
        for window in WINDOWS:
            self.metrics.ratelimit_limit.labels(window, kind).set(reading.limit[window])
            self.metrics.ratelimit_usage.labels(window, kind).set(reading.usage[window])

    async def aclose(self) -> None:
        await asyncio.gather(*self._writes, return_exceptions=True)

    def _spent_daily(self, now: float) -> bool:
        for kind in KINDS:
            used = self._current_usage(kind, "day", now)
            if used is not None and used >= self._readings[kind].limit["day"]:
                return True
        return False

    def _evaluate(self, now: float) -> None:
        # The daily window first: when both are spent, the longer block is the true one.
        for window in ("day", "15min"):
            for kind in KINDS:
                used = self._current_usage(kind, window, now)
                if used is None:
                    continue
                threshold = max(self._readings[kind].limit[window] - self._reserve(window), 1)
                if used >= threshold:
                    self._block(now, window, f"{window} {kind} budget spent ({used} of {threshold} usable)")
                    return

    def _block(self, now: float, window: str, reason: str) -> None:
        until = window_end(now, window)
        if self._blocked_until is None or until > self._blocked_until or self._blocked_until <= now:
            self._blocked_until = until
            self._reason = reason

    def blocked_until(self) -> float | None:
        if self._blocked_until is not None and self._blocked_until > self.clock():
            return self._blocked_until
        return None

    def check(self) -> None:
        """Raise `BudgetExhausted` when no request may be sent now. Never waits."""
        now = self.clock()
        self._evaluate(now)
        until = self.blocked_until()
        if until is not None:
            raise BudgetExhausted(math.ceil(until - now))

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        until = self.blocked_until()
        limits: dict[str, dict[str, int | None]] = {}
        usage: dict[str, dict[str, int | None]] = {}
        for kind in KINDS:
            reading = self._readings.get(kind)
            limits[kind] = {w: (reading.limit[w] if reading else None) for w in WINDOWS}
            usage[kind] = {w: self._current_usage(kind, w, now) for w in WINDOWS}
        return {
            "limits": limits,
            "usage": usage,  # None: unknown in the current window
            "reserve": {w: self._reserve(w) for w in WINDOWS},
            "observed_at": iso_utc(self._observed_at),
            "blocked": until is not None,
            "blocked_until": iso_utc(until),
            "retry_after": math.ceil(until - now) if until is not None else None,
            "reason": self._reason if until is not None else None,
        }


def _shared_block(raw: bytes | None) -> tuple[float, str | None] | None:
    try:
        record = orjson.loads(raw) if raw else None
        return (float(record["until"]), str(record.get("reason") or "")) if isinstance(record, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _shared_readings(raw: bytes | None) -> tuple[float, dict[str, _Reading]] | None:
    try:
        record = orjson.loads(raw) if raw else None
        if not isinstance(record, dict):
            return None
        readings = {
            kind: _Reading(
                limit={w: int(r["limit"][w]) for w in WINDOWS},
                usage={w: int(r["usage"][w]) for w in WINDOWS},
                window_index={w: int(r["window_index"][w]) for w in WINDOWS},
            )
            for kind, r in record["readings"].items()
            if kind in KINDS
        }
        return float(record["observed_at"]), readings
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
