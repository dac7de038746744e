"""Query parameters of the data routes, parsed strictly: a bad value is a 422 naming the parameter.

Times (`after`, `before`) come as epoch seconds or as RFC 3339 text: a date (`2026-01-01`, 00:00
UTC of that day) or a date-time with `Z` or an offset (`2026-01-01T06:30:00+02:00`). A date-time
without an offset would mean a different instant in every time zone, so it is refused, as is
everything `datetime.fromisoformat` would let through on its own (`2026-01-01 06:30`, week dates,
`20260101`, non-ASCII digits): the regular expressions below are the whole grammar.
"""

from __future__ import annotations

import datetime
import re

from starlette.datastructures import QueryParams

from service.errors import invalid_parameter

MAX_EPOCH = 4_102_444_800  # 2100-01-01; a bigger epoch number is a typo (milliseconds), not a date
MAX_TIME_LENGTH = 40  # the longest RFC 3339 form we accept is 35 characters
TIME_EXPECTED = (
    f"epoch seconds (0 to {MAX_EPOCH}), a date (2026-01-01) "
    "or a date-time with an offset (2026-01-01T06:30:00Z, 2026-01-01T06:30:00+02:00)"
)
# [0-9], never \d: \d also matches other scripts' digits, which int() would then happily read.
_DATE = r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
DATE = re.compile(_DATE)
DATE_TIME = re.compile(
    _DATE + r"T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?"
    r"(?:Z|(?P<sign>[+-])(?P<off_hour>[0-9]{2}):(?P<off_minute>[0-9]{2}))"
)
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()


def int_param(params: QueryParams, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or not lo <= int(raw) <= hi:
        raise invalid_parameter(name, f"an integer from {lo} to {hi}")
    return int(raw)


def parse_time(raw: str, *, round_up: bool = False) -> int | None:
    """Epoch seconds for `raw`, or None if it is not one of the accepted forms.

    A fraction of a second rounds down, or up with `round_up`: whole-second start times compare
    with the rounded value exactly as they would with the exact one (`> t` for after, `< t` for before).
    Dates and date-times may lie outside 1970-2099 (their year has four digits); only the bare
    number is bounded, since there a too-big value is a unit mistake.
    """
    if len(raw) > MAX_TIME_LENGTH or not raw.isascii():
        return None
    if raw.isdigit():
        seconds = int(raw)
        return seconds if seconds <= MAX_EPOCH else None
    found = DATE.fullmatch(raw) or DATE_TIME.fullmatch(raw)
    if found is None:
        return None
    parts = found.groupdict()
    try:
        day = datetime.date(int(parts["year"]), int(parts["month"]), int(parts["day"])).toordinal()
    except ValueError:  # 2026-02-30, month 13, year 0
        return None
    seconds = (day - _EPOCH_DAY) * 86_400
    if parts.get("hour") is None:
        return seconds
    hour, minute, second = int(parts["hour"]), int(parts["minute"]), int(parts["second"])
    if hour > 23 or minute > 59 or second > 59:  # no leap seconds: nothing could be placed at :60
        return None
    seconds += hour * 3600 + minute * 60 + second
    if parts["sign"] is not None:
        off_hour, off_minute = int(parts["off_hour"]), int(parts["off_minute"])
        if off_hour > 23 or off_minute > 59:
            return None
        offset = off_hour * 3600 + off_minute * 60
        seconds -= offset if parts["sign"] == "+" else -offset
    if round_up and parts["fraction"] is not None and parts["fraction"].strip("0"):
        seconds += 1
    return seconds


def time_param(params: QueryParams, name: str, *, round_up: bool = False) -> int | None:
    """The `name` query parameter as epoch seconds; absent or empty is None; anything else is a 422."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    seconds = parse_time(raw, round_up=round_up)
    if seconds is None:
        raise invalid_parameter(name, TIME_EXPECTED)
    return seconds


# OpenAPI: what `time_param` accepts. The integer branch is how a query string carries a number.
TIME_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH},
        {"type": "string", "format": "date", "maxLength": 10},
        {"type": "string", "format": "date-time", "maxLength": MAX_TIME_LENGTH},
    ]
}
