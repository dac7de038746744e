"""The store: one contract run against MemoryStore and RedisStore, then Redis' failure modes.

Redis runs for real (Debian's `redis-server` on a free loopback port, tests/redis_server.py): two
`RedisStore` objects on one server stand for two instances. Waits are bounded polls, never timed
assertions: a hung server must make a call raise `StoreUnavailable`, and the call must return
inside a generous `wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from observability.metrics import Metrics
from service.store import (
    LockUnavailable,
    MemoryStore,
    RedisStore,
    Store,
    StoreError,
    StoreMetrics,
    StoreUnavailable,
    build_store,
    store_check,
)
from tests.redis_server import RedisServer
from tests.support import FakeClock

BOUND_S = 5.0  # what "returns at all" means for a call that should fail within 0.25 s
PASSWORD = "rpw-ZZ9-leakcheck-redis-password"
_prefixes = itertools.count()


async def eventually(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> bool:
    """Poll until `predicate` holds; False after `timeout` (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own, to hang, stop and restart."""
    with RedisServer() as server:
        yield server


# Above the production default (0.25 s), so a loaded machine does not turn a slow answer into an
# outage; still well inside BOUND_S, which is what the hung-server test holds calls to.
TEST_TIMEOUT_S = 1.0


def redis_store(
    url: str,
    metrics: Metrics | None = None,
    prefix: str | None = None,
    ping_interval_s: float = 1.0,
    timeout_s: float = TEST_TIMEOUT_S,
    ca_cert: str | None = None,
) -> RedisStore:
    store_metrics = StoreMetrics(metrics or Metrics("test"))
    prefix = prefix or f"t{next(_prefixes)}:"  # a fresh namespace per store, so tests share one server
    return RedisStore(
        url, store_metrics, key_prefix=prefix, ping_interval_s=ping_interval_s, timeout_s=timeout_s, ca_cert=ca_cert
    )


@dataclass
class Subject:
    """A store under test, how its time passes, and its metrics."""

    store: Store
    metrics: Metrics
    clock: FakeClock | None  # None: Redis, where time is the server's own

    async def expire(self, key: str) -> bool:
        """Let `key`'s short expiry pass; True once it is gone."""
        if self.clock is not None:
            self.clock.now += 1.0
        return await eventually(lambda: self._absent(key), BOUND_S)

    async def _absent(self, key: str) -> bool:
        return await self.store.get(key) is None

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


SHORT_TTL_S = 0.05  # memory: passes when the fake clock moves; Redis: passes by itself


@pytest.fixture(params=["memory", "redis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    metrics = Metrics("test")
    clock = None
    if request.param == "memory":
        clock = FakeClock()
        store: Store = MemoryStore(StoreMetrics(metrics), clock)
    else:
        store = redis_store(request.getfixturevalue("redis_server").url, metrics)
    await store.start()
    yield Subject(store, metrics, clock)
    await store.aclose()


# ---- the contract ----


async def test_get_set_overwrite_and_delete(subject: Subject) -> None:
    s = subject.store
    assert await s.get("a") is None
    await s.set("a", b"1")
    await s.set("b", b"\x00\xff binary")
    assert await s.get("a") == b"1"
    await s.set("a", b"2")
    assert await s.get("a") == b"2"
    assert await s.get("b") == b"\x00\xff binary"
    assert await s.delete("a", "b", "never") == 2
    assert await s.delete() == 0
    assert await s.get("a") is None


async def test_expiry_and_a_plain_set_clears_it(subject: Subject) -> None:
    s = subject.store
    await s.set("short", b"v", ttl_s=SHORT_TTL_S)
    assert await subject.expire("short")
    await s.set("kept", b"v", ttl_s=SHORT_TTL_S)
    await s.set("kept", b"w")  # no ttl: the earlier expiry is gone
    await s.set("marker", b"v", ttl_s=SHORT_TTL_S)
    assert await subject.expire("marker")
    assert await s.get("kept") == b"w"


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_a_ttl_must_be_positive(subject: Subject, ttl: float) -> None:
    with pytest.raises(ValueError):
        await subject.store.set("k", b"v", ttl_s=ttl)
    with pytest.raises(ValueError):
        await subject.store.set_if_absent("k", b"v", ttl_s=ttl)


async def test_set_if_absent_is_a_single_use_claim(subject: Subject) -> None:
    s = subject.store
    assert await s.set_if_absent("claim", b"first", ttl_s=SHORT_TTL_S)
    assert not await s.set_if_absent("claim", b"second", ttl_s=SHORT_TTL_S)
    assert await s.get("claim") == b"first"
    assert await subject.expire("claim")
    assert await s.set_if_absent("claim", b"third")


async def test_compare_and_set(subject: Subject) -> None:
    s = subject.store
    assert not await s.compare_and_set("k", b"old", b"new")  # absent is not b"old"
    assert await s.compare_and_set("k", None, b"v1")  # None: only if absent
    assert not await s.compare_and_set("k", None, b"v2")
    assert not await s.compare_and_set("k", b"wrong", b"v2")
    assert await s.get("k") == b"v1"
    assert await s.compare_and_set("k", b"v1", b"v2", ttl_s=SHORT_TTL_S)
    assert await s.get("k") == b"v2"
    assert await subject.expire("k")


async def test_compare_and_delete(subject: Subject) -> None:
    s = subject.store
    assert not await s.compare_and_delete("k", b"v")
    await s.set("k", b"v")
    assert not await s.compare_and_delete("k", b"other")
    assert await s.get("k") == b"v"
    assert await s.compare_and_delete("k", b"v")
    assert await s.get("k") is None


async def test_incr_counts_from_zero_and_refuses_a_non_integer(subject: Subject) -> None:
    s = subject.store
    assert [await s.incr("version") for _ in range(3)] == [1, 2, 3]
    assert await s.get("version") == b"3"
    await s.set("text", b"not a number")
    with pytest.raises(StoreError):
        await s.incr("text")
    assert subject.store.up  # a refused command is not an outage


async def test_incr_gives_a_window_counter_its_expiry_once(subject: Subject) -> None:
    s = subject.store
    assert await s.incr("window", ttl_s=SHORT_TTL_S) == 1
    assert await s.incr("window", ttl_s=3600) == 2  # the first expiry stands
    assert await subject.expire("window")
    assert await s.incr("window", ttl_s=3600) == 1
    await s.set("kept", b"5", ttl_s=3600)
    assert await s.incr("kept") == 6


async def holders_at_once(stores: list[Store], lock: str) -> tuple[int, int]:
    """One task per entry of `stores` takes `lock`; (most holders at once, bodies run)."""
    inside, most, done = 0, 0, 0

    async def worker(store: Store) -> None:
        nonlocal inside, most, done
        async with store.lock(lock, ttl_s=10, wait_s=20):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.005)  # let the others try meanwhile
            inside -= 1
            done += 1

    await asyncio.gather(*(worker(s) for s in stores))
    return most, done


async def test_the_lock_admits_one_holder_at_a_time(subject: Subject) -> None:
    assert await holders_at_once([subject.store] * 12, "job") == (1, 12)
    assert subject.sample("siteapi_store_lock_wait_seconds_count", lock="job") == 12


async def test_a_held_lock_is_unavailable_after_the_wait_and_the_body_does_not_run(subject: Subject) -> None:
    ran = False
    async with subject.store.lock("job", ttl_s=10, wait_s=0):
        with pytest.raises(LockUnavailable):
            async with subject.store.lock("job", ttl_s=10, wait_s=0.05, label="job-second"):
                ran = True
    assert not ran
    assert subject.sample("siteapi_store_lock_wait_seconds_count", lock="job-second") == 1
    async with subject.store.lock("job", ttl_s=10, wait_s=0):  # released on exit
        pass


async def test_the_lock_is_released_when_the_body_raises(subject: Subject) -> None:
    with pytest.raises(RuntimeError):
        async with subject.store.lock("job", ttl_s=10, wait_s=0):
            raise RuntimeError("guarded work failed")
    async with subject.store.lock("job", ttl_s=10, wait_s=0):
        pass


async def test_an_expired_lock_goes_to_the_next_owner_and_the_first_never_releases_it(subject: Subject) -> None:
    s = subject.store
    first = s.lock("job", ttl_s=SHORT_TTL_S, wait_s=0)
    await first.__aenter__()
    assert await subject.expire("job:lock")
    async with s.lock("job", ttl_s=10, wait_s=0) as second:
        with capture_logs() as logs:
            await first.__aexit__(None, None, None)
        assert await s.get("job:lock") == second.token  # still the second owner's
        assert [e["event"] for e in logs] == ["store_lock_expired_while_held"]
    assert await s.get("job:lock") is None


async def test_pub_sub_delivers_until_unsubscribed(subject: Subject) -> None:
    s = subject.store
    a: list[bytes] = []
    b: list[bytes] = []

    def broken(message: bytes) -> None:
        raise RuntimeError("a failing subscriber does not stop the others")

    s.subscribe("a", broken)
    stop_a = s.subscribe("a", a.append)
    s.subscribe("b", b.append)

    async def delivered(channel: str, received: list[bytes], message: bytes) -> bool:
        # Redis subscribes in the background: publish until the first copy arrives.
        await s.publish(channel, message)
        await asyncio.sleep(0.02)
        return message in received

    assert await eventually(lambda: delivered("a", a, b"hello"), BOUND_S)
    assert await eventually(lambda: delivered("b", b, b"world"), BOUND_S)
    stop_a()
    await s.publish("a", b"after")
    await s.publish("b", b"sentinel")  # same connection, so it arrives after "after" would have
    assert await eventually(lambda: b"sentinel" in b, BOUND_S)
    assert b"after" not in a


async def test_up_metrics_and_health_when_the_store_answers(subject: Subject) -> None:
    s = subject.store
    assert s.up
    await s.get("k")
    assert subject.sample("siteapi_store_up") == 1
    for operation in ("get", "set", "compare_and_set", "ping"):
        assert subject.sample("siteapi_store_operation_errors_total", operation=operation) == 0
        assert subject.sample("siteapi_store_operation_duration_seconds_count", operation=operation) is not None
    result = await store_check(s)()
    assert (result.status, result.observed_value) == ("pass", s.backend)


# ---- memory only ----


async def test_memory_expiry_follows_the_injected_clock() -> None:
    clock = FakeClock()
    s = MemoryStore(StoreMetrics(Metrics("test")), clock)
    await s.set("k", b"v", ttl_s=10)
    clock.now += 9.9
    assert await s.get("k") == b"v"
    clock.now += 0.1
    assert await s.get("k") is None


async def test_memory_drops_expired_keys_nobody_reads_again() -> None:
    clock = FakeClock()
    s = MemoryStore(StoreMetrics(Metrics("test")), clock)
    for i in range(1000):
        await s.set_if_absent(f"dedupe:{i}", b"1", ttl_s=1)
    clock.now += 2
    for i in range(100):
        await s.set(f"other:{i}", b"1")
    assert len(s._data) == 100


# ---- Redis only ----


@contextlib.asynccontextmanager
async def running(*stores: Store) -> AsyncIterator[None]:
    try:
        for store in stores:
            await store.start()
        yield
    finally:
        for store in stores:
            await store.aclose()


def instances(url: str, count: int = 2) -> list[RedisStore]:
    """Store objects on one server and one prefix: what separate instances of one app look like."""
    prefix = f"t{next(_prefixes)}:"
    return [redis_store(url, prefix=prefix) for _ in range(count)]


class CountingHook:
    def __init__(self, then: Callable[[], Awaitable[object]] | None = None) -> None:
        self.runs = 0
        self.then = then

    async def __call__(self) -> None:
        self.runs += 1
        if self.then is not None:
            await self.then()


async def heard_after_publishing(sender: Store, channel: str, message: bytes, heard: list[bytes]) -> bool:
    """Publish until the subscriber has it (Redis subscribes in the background, or is reconnecting)."""

    async def arrived() -> bool:
        try:
            await sender.publish(channel, message)
        except StoreUnavailable:  # the sender may itself be marked down for a moment
            return False
        await asyncio.sleep(0.05)
        return message in heard

    return await eventually(arrived, 15)


async def _numsub(raw: redis.asyncio.Redis, channel: str) -> bool:
    [(_, count)] = await raw.pubsub_numsub(channel)
    return int(count) > 0


async def test_keys_and_channels_live_under_the_prefix(redis_server: RedisServer) -> None:
    one = redis_store(redis_server.url, prefix="app-one:")
    two = redis_store(redis_server.url, prefix="app-two:")
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    async with running(one, two):
        await one.set("strava-integration:tokens", b"one")
        assert await two.get("strava-integration:tokens") is None
        assert await raw.get("app-one:strava-integration:tokens") == b"one"
        heard: list[bytes] = []
        one.subscribe("news", heard.append)
        assert await eventually(lambda: _numsub(raw, "app-one:news"), BOUND_S)
        await two.publish("news", b"not for app one")
        await one.publish("news", b"for app one")
        assert await eventually(lambda: heard == [b"for app one"], BOUND_S)
    await raw.aclose()


async def test_a_hung_server_fails_calls_within_the_timeout_and_health_warns(own_redis: RedisServer) -> None:
    metrics = Metrics("test")
    s = redis_store(own_redis.url, metrics, ping_interval_s=0.1)
    async with running(s):
        await s.set("k", b"v")
        own_redis.pause()
        # More callers than the pool has connections: those waiting for one are bounded too.
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(s.get("k") for _ in range(20)), return_exceptions=True), BOUND_S
        )
        assert {type(o) for o in outcomes} == {StoreUnavailable}
        assert f"127.0.0.1:{own_redis.port}" in str(outcomes[0])
        assert not s.up
        assert metrics.registry.get_sample_value("siteapi_store_up") == 0
        # While down, calls fail at once without waiting on the server again.
        for call in (s.get("k"), s.set("k", b"w"), s.incr("n"), s.publish("c", b"m")):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(call, BOUND_S)
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(BOUND_S), s.lock("token-refresh", ttl_s=10, wait_s=30):
                pytest.fail("the guarded work must not run without the lock")
        errors = metrics.registry.get_sample_value("siteapi_store_operation_errors_total", {"operation": "get"})
        assert errors == 21
        result = await store_check(s)()
        assert result.status == "warn"
        assert result.output == (
            f"store: redis unreachable at 127.0.0.1:{own_redis.port}; serving what this instance holds"
        )
        own_redis.resume()
        assert await eventually(lambda: s.up)
        assert await s.get("k") == b"v"
        assert (await store_check(s)()).status == "pass"


