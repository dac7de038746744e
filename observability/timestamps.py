"""Unix times as ISO 8601 UTC strings: the one place they are formatted.

`iso_utc` (to the second) is what JSON bodies and health checks carry (`2024-05-01T10:03:20Z`);
`iso_utc_ms` (to the millisecond) is what every log line carries (`2024-05-01T10:03:20.123Z`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import overload


@overload
def iso_utc(ts: float) -> str: ...
@overload
def iso_utc(ts: None) -> None: ...
def iso_utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# (second, "YYYY-MM-DDTHH:MM:SS") and (millisecond, full text): each replaced as one tuple, so a
# log call on another thread never pairs one millisecond with another's text.
_second: tuple[int, str] = (-1, "")
_milli: tuple[int, str] = (-1, "")


def iso_utc_ms(ts: float) -> str:
    """To the millisecond, formatted at most once per millisecond.

    A busy service writes a dozen log lines in each millisecond; they share one string.
    """
    global _second, _milli
    milli = int(ts * 1000)
    cached = _milli
    if cached[0] == milli:
        return cached[1]
    second, frac = divmod(milli, 1000)
    prefix = _second
    if prefix[0] != second:
        prefix = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    text = f"{prefix[1]}.{frac:03d}Z"
    _milli = (milli, text)
    return text
