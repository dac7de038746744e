"""What must happen once across instances: a webhook delivery (Strava retries, each try anywhere) and an OAuth state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from tests.redis_server import RedisServer
from tests.shared_instances import Instance, clock_fixture, event, redis_server_fixture, running_instances, sim_fixture  # noqa: F401
from tests.strava_harness import ADMIN, LIST_CALL, PREFIX, Sim, assert_error
from tests.support import FakeClock, wait_until

CALLBACK = PREFIX + "/auth/callback"


@pytest.fixture
def instances(sim: Sim, clock: FakeClock, tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Instance]]:
    with running_instances(sim, tmp_path, clock, redis_server.url) as running:
        yield running


def post(instance: Instance, body: dict[str, object]) -> int:
    return instance.stack.post(
        PREFIX + "/webhook", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    ).status_code


def test_one_event_delivered_to_three_instances_is_processed_once(
    instances: list[Instance], sim: Sim, clock: FakeClock
) -> None:
    for instance in instances:
        assert instance.stack.feed().status_code == 200
    lists = sim.calls(LIST_CALL)
    target = instances[0].stack.feed().json()["activities"][0]["id"]
    delivery = event(sim, clock, object_id=target, aspect_type="update", updates={"title": "renamed"})
    for instance in instances:  # Strava's first try and two retries, each landing elsewhere
        assert post(instance, delivery) == 200
    webhooks = [i.stack.status()["webhook"] for i in instances]
    assert sum(w["accepted"] for w in webhooks) == 1
    assert sum(w["duplicate"] for w in webhooks) == 2
    assert wait_until(lambda: sim.calls(LIST_CALL) == lists + 1, 5)
    time.sleep(0.3)
    assert sim.calls(LIST_CALL) == lists + 1  # one refetch for the one event

    # A deauthorization is never claimed (a forger could claim the real one's key ahead of it),
    # nor is an event dated in the future; both are still answered 200.
    future = {**delivery, "event_time": int(clock()) + 3600}
    assert post(instances[0], future) == 200 and post(instances[1], future) == 200
    assert sum(i.stack.status()["webhook"]["accepted"] for i in instances) == 3


def authorize(instance: Instance) -> dict[str, str]:
    """/auth/start on `instance`, then the athlete approves on (simulated) Strava: the callback's query."""
    started = instance.stack.get(PREFIX + "/auth/start", headers=ADMIN, follow_redirects=False)
    assert started.status_code == 302, started.text
    approved = httpx.get(started.headers["location"], follow_redirects=False, timeout=5)
    assert approved.status_code == 302, approved.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(approved.headers["location"]).query).items()}
    instance.stack.secrets.add(query["code"])
    return query


def test_an_oauth_state_used_on_one_instance_is_refused_on_the_others(instances: list[Instance]) -> None:
    a, b, c = instances
    query = authorize(a)
    assert b.stack.get(CALLBACK, params=query).status_code == 200  # issued by a, good on b
    for instance in (c, a):
        assert_error(instance.stack.get(CALLBACK, params=query), 400, "invalid_state", "state")