async def test_a_down_server_fails_calls_and_the_gauge_says_so(own_redis: RedisServer) -> None:
    metrics = Metrics("test")
    s = redis_store(own_redis.url, metrics)
    async with running(s):
        assert metrics.registry.get_sample_value("siteapi_store_up") == 1
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(s.set("k", b"v"), BOUND_S)
        assert not s.up
        assert metrics.registry.get_sample_value("siteapi_store_up") == 0
        assert (await store_check(s)()).status == "warn"


async def test_back_empty_the_store_is_up_within_10_s_and_the_hooks_wrote_back(own_redis: RedisServer) -> None:
    s = redis_store(own_redis.url)
    write_back = CountingHook(lambda: s.set_if_absent("tokens", b"the set this instance holds"))
    s.on_reconnect(write_back)
    async with running(s):
        await s.set("tokens", b"the set this instance holds")
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(s.get("tokens"), BOUND_S)
        own_redis.start()  # empty
        assert await eventually(lambda: s.up and write_back.runs == 1, 10)
        assert await s.get("tokens") == b"the set this instance holds"


async def test_a_restart_between_calls_still_runs_the_hooks(own_redis: RedisServer) -> None:
    """No call failed in between: the pinger finds the new (empty) server on its own."""
    s = redis_store(own_redis.url, ping_interval_s=0.1)
    hook = CountingHook()
    s.on_reconnect(hook)
    async with running(s):
        assert hook.runs == 0  # a first connection is not a reconnection
        own_redis.restart()
        assert await eventually(lambda: s.up and hook.runs >= 1, 10)


