"""One rate-limit budget for every instance: after a 429 on one, none calls Strava until the window resets."""

from __future__ import annotations

from pathlib import Path

from service.projects.strava_integration.budget import window_end
from tests.figures import record
from tests.redis_server import RedisServer
from tests.shared_instances import Instance, clock_fixture, redis_server_fixture, running_instances, sim_fixture  # noqa: F401
from tests.strava_harness import ADMIN, PREFIX, Sim, assert_error
from tests.support import FakeClock, wait_until

TTL = 60
ENV = {"STRAVA_CACHE_TTL_SECONDS": str(TTL), "STRAVA_CACHE_STALE_SECONDS": "3600"}


def api_calls(sim: Sim) -> int:
    return sum(n for call, n in sim.stats()["calls"].items() if " /api/v3/" in call)


def feed_ids(instance: Instance) -> list[int]:
    response = instance.stack.feed("limit=200")
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()["activities"]]


def test_a_429_on_one_instance_stops_every_instance_until_the_window_resets(
    sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer
) -> None:
    with running_instances(sim, tmp_path, clock, redis_server.url, ENV) as (a, b, c):
        ids = feed_ids(a)
        assert feed_ids(b) == feed_ids(c) == ids  # from the store

        sim.state.set_usage(usage_15min=200)  # Strava's limit is reached: the next call gets a 429
        assert_error(a.stack.api(f"/activities/{ids[0]}"), 503, "strava_rate_limited")
        spent = api_calls(sim)

        for instance in (b, c):
            for activity_id in ids[1:6]:  # not cached anywhere: each would need a call
                assert_error(instance.stack.api(f"/activities/{activity_id}"), 503, "strava_budget_exhausted")
            assert_error(instance.stack.api("/stats"), 503, "strava_budget_exhausted")
            assert_error(instance.stack.post(PREFIX + "/refresh", headers=ADMIN), 503, "strava_budget_exhausted")
        clock.advance(TTL + 1)  # every list is past its TTL: stale is served, and no refresh may go out
        for instance in (a, b, c):
            body = instance.stack.feed().json()
            assert body["stale"] is True
        assert wait_until(lambda: all(i.stack.status()["budget"]["blocked"] for i in (a, b, c)), 5)
        assert api_calls(sim) == spent

        clock.now = window_end(clock(), "15min") + 1  # the window rolls over: Strava may be asked again
        assert b.stack.api(f"/activities/{ids[1]}").status_code == 200
        assert api_calls(sim) > spent
        record("shared budget: 429 on one of 3", upstream_calls_by_the_others_until_reset=0)
