"""Unit tests for the Strava cache (`SWRCache`): freshness windows, single flight, fallback, bounds.

Time is a `FakeClock`; the loader is a `Source` whose answers the test controls. Nothing sleeps:
background work is awaited by yielding to the loop a bounded number of times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from service.projects.strava_integration.cache import SWRCache
from tests.support import CLOCK_START, FakeClock

T = TypeVar("T")
TTL = 60.0
STALE = 300.0


class Source:
    """A loader: counts calls, answers `value<call number>`, can be held at a gate or made to fail."""

    def __init__(self, size: int = 10) -> None:
        self.size = size
        self.calls = 0
        self.finished = 0
        self.cancelled = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        self.gate = asyncio.Event()
        return self.gate

    async def __call__(self) -> tuple[Any, int]:
        self.calls += 1
        n = self.calls
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.fail is not None:
            raise self.fail
        return f"value{n}", self.size


class Counted:
    """A cache whose `on_result` feeds a labelled Prometheus counter in its own registry."""

    def __init__(self, clock: FakeClock, **overrides: Any) -> None:
        self.registry = CollectorRegistry()
        counter = Counter("cache_requests", "Cache lookups.", ("resource", "result"), registry=self.registry)
        options: dict[str, Any] = {"ttl": TTL, "stale": STALE, "max_entries": 100, "max_bytes": 10_000}
        options.update(overrides)
        self.cache = SWRCache(
            **options, clock=clock, on_result=lambda resource, result: counter.labels(resource, result).inc()
        )

    def count(self, result: str, resource: str = "feed") -> float:
        return self.registry.get_sample_value("cache_requests_total", {"resource": resource, "result": result}) or 0.0


async def until(predicate: Callable[[], bool], steps: int = 1000) -> None:
    """Yield to the loop until `predicate` holds; bounded by steps, not by time."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def promptly(awaitable: Awaitable[T], steps: int = 1000) -> T:
    """The result of `awaitable`, which must not wait on anything the test holds back."""
    task = asyncio.ensure_future(awaitable)
    try:
        await until(task.done, steps)
    except AssertionError:
        task.cancel()
        raise AssertionError("it waited (for a load?) instead of answering at once") from None
    return task.result()


async def settle(steps: int = 50) -> None:
    """Give background tasks every chance to run (used to show that something did NOT happen)."""
    for _ in range(steps):
        await asyncio.sleep(0)


def held(cache: SWRCache, key: str) -> Any:
    """The value the cache holds for `key`, None if it holds none."""
    entry = cache.peek(key)
    return None if entry is None else entry.value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def counted(clock: FakeClock) -> Counted:
    return Counted(clock)


# ---- freshness: hit, stale, miss ----


async def test_a_miss_loads_and_the_next_lookup_is_a_hit(counted: Counted, clock: FakeClock) -> None:
    cache, source = counted.cache, Source()
    first = await cache.get("k", source, "feed")
    assert (first.value, first.fetched_at, first.stale) == ("value1", CLOCK_START, False)
    clock.advance(TTL)  # still fresh at exactly the TTL
    second = await cache.get("k", source, "feed")
    assert (second.value, second.fetched_at, second.stale) == ("value1", CLOCK_START, False)
    assert source.calls == 1
    assert (counted.count("miss"), counted.count("hit"), counted.count("stale")) == (1, 1, 0)


async def test_results_are_counted_per_resource(counted: Counted) -> None:
    source = Source()
    await counted.cache.get("a", source, "feed")
    await counted.cache.get("b", source, "stats")
    await counted.cache.get("b", source, "stats")
    assert counted.count("miss", "feed") == 1
    assert counted.count("miss", "stats") == 1
    assert counted.count("hit", "stats") == 1
    assert counted.count("hit", "feed") == 0