async def test_started_while_down_it_comes_up_and_runs_the_hooks(own_redis: RedisServer) -> None:
    own_redis.stop()
    s = redis_store(own_redis.url)
    hook = CountingHook()
    s.on_reconnect(hook)
    async with running(s):  # start() does not raise
        assert not s.up
        own_redis.start()
        assert await eventually(lambda: s.up and hook.runs == 1, 10)


async def test_a_server_that_refuses_info_is_still_used(own_redis: RedisServer) -> None:
    """An ACL user without INFO (as some managed services give): PING probes instead."""
    admin = redis.Redis.from_url(own_redis.url)
    try:
        admin.execute_command("ACL", "SETUSER", "app", "on", ">app-pw-1", "~*", "&*", "+@all", "-info")
    finally:
        admin.close()
    s = redis_store(own_redis.url.replace("redis://", "redis://app:app-pw-1@"))
    async with running(s):
        assert await eventually(lambda: s.up, 10)
        await s.set("k", b"v", 60)
        assert await s.get("k") == b"v"
        assert await s.ping() is True


async def test_pub_sub_resumes_after_the_server_comes_back(own_redis: RedisServer) -> None:
    listener, sender = instances(own_redis.url)
    heard: list[bytes] = []
    listener.subscribe("invalidate", heard.append)
    async with running(listener, sender):
        own_redis.restart()
        assert await heard_after_publishing(sender, "invalidate", b"after the restart", heard)


