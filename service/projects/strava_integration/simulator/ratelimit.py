"""Strava's two-window rate-limit counters (15-minute and daily, overall and read)."""

from typing import Any

LIMIT_KEYS = ("limit_15min", "limit_day", "read_limit_15min", "read_limit_day")
USAGE_KEYS = ("usage_15min", "usage_day", "read_usage_15min", "read_usage_day")
MAX_COUNTER = 10**9
QUARTER_S = 15 * 60
DAY_S = 24 * 3600


def _checked(values: dict[str, Any], allowed: tuple[str, ...], minimum: int) -> dict[str, int]:
    unknown = set(values) - set(allowed)
    if unknown:
        raise ValueError(f"unknown keys: {sorted(unknown)}")
    for key, value in values.items():
        # bool is an int subclass; `true` as a limit is a caller bug, not 1.
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_COUNTER:
            raise ValueError(f"{key} must be an integer in [{minimum}, {MAX_COUNTER}]")
    return values


class RateLimiter:
    """Counts requests per window; windows are aligned to the clock, as Strava's are.

    The 15-minute window restarts at :00/:15/:30/:45 and the daily one at UTC midnight, so the
    window index is simply `now // length`; a change of index means the window rolled over.
    """

    def __init__(self, limits: dict[str, int], now: float) -> None:
        self.limits = dict(_checked(limits, LIMIT_KEYS, 1))
        self.usage = dict.fromkeys(USAGE_KEYS, 0)
        self._quarter = int(now // QUARTER_S)
        self._day = int(now // DAY_S)

    def _roll(self, now: float) -> None:
        quarter, day = int(now // QUARTER_S), int(now // DAY_S)
        if quarter != self._quarter:
            self._quarter = quarter
            self.usage["usage_15min"] = self.usage["read_usage_15min"] = 0
        if day != self._day:
            self._day = day
            self.usage["usage_day"] = self.usage["read_usage_day"] = 0

    def hit(self, now: float, *, read: bool = True) -> bool:
        """Count one request; True when it pushed any counter past its limit.

        Rejected requests are counted too: Strava keeps counting while it answers 429.
        """
        self._roll(now)
        keys = USAGE_KEYS if read else USAGE_KEYS[:2]
        for key in keys:
            self.usage[key] = min(self.usage[key] + 1, MAX_COUNTER)
        return any(self.usage[u] > self.limits[lim] for u, lim in zip(USAGE_KEYS, LIMIT_KEYS, strict=True))

    def headers(self) -> list[tuple[bytes, bytes]]:
        limits, usage = self.limits, self.usage
        pairs = (
            ("x-ratelimit-limit", limits["limit_15min"], limits["limit_day"]),
            ("x-ratelimit-usage", usage["usage_15min"], usage["usage_day"]),
            ("x-readratelimit-limit", limits["read_limit_15min"], limits["read_limit_day"]),
            ("x-readratelimit-usage", usage["read_usage_15min"], usage["read_usage_day"]),
        )
        return [(name.encode(), f"{a},{b}".encode()) for name, a, b in pairs]

    def snapshot(self, now: float) -> dict[str, int]:
        self._roll(now)
        return {**self.usage, **self.limits}

    def set_limits(self, values: dict[str, Any]) -> None:
        self.limits.update(_checked(values, LIMIT_KEYS, 1))

    def set_usage(self, now: float, values: dict[str, Any]) -> None:
        # Roll first, or the next request would see a stale window and wipe what was just set.
        self._roll(now)
        self.usage.update(_checked(values, USAGE_KEYS, 0))
