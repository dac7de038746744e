"""One token chain for several instances: the token set shared through a real redis-server.

Three in-process service instances (uvicorn threads, `create_app` with `REDIS_URL`) share one
simulator, one fake clock and one Redis. The simulator hands out short-lived access tokens, so
advancing the clock forces a rotation; it counts every dead refresh token presented to it
(`dead_refresh_presented`), which a straight token chain never does. Redis is started by the
tests from Debian's package on a free loopback port, and made hung (SIGSTOP) or empty (restart).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from service.projects.strava_integration.shared_tokens import TOKENS_KEY
from tests.figures import record
from tests.redis_server import RedisServer
from tests.strava_harness import ADMIN, LIST_CALL, TOKEN_CALL, Sim, Stack, running_inprocess, running_simulator
from tests.strava_upstream import T0, FakeClock
from tests.support import SECRETS, wait_until

ACCESS_TTL_S = 600  # the simulator's access tokens live ten (fake) minutes
CACHE_TTL_S = 60
INSTANCES = 3
_prefixes = itertools.count()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=SECRETS["REDIS_PASSWORD"]) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Sim]:
    with running_simulator(clock, access_token_ttl_s=ACCESS_TTL_S) as running:
        yield running


def env(server: RedisServer, prefix: str) -> dict[str, str]:
    return {
        "REDIS_URL": server.url,
        "REDIS_KEY_PREFIX": prefix,
        "REDIS_TIMEOUT_SECONDS": "1",  # generous: a loaded test machine must not fake an outage
        "STRAVA_CACHE_TTL_SECONDS": str(CACHE_TTL_S),
        "STRAVA_REQUEST_TIMEOUT_SECONDS": "3",
    }


@contextlib.contextmanager
def instances(
    sim: Sim, tmp_path: Path, clock: FakeClock, extra: dict[str, str], n: int = INSTANCES
) -> Iterator[list[Stack]]:
    """`n` service instances, each with a disk (token file) of its own, all with the environment's original token."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_inprocess(sim, tmp_path / f"disk{i}", clock, **extra)) for i in range(n)]


def shared_set(server: RedisServer, prefix: str) -> dict[str, Any] | None:
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        raw = client.get(prefix + TOKENS_KEY)
    finally:
        client.close()
    return None if raw is None else orjson.loads(raw)


def fresh(stack: Stack) -> bool:
    response = stack.feed()
    assert response.status_code == 200, response.text
    return response.json()["stale"] is False


def rotate(sim: Sim, clock: FakeClock, fleet: list[Stack]) -> None:
    """Every access token expires and every cache entry goes stale; each instance is asked for its feed."""
    clock.advance(ACCESS_TTL_S + 1)
    for stack in fleet:
        served = stack.feed()  # stale, and a background refresh (which needs a token) starts
        assert served.status_code == 200, served.text
    for stack in fleet:
        assert wait_until(lambda stack=stack: fresh(stack), 10), "an instance did not recover its feed"