async def test_pub_sub_across_instances(redis_server: RedisServer) -> None:
    listener, sender = instances(redis_server.url)
    heard: list[bytes] = []
    async with running(listener, sender):
        listener.subscribe("strava-integration:invalidate", heard.append)
        assert await heard_after_publishing(sender, "strava-integration:invalidate", b"version 7", heard)
        assert set(heard) == {b"version 7"}


async def test_the_lock_is_exclusive_across_instances(redis_server: RedisServer) -> None:
    one, two = instances(redis_server.url)
    async with running(one, two):
        assert await holders_at_once([one, two] * 10, "strava-integration:token-refresh") == (1, 20)


async def test_an_expired_lock_taken_by_another_instance_is_not_released_by_the_first(
    redis_server: RedisServer,
) -> None:
    one, two = instances(redis_server.url)
    async with running(one, two):
        first = one.lock("refresh", ttl_s=0.2, wait_s=0)
        await first.__aenter__()
        async with two.lock("refresh", ttl_s=10, wait_s=BOUND_S) as second:  # waits out the expiry
            await first.__aexit__(None, None, None)
            assert await two.get("refresh:lock") == second.token
            with pytest.raises(LockUnavailable):
                async with one.lock("refresh", ttl_s=10, wait_s=0):
                    pass


