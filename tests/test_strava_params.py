"""The data routes' query parameters: times as epoch seconds, RFC 3339 dates and date-times, strictly."""

from __future__ import annotations

import datetime
from typing import Any

import httpx
import pytest
from starlette.datastructures import QueryParams

from service.errors import ApiError
from service.projects.strava_integration.params import MAX_EPOCH, int_param, parse_time, time_param
from tests.support import ServiceProcess

NEW_YEAR = 1_767_225_600  # 2026-01-01T00:00:00Z

ACCEPTED = [
    ("0", 0),
    ("1767225600", NEW_YEAR),
    (str(MAX_EPOCH), MAX_EPOCH),
    ("2026-01-01", NEW_YEAR),  # a date is 00:00 UTC of that day
    ("2026-01-01T00:00:00Z", NEW_YEAR),
    ("2026-01-01T06:30:00+02:00", NEW_YEAR + 4 * 3600 + 1800),
    ("2026-01-01T04:30:00Z", NEW_YEAR + 4 * 3600 + 1800),
    ("2025-12-31T21:00:00-03:00", NEW_YEAR),
    ("2026-01-01T00:00:00-00:00", NEW_YEAR),  # RFC 3339's "offset unknown": UTC
    ("2026-01-01T00:00:00.000Z", NEW_YEAR),
    ("2026-01-01T00:00:00.9Z", NEW_YEAR),  # rounds down (for `after`)
    ("2024-02-29", 1_709_164_800),  # a leap day
    ("1969-12-31", -86_400),  # an ISO time has its own four-digit year: no 1970-2099 bound
    ("0001-01-01T00:00:00+23:59", -62_135_596_800 - 23 * 3600 - 59 * 60),  # no datetime overflow either
    ("9999-12-31T23:59:59-23:59", 253_402_300_799 + 23 * 3600 + 59 * 60),
]

