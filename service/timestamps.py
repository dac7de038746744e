"""Unix times as the ISO 8601 UTC strings our JSON bodies carry (`2024-05-01T10:03:20Z`)."""

from __future__ import annotations

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