def test_three_instances_share_one_token_chain_through_many_rotations(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    prefix = f"rot{next(_prefixes)}:"
    rounds = 8
    with instances(sim, tmp_path, clock, env(redis_server, prefix)) as fleet:
        for stack in fleet:
            assert fresh(stack)
        first = sim.stats()["token_refreshes"]
        assert first == 1  # the first instance redeemed the environment's token; the others took its set
        for _ in range(rounds):
            rotate(sim, clock, fleet)
        stats = sim.stats()
        assert stats["dead_refresh_presented"] == 0
        assert stats["token_refreshes"] == first + rounds  # one refresh per rotation, for all three
        saved = shared_set(redis_server, prefix)
        assert saved is not None and saved["refresh_token"] == stats["refresh_token"]
        for stack in fleet:
            assert stack.status()["token"]["auth_ok"] is True
        record(
            "shared token chain",
            instances=INSTANCES,
            rotations=rounds,
            token_refreshes=stats["token_refreshes"],
            dead_refresh_presented=stats["dead_refresh_presented"],
            dead_access_presented=stats["dead_access_presented"],
        )


def test_a_redeploy_with_wiped_disks_and_the_original_token_takes_the_shared_set(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    prefix = f"redeploy{next(_prefixes)}:"
    extra = env(redis_server, prefix)
    with instances(sim, tmp_path / "old", clock, extra) as fleet:
        for stack in fleet:
            assert fresh(stack)
        for _ in range(3):
            rotate(sim, clock, fleet)
    # All stopped; the new containers have empty disks and STRAVA_REFRESH_TOKEN, long dead by now.
    assert sim.refresh_with(SECRETS["STRAVA_REFRESH_TOKEN"]).status_code == 400
    dead_before = sim.dead_refresh_presented()  # the line above presented it, on purpose
    refreshes = sim.stats()["token_refreshes"]
    with instances(sim, tmp_path / "new", clock, extra) as fleet:
        for stack in fleet:
            assert stack.status()["token"]["token_source"] == "store"  # the shared set won over the environment
            assert stack.feed().status_code == 200
        rotate(sim, clock, fleet)
    assert sim.dead_refresh_presented() == dead_before
    assert sim.stats()["token_refreshes"] == refreshes + 1


def test_a_hung_store_means_no_refresh_and_stale_data_never_a_500(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    prefix = f"hung{next(_prefixes)}:"
    with instances(sim, tmp_path, clock, env(redis_server, prefix)) as fleet:
        for stack in fleet:
            assert fresh(stack)
        before = [stack.feed().json()["activities"] for stack in fleet]
        refreshes = sim.calls(TOKEN_CALL)
        redis_server.pause()  # hung: the socket stays open, nothing answers
        try:
            clock.advance(ACCESS_TTL_S + 1)  # every access token expired: a refresh would be needed
            for _ in range(3):
                for stack, activities in zip(fleet, before, strict=True):
                    served = stack.feed()
                    assert served.status_code == 200, served.text  # stale, never a 500
                    assert served.json()["stale"] is True and served.json()["activities"] == activities
            for stack in fleet:  # the background refreshes have given up on the store by now
                assert wait_until(lambda stack=stack: stack.status()["last_upstream_error"] is not None, 10)
            assert sim.calls(TOKEN_CALL) == refreshes  # no lock, no refresh: the chain cannot fork
        finally:
            redis_server.resume()
        for stack in fleet:  # back: one refresh under the lock, the others take its set
            assert wait_until(lambda stack=stack: fresh(stack), 15)
        assert sim.dead_refresh_presented() == 0
        assert sim.calls(TOKEN_CALL) == refreshes + 1


def test_a_store_back_empty_gets_the_set_written_back_within_10_s(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    prefix = f"empty{next(_prefixes)}:"
    extra = env(redis_server, prefix)
    with instances(sim, tmp_path / "running", clock, extra, n=2) as fleet:
        for stack in fleet:
            assert fresh(stack)
        rotate(sim, clock, fleet)
        held = shared_set(redis_server, prefix)
        assert held is not None
        redis_server.restart()  # a cache node without persistence: back, and empty
        assert wait_until(lambda: shared_set(redis_server, prefix) is not None, 10)
        assert shared_set(redis_server, prefix) == held
        # A new instance (empty disk, the environment's dead token) starts from the written-back set.
        with instances(sim, tmp_path / "late", clock, extra, n=1) as late:
            assert late[0].status()["token"]["token_source"] == "store"
            assert fresh(late[0])
            rotate(sim, clock, [*fleet, *late])
    assert sim.dead_refresh_presented() == 0


def test_a_disconnect_on_one_instance_ends_the_grant_on_the_others_without_a_dead_token(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    prefix = f"ended{next(_prefixes)}:"
    with instances(sim, tmp_path, clock, env(redis_server, prefix), n=2) as (first, second):
        assert fresh(first) and fresh(second)
        response = first.post("/api/strava-integration/auth/disconnect", headers=ADMIN)
        assert response.json() == {"status": "disconnected", "revoked_at_strava": True}
        tomb = shared_set(redis_server, prefix)
        assert tomb is not None and tomb["ended"] == "disconnected" and "refresh_token" not in tomb
        clock.advance(ACCESS_TTL_S + 1)  # the second instance needs a new token: it finds the tombstone
        second.feed()
        assert wait_until(lambda: second.feed().status_code == 503, 10)
        assert second.status()["token"]["ended"] == "disconnected"
        assert not second.token_file.exists()
        assert sim.dead_refresh_presented() == 0  # told by the store, not by presenting the revoked token


def test_a_grant_ended_on_one_instance_stops_every_instance_serving_at_once(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    """No waiting for the other instance's next token need: the purge broadcast ends the grant there too."""
    prefix = f"ended-now{next(_prefixes)}:"
    with instances(sim, tmp_path, clock, env(redis_server, prefix), n=2) as (first, second):
        assert fresh(first) and fresh(second)
        assert first.post("/api/strava-integration/auth/disconnect", headers=ADMIN).status_code == 200
        lists = sim.calls(LIST_CALL)
        # The clock stands still: the second instance's access token is still valid, its cache fresh.
        assert wait_until(lambda: second.feed().status_code == 503, 3)
        assert second.status()["token"]["ended"] == "disconnected"
        # Told by the broadcast: it did not have to find out from Strava with the revoked token.
        assert sim.calls(LIST_CALL) == lists and sim.stats()["dead_access_presented"] == 0
        assert sim.dead_refresh_presented() == 0


def test_a_disconnect_ends_the_grant_at_once_on_an_instance_holding_a_valid_access_token(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Strava cannot revoke, so the other instance's access token still works there: the store must stop it."""
    prefix = f"ended-held{next(_prefixes)}:"
    with instances(sim, tmp_path, clock, env(redis_server, prefix), n=2) as (first, second):
        assert fresh(second)  # loaded from Strava: the second holds a valid access token
        assert fresh(first)  # served from the shared tier
        sim.fault("http_503", path_prefix="/oauth/revoke")
        lists, refreshes = sim.calls(LIST_CALL), sim.calls(TOKEN_CALL)
        response = first.post("/api/strava-integration/auth/disconnect", headers=ADMIN)
        assert response.json() == {"status": "disconnected", "revoked_at_strava": False}
        # Nothing asks the second instance for data: the purge broadcast alone ends the grant there,
        # with the clock standing still (its access token has not expired).
        assert wait_until(lambda: second.status()["token"]["ended"] == "disconnected", 10)
        assert second.status()["token"]["auth_ok"] is False and not second.token_file.exists()
        assert second.feed().status_code == 503
        assert sim.calls(LIST_CALL) == lists and sim.calls(TOKEN_CALL) == refreshes
        assert sim.dead_refresh_presented() == 0
