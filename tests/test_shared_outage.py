"""Redis hung (SIGSTOP), down and back empty, under three instances: they serve what they hold, never a 500.

No timed assertions: every request of a burst must complete (httpx's generous timeout is the
bound) with a 200, fresh or stale; a request waits on the store at most its timeout, once (the
first failure marks the store down, and the others fail at once). Back empty: within 10 s the
store is used again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import redis

from tests.redis_server import RedisServer
from tests.shared_instances import Instance, clock_fixture, event, running_instances, sim_fixture  # noqa: F401
from tests.strava_harness import ADMIN, IN_PROCESS_LOG, LIST_CALL, PREFIX, Sim, assert_error
from tests.support import SECRETS, FakeClock, wait_until

TTL = 60
ENV = {"STRAVA_CACHE_TTL_SECONDS": str(TTL), "STRAVA_CACHE_STALE_SECONDS": "3600"}
BACK_WITHIN_S = 10.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own, to hang, stop and restart."""
    with RedisServer(password=SECRETS["REDIS_PASSWORD"]) as running:
        yield running


@pytest.fixture
def instances(sim: Sim, clock: FakeClock, tmp_path: Path, server: RedisServer) -> Iterator[list[Instance]]:
    with running_instances(sim, tmp_path, clock, server.url, ENV) as running:
        for instance in running:
            assert instance.stack.feed().status_code == 200  # each holds the list
        yield running
        if server.paused:
            server.resume()


async def burst(instances: list[Instance], paths: list[str]) -> list[int]:
    async with httpx.AsyncClient(timeout=20.0) as http:
        urls = [instances[n % len(instances)].stack.base_url + PREFIX + p for n, p in enumerate(paths)]
        return [r.status_code for r in await asyncio.gather(*(http.get(u) for u in urls))]


def mixed_paths(ids: list[int]) -> list[str]:
    """Lists past their TTL (stale, refreshing), cold details and stats (misses)."""
    return [p for n in range(10) for p in ("/feed", f"/activities/{ids[n]}", "/stats")]


def feed_ids(instance: Instance) -> list[int]:
    return [a["id"] for a in instance.stack.feed("limit=200").json()["activities"]]


@pytest.mark.parametrize("outage", ["hung", "down"])
async def test_without_the_store_every_instance_serves_what_it_holds_or_asks_strava_itself(
    instances: list[Instance], server: RedisServer, clock: FakeClock, outage: str
) -> None:
    ids = feed_ids(instances[0])
    if outage == "hung":
        server.pause()
    else:
        server.stop()
    clock.advance(TTL + 1)
    statuses = await burst(instances, mixed_paths(ids))
    assert statuses == [200] * len(statuses)
    assert wait_until(lambda: not any(i.store.up for i in instances), 5)
    for instance in instances:
        health = instance.stack.get("/readyz")
        assert health.status_code == 200
    # Fresh local entries still cost nothing; the store is not even tried.
    assert await burst(instances, ["/feed"] * 30) == [200] * 30


async def test_back_empty_the_store_is_used_again_within_ten_seconds(
    instances: list[Instance], server: RedisServer, clock: FakeClock, sim: Sim
) -> None:
    server.restart()  # no persistence: everything the instances shared is gone
    assert wait_until(lambda: all(i.store.up for i in instances), BACK_WITHIN_S)
    a, b, c = instances
    clock.advance(TTL + 1)
    lists = sim.calls(LIST_CALL)
    assert a.stack.feed().status_code == 200  # stale; a's refresh goes through the store again
    raw = redis.Redis.from_url(server.url)
    try:
        key = a.store.prefix + "strava-integration:cache:activities"
        assert wait_until(lambda: raw.exists(key) == 1, BACK_WITHIN_S)
    finally:
        raw.close()
    assert wait_until(lambda: a.stack.feed().json()["stale"] is False, 5)
    for instance in (b, c):  # expired too: they take a's fresh list from the store
        assert wait_until(lambda i=instance: i.stack.feed().json()["stale"] is False, 5)
    assert sim.calls(LIST_CALL) == lists + 1


def test_with_the_store_down_a_webhook_is_processed_anyway_and_an_oauth_state_is_refused(
    instances: list[Instance], server: RedisServer, clock: FakeClock, sim: Sim
) -> None:
    server.stop()
    a = instances[0]
    offset = IN_PROCESS_LOG.stat().st_size
    lists = sim.calls(LIST_CALL)
    target = feed_ids(a)[0]
    sim.upsert(id=target, private=True)  # as on Strava: the change is there before the event is sent
    body = orjson.dumps(event(sim, clock, object_id=target, updates={"private": "true"}))
    response = a.stack.post(PREFIX + "/webhook", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert target not in feed_ids(a)
    assert wait_until(lambda: sim.calls(LIST_CALL) == lists + 1, 5)  # its refetch went out, store or not
    assert wait_until(lambda: b"webhook_unclaimed" in _log_from(offset), 5)  # and it says so

    # A state it cannot claim is not accepted unchecked: 503 and a retry, never a replay.
    started = a.stack.get(PREFIX + "/auth/start", headers=ADMIN, follow_redirects=False)
    state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
    refused = a.stack.get(PREFIX + "/auth/callback", params={"state": state, "code": "c0de", "scope": "read"})
    assert_error(refused, 503, "store_unavailable")
    assert refused.headers["retry-after"].isdigit()
    # The state was not used up by the refusal: once the store answers, the same callback goes on.
    server.start()
    assert wait_until(lambda: a.store.up, BACK_WITHIN_S)
    retried = a.stack.get(PREFIX + "/auth/callback", params={"state": state, "code": "c0de", "scope": "read"})
    assert retried.status_code != 503 and retried.json().get("error") != "invalid_state", retried.text


def _log_from(offset: int) -> bytes:
    with open(IN_PROCESS_LOG, "rb") as log:
        log.seek(offset)
        return log.read()