async def test_inside_the_stale_window_the_old_value_is_served_at_once_and_one_refresh_starts(
    counted: Counted, clock: FakeClock
) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    gate = source.hold()
    clock.advance(TTL + STALE)  # the last moment the old value may be shown
    for _ in range(5):
        lookup = await promptly(cache.get("k", source, "feed"))  # not waiting for the held refresh
        assert (lookup.value, lookup.fetched_at, lookup.stale) == ("value1", CLOCK_START, True)
    await settle()
    assert source.calls == 2  # the first load and exactly one refresh, however many stale reads
    assert counted.count("stale") == 5
    gate.set()
    await until(lambda: held(cache, "k") == "value2")
    fresh = await cache.get("k", source, "feed")
    assert (fresh.value, fresh.fetched_at, fresh.stale) == ("value2", clock.now, False)
    assert counted.count("hit") == 1


async def test_past_the_stale_window_callers_wait_for_a_fresh_load(counted: Counted, clock: FakeClock) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    clock.advance(TTL + STALE + 0.001)
    lookup = await cache.get("k", source, "feed")
    assert (lookup.value, lookup.fetched_at, lookup.stale) == ("value2", clock.now, False)
    assert source.calls == 2
    assert counted.count("miss") == 2
    assert counted.count("stale") == 0


# ---- single flight ----


