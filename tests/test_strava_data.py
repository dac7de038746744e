"""The data layer on its own: a webhook event that lands while a list refresh is on its way."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
import pytest

from observability.metrics import Metrics
from service.projects.strava_integration import privacy
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.data import FeedQuery, StravaData
from service.projects.strava_integration.polyline import encode_polyline
from service.projects.strava_integration.privacy import Route, TrimmedRoutes, public_route
from tests.support import FakeClock


def activity(activity_id: int, name: str, *, private: bool = False) -> dict[str, Any]:
    return {
        "id": activity_id,
        "name": name,
        "sport_type": "Run",
        "start_date": f"2024-05-0{activity_id}T07:00:00Z",
        "private": private,
        "visibility": "everyone",
        "map": {"summary_polyline": ""},
        "athlete": {"id": 7},
    }


class FakeTokens:
    athlete_id = 7

    def learn_athlete(self, athlete_id: object) -> None:
        pass


class FakeClient:
    """Answers list calls from `lists` in order; the list call numbered `held` waits for `gate`."""

    def __init__(self, lists: list[list[dict[str, Any]]], held: int) -> None:
        self.tokens = FakeTokens()
        self.lists = lists
        self.held = held
        self.calls = 0
        self.gate = asyncio.Event()

    async def activities(self, page: int, per_page: int) -> list[dict[str, Any]]:
        self.calls += 1
        answer = self.lists[min(self.calls, len(self.lists)) - 1]
        if self.calls == self.held:
            await self.gate.wait()
        return answer


def make_data(client: FakeClient) -> StravaData:
    settings = StravaSettings(client_id="1", client_secret="s" * 8, refresh_token="r" * 8)
    return StravaData(settings, client, Metrics("test"), FakeClock())  # type: ignore[arg-type]


async def names(data: StravaData) -> dict[int, str]:
    body = orjson.loads((await data.feed(FeedQuery())).body)
    return {a["id"]: a["name"] for a in body["activities"]}


async def settle(client: FakeClient, calls: int) -> None:
    for _ in range(100):
        if client.calls >= calls:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)


async def test_an_activity_made_private_during_a_refresh_does_not_come_back() -> None:
    before = [activity(1, "one"), activity(2, "two")]
    after = [activity(1, "one"), activity(2, "two", private=True)]
    client = FakeClient([before, before, after], held=2)
    data = make_data(client)
    assert await names(data) == {1: "one", 2: "two"}

    data.refresh()  # list call 2 is on its way, and was asked for before the change
    await settle(client, 2)
    data.activity_changed(2)  # the webhook: activity 2 turned private
    assert await names(data) == {1: "one"}  # hidden at once

    client.gate.set()  # call 2 lands with the old list, where 2 is still public...
    await settle(client, 3)  # ...and a fresh list (call 3) is fetched after it
    assert await names(data) == {1: "one"}
    assert client.calls == 3


async def test_an_activity_changed_during_a_refresh_comes_back_from_the_next_list() -> None:
    before = [activity(1, "one"), activity(2, "two")]
    renamed = [activity(1, "one"), activity(2, "two, renamed")]
    client = FakeClient([before, before, renamed], held=2)
    data = make_data(client)
    await names(data)
    data.refresh()
    await settle(client, 2)
    data.activity_changed(2)
    client.gate.set()
    await settle(client, 3)
    assert await names(data) == {1: "one", 2: "two, renamed"}  # the list asked for after the event
    assert data._hidden == {}  # nothing left to hide once a list newer than the event arrived


class DetailClient(FakeClient):
    """Also answers detail and stats calls, from what the test sets, counting them."""

    def __init__(self, lists: list[list[dict[str, Any]]]) -> None:
        super().__init__(lists, held=0)
        self.description = "first"
        self.runs = 1
        self.detail_calls = 0
        self.stats_calls = 0

    async def activity(self, activity_id: int) -> dict[str, Any]:
        self.detail_calls += 1
        return {**activity(activity_id, "one"), "description": self.description}

    async def stats(self, athlete_id: int) -> dict[str, Any]:
        self.stats_calls += 1
        return {"all_run_totals": {"count": self.runs}}


async def background_done(data: StravaData) -> None:
    """Every background refresh ended (one may start another: wait for that too)."""
    while data.cache._background:
        await asyncio.gather(*data.cache._background)


async def test_a_detail_and_the_stats_are_rendered_once_per_load() -> None:
    client = DetailClient([[activity(1, "one")]])
    data = make_data(client)
    first, again = await data.activity(1), await data.activity(1)
    assert first is again and first.etag == again.etag  # one body, one ETag, one prepared response
    stats, stats_again = await data.stats(), await data.stats()
    assert stats is stats_again
    assert orjson.loads(first.body)["activity"]["description"] == "first"
    assert orjson.loads(stats.body)["all_time"]["run"]["count"] == 1
    assert (client.detail_calls, client.stats_calls) == (1, 1)

    # A change: the activity is edited (a webhook event) and the stats refreshed. The clock has
    # not moved, so the new loads share the old ones' timestamps: the new bodies must come anyway.
    client.description, client.runs = "edited", 2
    data.activity_changed(1)
    await background_done(data)
    data.refresh()
    await background_done(data)
    edited, new_stats = await data.activity(1), await data.stats()
    assert orjson.loads(edited.body)["activity"]["description"] == "edited" and edited.etag != first.etag
    assert orjson.loads(new_stats.body)["all_time"]["run"]["count"] == 2 and new_stats.etag != stats.etag
    assert await data.activity(1) is edited and await data.stats() is new_stats


async def test_a_purge_forgets_the_rendered_details_and_the_route_index() -> None:
    client = DetailClient([[activity(1, "one")]])
    data = make_data(client)
    first = await data.activity(1)
    await data.route(1)  # indexes the list's routes
    assert data._route_index is not None
    data.forget_cached()
    assert data._rendered_items == {} and data._route_index is None  # nothing of the purged list stays referenced
    again = await data.activity(1)
    assert again is not first and again.body == first.body and client.detail_calls == 2


async def test_the_list_is_shaped_from_what_warm_trimmed_with_a_small_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def spy(encoded: object, radius_m: float) -> Route | None:
        threads.append(threading.get_ident())
        return public_route(encoded, radius_m)

    monkeypatch.setattr(privacy, "public_route", spy)
    lists = [[activity(1, "one"), activity(2, "two")]]
    for i, a in enumerate(lists[0]):  # two routes 3 km long, each well outside its own privacy circles
        a["map"] = {"summary_polyline": encode_polyline([(51.5 + i, -0.1 + k * 0.001) for k in range(50)])}
    client = FakeClient(lists, held=0)
    settings = StravaSettings(client_id="1", client_secret="s" * 8, refresh_token="r" * 8)
    routes = TrimmedRoutes(200, max_entries=1)
    data = StravaData(settings, client, Metrics("test"), FakeClock(), routes=routes)  # type: ignore[arg-type]
    body = orjson.loads((await data.feed(FeedQuery())).body)
    assert [a["map"] is not None for a in body["activities"]] == [True, True]
    assert len(routes.entries) == 1  # the memo kept one of the two
    assert len(threads) == 2 and threading.get_ident() not in threads  # nothing was trimmed on the loop
