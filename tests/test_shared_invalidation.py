"""Webhook effects reach every instance: a hide, a missed message, a list in flight elsewhere, a purge.

End to end: three instances on one redis-server; the third hears no pub/sub message at all, so only
its version check tells it of a change. Then the data layer alone, two instances on a real store,
for what needs a Strava answer held in flight (a list requested before the change, landing after).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from observability.metrics import Metrics
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.data import ACTIVITIES, FeedQuery, StravaData
from service.store import RedisStore, StoreMetrics
from tests.figures import record
from tests.redis_server import RedisServer
from tests.shared_instances import Instance, clock_fixture, event, redis_server_fixture, running_instances, sim_fixture  # noqa: F401
from tests.strava_harness import LIST_CALL, PREFIX, Sim
from tests.support import FakeClock, wait_until
from tests.test_strava_data import FakeTokens, activity

ENV = {"STRAVA_CACHE_TTL_SECONDS": "300", "STRAVA_CACHE_STALE_SECONDS": "3600"}
# The spec says 1 s. That is a figure (recorded, see docs/SCALING.md), not a check: this bound is
# only a hang guard, so a loaded test machine cannot fail it.
WITHIN_S = 10.0


def feed_ids(instance: Instance) -> set[int]:
    response = instance.stack.feed("limit=200")
    assert response.status_code == 200, response.text
    return {a["id"] for a in response.json()["activities"]}


def post(instance: Instance, body: dict[str, Any]) -> int:
    response = instance.stack.post(
        PREFIX + "/webhook", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    return response.status_code


def test_a_hide_on_one_instance_reaches_all_even_one_that_missed_the_message(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    with running_instances(sim, tmp_path, clock, redis_server.url, ENV, deaf=(2,)) as (a, b, deaf):
        ids = feed_ids(a)
        assert feed_ids(b) == feed_ids(deaf) == ids
        target = sorted(ids)[len(ids) // 2]
        lists = sim.calls(LIST_CALL)

        sim.upsert(id=target, private=True)
        started = time.monotonic()
        assert post(a, event(sim, clock, object_id=target, updates={"private": "true"})) == 200
        assert target not in feed_ids(a)  # at once where it arrived
        reached: dict[str, float] = {}
        for name, instance in (("message", b), ("version check", deaf)):
            assert wait_until(lambda i=instance: target not in feed_ids(i), WITHIN_S, interval=0.02), name
            reached[name] = round(time.monotonic() - started, 3)
        # One refetch for the event, app-wide: the instance that received it.
        assert wait_until(lambda: sim.calls(LIST_CALL) == lists + 1, 5)
        time.sleep(0.3)
        assert sim.calls(LIST_CALL) == lists + 1
        assert all(target not in feed_ids(i) for i in (a, b, deaf))
        assert deaf.store.watcher_reads > 0
        record("shared invalidation: hide", reached_after_s=reached, strava_list_calls=1)


def test_a_deauthorization_on_one_instance_purges_every_instance(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    with running_instances(sim, tmp_path, clock, redis_server.url, ENV) as instances:
        a, b, c = instances
        for instance in instances:
            feed_ids(instance)
        assert b.stack.status()["cache"]["entries"] >= 1
        sim.state.revoke()  # as on Strava: the grant is gone before the event is sent
        deauthorization = event(
            sim,
            clock,
            object_type="athlete",
            object_id=sim.state.config.athlete_id,
            updates={"authorized": "false"},
        )
        assert post(a, deauthorization) == 200
        for instance in (b, c):
            # Nothing of the owner's is served any more: not from memory, not from the store.
            assert wait_until(lambda i=instance: i.stack.feed().status_code != 200, WITHIN_S, interval=0.02)
            assert instance.stack.status()["cache"]["entries"] == 0
        for instance in instances:
            assert instance.stack.feed().status_code in (502, 503)
        sim.state.reset()


# ---- the data layer alone: two instances, one real store, Strava answers held at will ----


class FakeStrava:
    """One Strava for every instance: answers list calls from `lists` in order; call n waits for gates[n]."""

    def __init__(self, lists: list[list[dict[str, Any]]], held: tuple[int, ...]) -> None:
        self.lists = lists
        self.calls = 0
        self.gates = {n: asyncio.Event() for n in held}


class FakeBudget:
    async def sync(self) -> None:
        pass


class FakeClient:
    def __init__(self, strava: FakeStrava) -> None:
        self.strava = strava
        self.tokens = FakeTokens()
        self.budget = FakeBudget()

    async def activities(self, page: int, per_page: int) -> list[dict[str, Any]]:
        self.strava.calls += 1
        number = self.strava.calls
        answer = self.strava.lists[min(number, len(self.strava.lists)) - 1]
        if number in self.strava.gates:
            await self.strava.gates[number].wait()
        return answer

    async def stats(self, athlete_id: int) -> dict[str, Any]:
        return {}


_prefixes = iter(range(1_000_000))


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[list[RedisStore], FakeClock]]:
    prefix = f"pair{next(_prefixes)}:"
    stores = [RedisStore(redis_server.url, StoreMetrics(Metrics("test")), key_prefix=prefix) for _ in range(2)]
    for store in stores:
        await store.start()
    yield stores, FakeClock()
    for store in stores:
        await store.aclose()


def make_data(strava: FakeStrava, store: RedisStore, clock: FakeClock) -> StravaData:
    settings = StravaSettings(
        client_id="1", client_secret="s" * 8, refresh_token="r" * 8, cache_ttl_seconds=60, cache_stale_seconds=3600
    )
    return StravaData(settings, FakeClient(strava), Metrics("test"), clock, store=store)  # type: ignore[arg-type]


async def names(data: StravaData) -> dict[int, str]:
    body = orjson.loads((await data.feed(FeedQuery())).body)
    return {a["id"]: a["name"] for a in body["activities"]}


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.01)


async def stored_ids(store: RedisStore) -> set[int] | None:
    raw = await store.get(f"strava-integration:cache:{ACTIVITIES}")
    return None if raw is None else {a["id"] for a in orjson.loads(raw)["value"]}


async def test_a_list_in_flight_on_another_instance_does_not_bring_a_hidden_activity_back(
    pair: tuple[list[RedisStore], FakeClock],
) -> None:
    (store_a, store_b), clock = pair
    before = [activity(1, "one"), activity(2, "two")]
    after = [activity(1, "one"), activity(2, "two", private=True)]
    strava = FakeStrava([before, before, after], held=(2, 3))
    a, b = make_data(strava, store_a, clock), make_data(strava, store_b, clock)
    await a.start()  # b is never started: it hears no message and checks no version, only the store tells it
    try:
        assert await names(a) == {1: "one", 2: "two"}
        assert await names(b) == {1: "one", 2: "two"} and strava.calls == 1  # from the store

        clock.advance(61)
        await names(b)  # stale: b starts the refresh, and list call 2 is on its way
        await eventually(lambda: _true(strava.calls == 2))
        a.activity_changed(2)  # the webhook reaches a: activity 2 turned private
        assert await names(a) == {1: "one"}
        await eventually(lambda: _hidden(store_a, 2))

        strava.gates[2].set()  # call 2 lands on b with the old list, where 2 is still public
        await eventually(lambda: _true(strava.calls == 3))  # a's refetch for the event, after b's
        assert await stored_ids(store_b) == {1}
        assert await names(b) == {1: "one"}

        strava.gates[3].set()
        await eventually(lambda: _true(a.cache.peek(ACTIVITIES) is not None and not a.cache._inflight))
        assert await names(a) == {1: "one"} and await names(b) == {1: "one"}
        assert strava.calls == 3
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_purge_makes_a_load_in_flight_elsewhere_unservable(pair: tuple[list[RedisStore], FakeClock]) -> None:
    (store_a, store_b), clock = pair
    before = [activity(1, "one"), activity(2, "two")]
    strava = FakeStrava([before, before, before], held=(2,))
    a, b = make_data(strava, store_a, clock), make_data(strava, store_b, clock)
    await a.start()
    await b.start()
    try:
        await names(a)
        await names(b)
        clock.advance(61)
        await names(b)
        await eventually(lambda: _true(strava.calls == 2))
        await a.purge()
        assert await stored_ids(store_a) is None
        await eventually(lambda: _true(len(b.cache) == 0))  # the message reached b
        strava.gates[2].set()  # b's list, asked for before the purge, lands after it
        await eventually(lambda: _true(not b.cache._inflight))
        assert await stored_ids(store_a) is None  # not written back
        assert len(b.cache) == 0
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_entry_of_unknown_version_is_not_served_after_a_purge(
    pair: tuple[list[RedisStore], FakeClock],
) -> None:
    """Loaded while the version could not be read: it may predate any purge, so none lets it through."""
    (store_a, store_b), clock = pair
    strava = FakeStrava([[activity(1, "one")], [activity(1, "fresh")]], held=())
    a, b = make_data(strava, store_a, clock), make_data(strava, store_b, clock)
    try:
        assert await names(a) == {1: "one"}
        key = f"strava-integration:cache:{ACTIVITIES}"
        record = orjson.loads(await store_a.get(key) or b"{}")
        await store_a.set(key, orjson.dumps({**record, "v": None}), 600)
        # A purge, as `purge` records it: the next version, then the hides record saying so.
        purge_version = await store_a.incr("strava-integration:version")
        await store_a.set("strava-integration:hidden", orjson.dumps({"purged": purge_version, "ids": {}}), 600)
        assert await names(b) == {1: "fresh"}  # not the stored list: b asked Strava itself
        assert strava.calls == 2
    finally:
        await a.aclose()
        await b.aclose()


async def _true(value: bool) -> bool:
    return value


async def _hidden(store: RedisStore, activity_id: int) -> bool:
    raw = await store.get("strava-integration:hidden")
    return raw is not None and str(activity_id) in orjson.loads(raw)["ids"]