async def test_of_concurrent_compare_and_sets_with_one_expected_value_exactly_one_wins(
    redis_server: RedisServer,
) -> None:
    stores = instances(redis_server.url)
    async with running(*stores):
        await stores[0].set("tokens", b"rt-0")
        new = [f"rt-1-{i}".encode() for i in range(20)]
        results = await asyncio.gather(
            *(stores[i % 2].compare_and_set("tokens", b"rt-0", value) for i, value in enumerate(new))
        )
        assert results.count(True) == 1
        assert await stores[1].get("tokens") == new[results.index(True)]
        claims = await asyncio.gather(*(stores[i % 2].set_if_absent("webhook:42", b"1", 60) for i in range(20)))
        assert claims.count(True) == 1


async def test_the_password_never_shows_in_logs_errors_health_or_metrics() -> None:
    with RedisServer(password=PASSWORD) as server:
        metrics = Metrics("test")
        good = redis_store(server.url, metrics)
        wrong = redis_store(server.url.replace(PASSWORD, PASSWORD + "-wrong"), Metrics("test"))
        with capture_logs() as logs:
            async with running(good, wrong):
                await good.set("k", b"v")
                assert await good.get("k") == b"v"
                with pytest.raises(StoreUnavailable) as refused:
                    await wrong.get("k")
                server.stop()
                with pytest.raises(StoreUnavailable) as down:
                    await asyncio.wait_for(good.get("k"), BOUND_S)
                health = await store_check(good)()
            with pytest.raises(ValueError) as bad_port:
                redis_store(f"redis://:{PASSWORD}@127.0.0.1:notaport/0")
        texts = [str(refused.value), str(down.value), str(bad_port.value), health.output or ""]
        texts += [repr(e) for e in logs]
        texts.append(metrics.render(None)[0].decode())
        assert any("store_unreachable" in t for t in texts)
        assert not [t for t in texts if PASSWORD in t]


async def test_rediss_verifies_the_server_against_the_given_ca() -> None:
    with RedisServer(password=PASSWORD, tls=True) as server:
        trusted = redis_store(server.url, ca_cert=server.ca_pem)
        untrusted = redis_store(server.url)  # the system's CAs only
        async with running(trusted, untrusted):
            await trusted.set("k", b"over TLS")
            assert await trusted.get("k") == b"over TLS"
            assert not untrusted.up
            with pytest.raises(StoreUnavailable):
                await untrusted.get("k")


# ---- construction ----


def test_build_store_picks_the_backend_from_redis_url() -> None:
    memory = build_store(None, Metrics("test"))
    assert (memory.backend, memory.up) == ("memory", True)
    assert build_store("", Metrics("test")).backend == "memory"
    store = build_store("redis://127.0.0.1:1/0", Metrics("test"), key_prefix="p:", timeout_s=0.1)
    assert (store.backend, store.up, store.location) == ("redis", False, "127.0.0.1:1")


@pytest.mark.parametrize(
    ("url", "ca", "complaint"),
    [
        ("http://:pw-ZZ9@127.0.0.1:6379", None, "REDIS_URL must start with redis:// or rediss://"),
        ("redis://:pw-ZZ9@/0", None, "REDIS_URL has no host"),
        ("redis://:pw-ZZ9@127.0.0.1:99999/0", None, "REDIS_URL has an invalid port"),
        ("rediss://:pw-ZZ9@127.0.0.1:6379/0", "not a pem", "REDIS_CA_CERT is not a PEM certificate"),
    ],
)
def test_bad_configuration_is_refused_without_echoing_the_url(url: str, ca: str | None, complaint: str) -> None:
    with pytest.raises(ValueError) as raised:
        build_store(url, Metrics("test"), ca_cert=ca)
    assert str(raised.value) == complaint
