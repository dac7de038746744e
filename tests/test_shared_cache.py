"""The cache shared by three instances through a real redis-server: Strava is asked once, app-wide.

Three `create_app` instances, one simulator, one fake clock. The figures of issue 10 §2: 60
concurrent cold requests spread over the instances cost one list call; within the TTL no instance
calls Strava after another filled the entry; an expired entry is refreshed once however many
instances ask. Also: how many store operations a request and a refresh cost (docs/SCALING.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.figures import record
from tests.redis_server import RedisServer
from tests.shared_instances import (  # noqa: F401
    Instance,
    clock_fixture,
    operations_since,
    redis_server_fixture,
    running_instances,
    sim_fixture,
)
from tests.strava_harness import LIST_CALL, PREFIX, Sim
from tests.support import FakeClock, wait_until

TTL = 60
ENV = {"STRAVA_CACHE_TTL_SECONDS": str(TTL), "STRAVA_CACHE_STALE_SECONDS": "3600"}


@pytest.fixture
def instances(sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Instance]]:
    with running_instances(sim, tmp_path, clock, redis_server.url, ENV) as running:
        yield running


async def burst(urls: list[str]) -> list[httpx.Response]:
    """All at once, each on its own connection, as visitors arrive."""
    async with httpx.AsyncClient(timeout=20.0, limits=httpx.Limits(max_connections=len(urls))) as http:
        return await asyncio.gather(*(http.get(url) for url in urls))


def feed_urls(instances: list[Instance], count: int) -> list[str]:
    return [instances[n % len(instances)].stack.base_url + PREFIX + "/feed" for n in range(count)]


async def test_sixty_concurrent_cold_requests_over_three_instances_cost_one_list_call(
    instances: list[Instance], sim: Sim
) -> None:
    before = sim.calls(LIST_CALL)
    responses = await burst(feed_urls(instances, 60))
    assert [r.status_code for r in responses] == [200] * 60
    assert sim.calls(LIST_CALL) - before == 1
    bodies = {r.json()["updated_at"] for r in responses}
    assert len(bodies) == 1  # everyone serves the one load
    record("shared cache: cold burst", instances=3, requests=60, strava_list_calls=sim.calls(LIST_CALL) - before)


async def test_within_the_ttl_no_instance_calls_strava_after_another_filled_the_entry(
    instances: list[Instance], sim: Sim, clock: FakeClock
) -> None:
    a, b, c = instances
    before = sim.calls(LIST_CALL)
    assert a.stack.feed().status_code == 200
    assert sim.calls(LIST_CALL) == before + 1

    # b and c take a's entry from the store: two reads each (the entry, the shared hides), no lock.
    ops_before = b.store_operations()
    assert b.stack.feed().status_code == 200
    adopt = operations_since(ops_before, b.store_operations())
    assert c.stack.feed().status_code == 200
    clock.advance(TTL - 1)
    for instance in instances:
        assert instance.stack.feed().json()["stale"] is False
    assert sim.calls(LIST_CALL) == before + 1

    # A fresh local entry never costs a store round trip.
    hits_before = b.store_total()
    for _ in range(100):
        assert b.stack.feed().status_code == 200
    hit_ops = b.store_total() - hits_before
    assert hit_ops == 0
    assert adopt == {"get": 2}
    record("shared cache: store operations", fresh_local_hit=hit_ops / 100, miss_filled_elsewhere=adopt)


async def test_an_expired_entry_is_refreshed_once_however_many_instances_ask(
    instances: list[Instance], sim: Sim, clock: FakeClock
) -> None:
    first = await burst(feed_urls(instances, 3))
    assert {r.status_code for r in first} == {200}
    loaded_at = first[0].json()["updated_at"]
    before = sim.calls(LIST_CALL)
    ops_before = [i.store_operations() for i in instances]

    clock.advance(TTL + 1)
    stale = await burst(feed_urls(instances, 30))
    assert {r.status_code for r in stale} == {200}
    # Served at once: the old list marked stale while it refreshes, or the new one once it landed.
    assert all(r.json()["stale"] is (r.json()["updated_at"] == loaded_at) for r in stale)

    def all_fresh() -> bool:
        return all(i.stack.feed().json()["updated_at"] != loaded_at for i in instances)

    assert wait_until(all_fresh, 10)
    assert sim.calls(LIST_CALL) - before == 1
    refresh_ops = [operations_since(b, i.store_operations()) for b, i in zip(ops_before, instances, strict=True)]
    # Whichever instance refreshed wrote the entry; the others took it from the store.
    # One instance loaded and wrote the entry (and the budget reading); the others took it from the store.
    assert sorted(ops.get("set", 0) for ops in refresh_ops) == [0, 0, 2]
    record("shared cache: stale refresh", instances=3, requests=30, strava_list_calls=1, store_operations=refresh_ops)
