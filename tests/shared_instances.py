"""Several instances of the real app on one real redis-server, as App Platform runs them behind its balancer.

Each instance is `create_app(...)` in its own uvicorn thread (its own event loop), with its own
`RedisStore` (same server, same key prefix: one app) and its own metrics; all share one simulator
and one `FakeClock`. They also share one token set, copied into each token file: sharing the token
chain is the token manager's part of issue 10, and no instance needs a refresh within these tests.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from observability.metrics import Metrics
from service.app import create_app
from service.projects.strava_integration import PROJECT
from service.settings import load_settings
from service.store import RedisStore, StoreMetrics
from service.store.interface import Subscriber, Unsubscribe
from tests.redis_server import RedisServer
from tests.strava_harness import (
    IN_PROCESS_LOG,
    Sim,
    Stack,
    _settled_log_tail,
    logging_redactor,
    running_simulator,
    service_env,
)
from tests.support import SECRETS, FakeClock, serve_in_thread

# Fixtures for the test modules (import the *_fixture names there): one server, clock and simulator per module.


@pytest.fixture(scope="module", name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    with RedisServer(password=SECRETS["REDIS_PASSWORD"]) as server:
        yield server


@pytest.fixture(scope="module", name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module", name="sim")
def sim_fixture(clock: FakeClock) -> Iterator[Sim]:
    with running_simulator(clock) as running:
        yield running


_prefixes = itertools.count()
# Above the production default (0.25 s) so a busy test machine does not turn a slow answer into an outage.
STORE_TIMEOUT_S = 1.0
PING_INTERVAL_S = 0.2
VERSION_KEY = "strava-integration:version"


class CountingStore(RedisStore):
    """The real Redis store, counting the data path's operations by name.

    The invalidation watcher's version read (a `get` every 0.5 s, whatever the traffic) is counted
    apart, so a figure per request is not blurred by when the watcher happened to run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts: Counter[str] = Counter()
        self.watcher_reads = 0

    async def get(self, key: str) -> bytes | None:
        if key == VERSION_KEY:
            self.watcher_reads += 1
        else:
            self.counts["get"] += 1
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self.counts["set"] += 1
        await super().set(key, value, ttl_s)

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        self.counts["set_if_absent"] += 1
        return await super().set_if_absent(key, value, ttl_s)

    async def delete(self, *keys: str) -> int:
        self.counts["delete"] += 1
        return await super().delete(*keys)

    async def compare_and_set(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        self.counts["compare_and_set"] += 1
        return await super().compare_and_set(key, expected, new, ttl_s)

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        self.counts["compare_and_delete"] += 1
        return await super().compare_and_delete(key, expected)

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        self.counts["incr"] += 1
        return await super().incr(key, ttl_s)

    async def publish(self, channel: str, message: bytes) -> None:
        self.counts["publish"] += 1
        await super().publish(channel, message)


class DeafStore(CountingStore):
    """Hears no pub/sub message at all: only the version check tells it of a change."""

    def subscribe(self, channel: str, callback: Subscriber) -> Unsubscribe:
        return lambda: None


@dataclass
class Instance:
    stack: Stack
    store: CountingStore
    metrics: Metrics  # the store's series only (the app has its own registry)

    def store_operations(self) -> dict[str, int]:
        """The data path's store operations so far (the watcher's version reads apart), by operation."""
        return dict(self.store.counts)

    def store_total(self) -> int:
        return sum(self.store.counts.values())


def operations_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


@contextlib.contextmanager
def running_instances(
    sim: Sim,
    tmp_path: Path,
    clock: Callable[[], float],
    redis_url: str,
    env: dict[str, str] | None = None,
    *,
    count: int = 3,
    deaf: tuple[int, ...] = (),
) -> Iterator[list[Instance]]:
    """`count` instances; those numbered in `deaf` hear no pub/sub message (see DeafStore)."""
    seed = tmp_path / "seed" / "tokens.json"
    sim.save_tokens_as_a_refresh_would(seed)
    prefix = f"shared{next(_prefixes)}-{tmp_path.name[-12:]}:"
    offset = IN_PROCESS_LOG.stat().st_size if IN_PROCESS_LOG.exists() else 0
    instances: list[Instance] = []
    with contextlib.ExitStack() as stack:
        for n in range(count):
            token_file = tmp_path / f"instance{n}" / "strava" / "tokens.json"
            token_file.parent.mkdir(mode=0o700, parents=True)
            shutil.copyfile(seed, token_file)
            token_file.chmod(0o600)
            metrics = Metrics("test")
            store = (DeafStore if n in deaf else CountingStore)(
                redis_url,
                StoreMetrics(metrics),
                key_prefix=prefix,
                timeout_s=STORE_TIMEOUT_S,
                ping_interval_s=PING_INTERVAL_S,
            )
            settings = load_settings(
                service_env(sim, token_file, **(env or {})), parsers={PROJECT.name: PROJECT.parse_settings}
            )
            app = create_app(settings, redactor=logging_redactor(), clock=clock, store=store)
            url = stack.enter_context(serve_in_thread(app))
            running = Stack(url, sim, token_file)
            stack.callback(running.close)
            instances.append(Instance(running, store, metrics))
        yield instances
        for instance in instances:
            instance.stack.learn_tokens()
    log_tail = _settled_log_tail(offset)
    for instance in instances:
        instance.stack.assert_no_leaks(log_tail)


def event(sim: Sim, clock: Callable[[], float], **fields: Any) -> dict[str, Any]:
    """A webhook event dated by the shared clock (the claim ignores events dated in the future)."""
    body: dict[str, Any] = {
        "object_type": "activity",
        "object_id": 1,
        "aspect_type": "update",
        "owner_id": sim.state.config.athlete_id,
        "subscription_id": 1,
        "event_time": int(clock()),
        "updates": {},
    }
    body.update(fields)
    return body