async def test_fifty_concurrent_cold_lookups_make_one_loader_call(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    gate = source.hold()
    waiting = [asyncio.ensure_future(cache.get("k", source, "feed")) for _ in range(50)]
    await settle()
    assert source.calls == 1
    gate.set()
    lookups = await asyncio.gather(*waiting)
    assert {(lu.value, lu.stale) for lu in lookups} == {("value1", False)}
    assert source.calls == 1
    assert counted.count("miss") == 50


async def test_a_failed_cold_load_reaches_every_waiter_and_is_not_cached(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    gate = source.hold()
    source.fail = RuntimeError("upstream down")
    waiting = [asyncio.ensure_future(cache.get("k", source, "feed")) for _ in range(10)]
    await settle()
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and str(r) == "upstream down" for r in results)
    assert source.calls == 1
    assert len(cache) == 0
    source.fail = None
    assert (await cache.get("k", source, "feed")).value == "value2"  # no negative caching


async def test_different_keys_load_independently(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    gate = source.hold()
    waiting = [asyncio.ensure_future(cache.get(key, source, "feed")) for key in ("a", "b", "a", "b")]
    await settle()
    assert source.calls == 2
    gate.set()
    values = [lu.value for lu in await asyncio.gather(*waiting)]
    assert values[0] == values[2] and values[1] == values[3] and values[0] != values[1]


# ---- failures: stale fallback, past the window an error ----


async def test_a_failed_refresh_keeps_serving_the_old_value_marked_stale(counted: Counted, clock: FakeClock) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    clock.advance(TTL + 1)
    source.fail = RuntimeError("token=do-not-log-me")
    with capture_logs() as logs:
        lookup = await cache.get("k", source, "feed")
        await until(lambda: source.finished == 2)
        await settle()
    assert (lookup.value, lookup.stale) == ("value1", True)
    failed = [e for e in logs if e["event"] == "background_refresh_failed"]
    assert failed == [
        {"event": "background_refresh_failed", "key": "k", "error": "RuntimeError", "log_level": "warning"}
    ]
    # Only the class name is logged: an exception's message may carry what must not be logged.
    assert "do-not-log-me" not in repr(logs)
    again = await cache.get("k", source, "feed")  # still inside the window: served, and retried
    assert (again.value, again.stale) == ("value1", True)
    await until(lambda: source.finished == 3)


async def test_a_failed_load_past_the_stale_window_raises(counted: Counted, clock: FakeClock) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    clock.advance(TTL + STALE + 1)
    source.fail = RuntimeError("upstream down")
    with pytest.raises(RuntimeError, match="upstream down"):
        await cache.get("k", source, "feed")
    with pytest.raises(RuntimeError):
        await cache.get("k", source, "feed")  # the too-old value is never shown, not even now
    assert source.calls == 3


async def test_a_failed_forced_refresh_marks_a_fresh_value_stale_until_a_load_succeeds(
    counted: Counted, clock: FakeClock
) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    source.fail = RuntimeError("upstream down")
    cache.refresh_in_background("k", source)
    await until(lambda: source.finished == 2)
    await settle()
    lookup = await cache.get("k", source, "feed")  # within the TTL: a hit, but the source is known failing
    assert (lookup.value, lookup.stale) == ("value1", True)
    assert counted.count("hit") == 1
    source.fail = None
    cache.refresh_in_background("k", source)
    await until(lambda: held(cache, "k") == "value3")
    assert (await cache.get("k", source, "feed")).stale is False


async def test_a_failed_load_falls_back_to_a_value_stored_meanwhile(counted: Counted, clock: FakeClock) -> None:
    # The fallback inside `get`: its own load failed, yet a value inside the stale window exists by
    # then (here: a load begun after `clear()` stored one). That value is served, marked stale.
    cache = counted.cache
    failing, working = Source(), Source()
    gate = failing.hold()
    failing.fail = RuntimeError("upstream down")
    first = asyncio.ensure_future(cache.get("k", failing, "feed"))
    await settle()
    cache.clear()
    assert (await promptly(cache.get("k", working, "feed"))).value == "value1"  # not joining the old load
    gate.set()
    lookup = await first
    assert (lookup.value, lookup.stale) == ("value1", True)
    # Today the failure is also recorded on that entry, so its later hits say stale too (even
    # though the failed load began before the value was fetched): pinned, see the report.
    assert (await cache.get("k", working, "feed")).stale is True


# ---- bounds: entries and bytes ----


async def test_least_recently_used_entries_go_first_beyond_max_entries(clock: FakeClock) -> None:
    cache, source = Counted(clock, max_entries=3).cache, Source()
    for key in ("a", "b", "c"):
        await cache.get(key, source, "feed")
    await cache.get("a", source, "feed")  # a hit makes "a" recent; "b" is now the oldest
    await cache.get("d", source, "feed")
    assert len(cache) == 3
    assert cache.peek("b") is None
    assert all(cache.peek(key) is not None for key in ("a", "c", "d"))
    assert cache.bytes == 3 * source.size


async def test_least_recently_used_entries_go_first_beyond_max_bytes(clock: FakeClock) -> None:
    cache, source = Counted(clock, max_bytes=100).cache, Source(size=40)
    await cache.get("a", source, "feed")
    await cache.get("b", source, "feed")
    assert cache.bytes == 80
    await cache.get("c", source, "feed")  # 120 bytes would be over: "a" goes
    assert cache.peek("a") is None
    assert cache.peek("b") is not None and cache.peek("c") is not None
    assert cache.bytes == 80


async def test_an_entry_of_exactly_max_bytes_is_kept_alone(clock: FakeClock) -> None:
    cache = Counted(clock, max_bytes=100).cache
    await cache.get("small", Source(size=1), "feed")
    await cache.get("big", Source(size=100), "feed")
    assert cache.peek("big") is not None and cache.peek("small") is None
    assert cache.bytes == 100


async def test_an_entry_larger_than_max_bytes_is_served_but_not_stored(clock: FakeClock) -> None:
    cache = Counted(clock, max_bytes=100).cache
    await cache.get("other", Source(size=30), "feed")
    huge = Source(size=101)
    with capture_logs() as logs:
        lookup = await cache.get("huge", huge, "feed")
    assert (lookup.value, lookup.stale) == ("value1", False)
    assert cache.peek("huge") is None
    assert cache.peek("other") is not None  # nothing else was evicted to make room
    assert cache.bytes == 30
    assert {"event": "cache_entry_too_large", "key": "huge", "size": 101, "log_level": "warning"} in logs
    await cache.get("huge", huge, "feed")
    assert huge.calls == 2  # so every lookup loads it again


async def test_a_refreshed_entry_that_grew_too_large_replaces_the_old_one_with_nothing(clock: FakeClock) -> None:
    cache = Counted(clock, max_bytes=100).cache
    source = Source(size=50)
    await cache.get("k", source, "feed")
    source.size = 500
    clock.advance(TTL + STALE + 1)
    await cache.get("k", source, "feed")
    assert cache.peek("k") is None  # the old value is not kept as if it were current
    assert cache.bytes == 0


async def test_bytes_follow_replacement_and_drop(counted: Counted, clock: FakeClock) -> None:
    cache, source = counted.cache, Source(size=10)
    await cache.get("k", source, "feed")
    source.size = 25
    clock.advance(TTL + STALE + 1)
    await cache.get("k", source, "feed")
    assert (len(cache), cache.bytes) == (1, 25)
    cache.drop("k")
    cache.drop("k")  # dropping what is not there is harmless
    assert (len(cache), cache.bytes) == (0, 0)


async def test_ages_are_seconds_since_each_fetch(counted: Counted, clock: FakeClock) -> None:
    cache, source = counted.cache, Source()
    await cache.get("old", source, "feed")
    clock.advance(12.34)
    await cache.get("new", source, "feed")
    clock.advance(1)
    assert cache.ages() == {"old": 13.3, "new": 1.0}


# ---- clear, forced refreshes, shutdown ----


async def test_clear_during_a_load_keeps_that_load_from_refilling_the_cache(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    gate = source.hold()
    before = asyncio.ensure_future(cache.get("k", source, "feed"))
    await settle()
    cache.clear()
    after = asyncio.ensure_future(cache.get("k", source, "feed"))  # does not join the forgotten load
    await settle()
    assert source.calls == 2
    gate.set()
    old, new = await asyncio.gather(before, after)
    assert old.value == "value1"  # its caller still gets an answer
    assert new.value == "value2"
    assert held(cache, "k") == "value2"
    assert cache.bytes == source.size


async def test_clear_empties_everything(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    await cache.get("a", source, "feed")
    await cache.get("b", source, "feed")
    gate = source.hold()
    held = asyncio.ensure_future(cache.get("c", source, "feed"))
    await settle()
    cache.clear()
    gate.set()
    await held
    assert (len(cache), cache.bytes) == (0, 0)


async def test_a_background_refresh_does_not_start_while_one_runs(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    gate = source.hold()
    for _ in range(3):
        cache.refresh_in_background("k", source)
    await settle()
    assert source.calls == 2
    gate.set()
    await until(lambda: held(cache, "k") == "value2")
    await settle()
    assert source.calls == 2


async def test_refresh_again_schedules_one_more_load_after_the_running_one(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    gate = source.hold()
    cache.refresh_in_background("k", source)
    await settle()
    assert source.calls == 2
    for _ in range(3):
        cache.refresh_in_background("k", source, again=True)  # asked for after whatever changed
    await settle()
    assert source.calls == 2  # not concurrently with the running one
    gate.set()
    await until(lambda: held(cache, "k") == "value3")
    await settle()
    assert source.calls == 3  # one more, however often it was asked for


async def test_refresh_again_without_a_running_load_starts_one(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    cache.refresh_in_background("k", source, again=True)
    await until(lambda: held(cache, "k") == "value2")
    await settle()
    assert source.calls == 2


async def test_aclose_cancels_background_refreshes_and_starts_no_queued_one(counted: Counted) -> None:
    cache, source = counted.cache, Source()
    await cache.get("k", source, "feed")
    source.hold()  # never released
    cache.refresh_in_background("k", source)
    await settle()
    cache.refresh_in_background("k", source, again=True)
    await promptly(cache.aclose())
    assert source.cancelled == 1
    await settle()
    assert source.calls == 2  # the queued "again" refresh did not start after the cancellation
    assert held(cache, "k") == "value1"


async def test_aclose_with_nothing_running_returns(counted: Counted) -> None:
    await counted.cache.aclose()