REJECTED = [
    "2026-01-01T06:30:00",  # no offset: a different instant in every time zone
    "2026-01-01T06:30Z",  # RFC 3339 requires seconds
    "2026-01-01 06:30:00Z",  # fromisoformat takes a space; we do not
    "2026-01-01t06:30:00z",
    "2026-01-01T06:30:00+0200",
    "2026-01-01T06:30:00+02",
    "2026-01-01T06:30:00+24:00",
    "2026-01-01T06:30:00+02:60",
    "2026-01-01T24:00:00Z",
    "2026-01-01T23:60:00Z",
    "2026-12-31T23:59:60Z",  # a leap second
    "2026-01-01T06:30:00.Z",
    "2026-01-01T06:30:00.1234567890Z",
    "2026-W01-1",  # week dates (fromisoformat in 3.11 reads them)
    "2026-001",  # ordinal dates
    "2026-1-01",
    "2026-02-30",
    "2025-02-29",
    "2026-13-01",
    "2026-00-10",
    "0000-01-01",
    "+2026-01-01",
    "12026-01-01",
    " 2026-01-01",
    "2026-01-01 ",
    "2026-01-01\n",
    "\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661",  # Arabic-Indic digits: int() would read them
    "\uff11\uff17\uff16\uff17\uff12\uff12\uff15\uff16\uff10\uff10",  # fullwidth digits
    "-1",
    str(MAX_EPOCH + 1),  # bigger than 2100: milliseconds by mistake
    "1767225600000",
    "1e9",
    "1767225600.5",
    "0x10",
    "now",
    "2026-01-01T00:00:00Z" + "0" * 30,  # over the length bound
    "0" * 41,
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_accepted_times(raw: str, expected: int) -> None:
    assert parse_time(raw) == expected
    if raw.count(":") == 3 and "T" in raw:  # a date-time with offset: the same as Python's reading of it
        assert datetime.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() // 1 == expected


@pytest.mark.parametrize("raw", REJECTED)
def test_rejected_times(raw: str) -> None:
    assert parse_time(raw) is None
    with pytest.raises(ApiError) as raised:
        time_param(QueryParams({"after": raw}), "after")
    assert (raised.value.status, raised.value.parameter) == (422, "after")
    assert "after" in raised.value.message and "2026-01-01" in raised.value.message


def test_basic_format_digits_are_epoch_seconds() -> None:
    # ISO 8601's basic format is not a date here: digits are epoch seconds, as they always were.
    assert parse_time("20260101") == 20_260_101


def test_fractions_round_towards_the_same_comparison() -> None:
    assert parse_time("2026-01-01T00:00:00.25Z") == NEW_YEAR
    assert parse_time("2026-01-01T00:00:00.25Z", round_up=True) == NEW_YEAR + 1
    assert parse_time("2026-01-01T00:00:00.000Z", round_up=True) == NEW_YEAR


def test_absent_or_empty_is_none() -> None:
    assert time_param(QueryParams(""), "before") is None
    assert time_param(QueryParams("before="), "before") is None


def test_int_param() -> None:
    assert int_param(QueryParams("limit=7"), "limit", 30, 1, 200) == 7
    assert int_param(QueryParams("limit="), "limit", 30, 1, 200) == 30
    for bad in ("0", "201", "-1", "7.0", "\u0667", "1" * 13):
        with pytest.raises(ApiError) as raised:
            int_param(QueryParams({"limit": bad}), "limit", 30, 1, 200)
        assert raised.value.parameter == "limit"


# ---- end to end: the feed filters by dates as by the same epoch ----

FEED = "/api/strava-integration/feed"


def feed(service: ServiceProcess, **params: Any) -> httpx.Response:
    return httpx.get(service.base_url + FEED, params={"limit": 200, **params}, timeout=10)


def started(activity: dict[str, Any]) -> int:
    return int(datetime.datetime.fromisoformat(activity["start_date"].replace("Z", "+00:00")).timestamp())


def test_feed_after_and_before_take_dates(sandbox_service: ServiceProcess) -> None:
    everything = feed(sandbox_service).json()["activities"]
    assert len(everything) >= 4
    # A day boundary with activities on both sides, so the filter visibly cuts.
    middle = datetime.datetime.fromtimestamp(started(everything[len(everything) // 2]), datetime.UTC)
    day = middle.date()
    midnight = int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp())
    by_date = feed(sandbox_service, after=day.isoformat())
    by_epoch = feed(sandbox_service, after=midnight)
    assert by_date.status_code == by_epoch.status_code == 200
    assert by_date.json() == by_epoch.json()
    kept = by_date.json()["activities"]
    assert 0 < len(kept) < len(everything)
    assert all(started(a) > midnight for a in kept)

    # The same instant written with an offset and with Z.
    local = datetime.datetime.fromtimestamp(midnight, datetime.timezone(datetime.timedelta(hours=2)))
    with_offset = feed(sandbox_service, before=local.isoformat())
    with_z = feed(sandbox_service, before=day.isoformat() + "T00:00:00Z")
    assert with_offset.status_code == with_z.status_code == 200
    assert with_offset.json() == with_z.json() == feed(sandbox_service, before=midnight).json()
    assert {a["id"] for a in with_z.json()["activities"]} | {a["id"] for a in kept} == {a["id"] for a in everything}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"after": "2026-01-01T06:30:00"}, "after"),
        ({"before": "2026-01-01 06:30:00Z"}, "before"),
        ({"after": "yesterday"}, "after"),
        ({"after": "2026-06-01", "before": "2026-01-01T00:00:00Z"}, "before"),
    ],
)
def test_feed_refuses_bad_times_naming_the_parameter(
    sandbox_service: ServiceProcess, params: dict[str, str], parameter: str
) -> None:
    response = feed(sandbox_service, **params)
    assert response.status_code == 422
    body = response.json()
    assert (body["error"], body["parameter"]) == ("invalid_parameter", parameter)
