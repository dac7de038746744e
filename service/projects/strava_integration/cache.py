"""A bounded TTL cache with stale-while-revalidate and single-flight loading.

- Fresh entries are served as they are.
- Within the stale window, the old value is served at once and one background refresh starts.
- Past it (or on a miss) callers wait for one shared load: fifty concurrent callers on a cold
  key cause one upstream call.
- When a load fails and an old value still inside the stale window exists, it is served, marked stale.
- Entries are evicted least-recently-used beyond `max_entries` or `max_bytes`.

It never sleeps and never retries; the loader decides what one attempt means.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("strava.cache")

Loader = Callable[[], Awaitable[tuple[Any, int]]]  # returns (value, size in bytes)


@dataclass(slots=True)
class Entry:
    value: Any
    size: int
    fetched_at: float
    failed_at: float | None = None  # last refresh failure since the value was fetched


@dataclass(frozen=True, slots=True)
class Lookup:
    value: Any
    fetched_at: float
    stale: bool


class SWRCache:
    def __init__(
        self,
        *,
        ttl: float,
        stale: float,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float],
        on_result: Callable[[str, str], None] = lambda resource, result: None,
    ) -> None:
        self.ttl = ttl
        self.stale = stale
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.on_result = on_result
        self.bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Entry]] = {}
        self._generation = 0  # bumped by clear(): loads begun before it must not refill the cache
        self._again: dict[str, Loader] = {}  # refreshes to start once the one in flight ends
        self._background: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def ages(self) -> dict[str, float]:
        now = self.clock()
        return {key: round(now - e.fetched_at, 1) for key, e in self._entries.items()}

    async def get(self, key: str, loader: Loader, resource: str) -> Lookup:
        entry = self._entries.get(key)
        now = self.clock()
        if entry is not None:
            self._entries.move_to_end(key)
            age = now - entry.fetched_at
            if age <= self.ttl:
                self.on_result(resource, "hit")
                return Lookup(entry.value, entry.fetched_at, entry.failed_at is not None)
            if age <= self.ttl + self.stale:
                self.on_result(resource, "stale")
                self.refresh_in_background(key, loader)
                return Lookup(entry.value, entry.fetched_at, True)
        self.on_result(resource, "miss")
        try:
            fresh = await self._load(key, loader)
        except Exception:
            entry = self._entries.get(key)
            if entry is None or self.clock() - entry.fetched_at > self.ttl + self.stale:
                raise  # nothing to fall back on, or too old to show even when the source fails
            entry.failed_at = self.clock()
            return Lookup(entry.value, entry.fetched_at, True)
        return Lookup(fresh.value, fresh.fetched_at, False)

    def refresh_in_background(self, key: str, loader: Loader, *, again: bool = False) -> None:
        """Start one refresh unless one is running. With `again`, a running one is not enough
        (it was asked for before whatever changed): another starts when it ends."""
        if key in self._inflight:
            if again:
                self._again[key] = loader
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(key, loader))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(self, key: str, loader: Loader) -> None:
        try:
            await self._load(key, loader)
        except Exception as exc:
            entry = self._entries.get(key)
            if entry is not None:
                entry.failed_at = self.clock()
            log.warning("background_refresh_failed", key=key, error=type(exc).__name__)

    async def _load(self, key: str, loader: Loader) -> Entry:
        future = self._inflight.get(key)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        generation = self._generation
        try:
            value, size = await loader()
        except BaseException as exc:
            if not future.cancelled():
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters re-raise it; no "never retrieved" noise
            raise
        else:
            entry = Entry(value, size, self.clock())
            if generation == self._generation:
                self._store(key, entry)
            future.set_result(entry)
            return entry
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
                loader_again = self._again.pop(key, None)
                # Not while shutting down: a cancelled load starts nothing new.
                if loader_again is not None and not (future.done() and _cancelled(future)):
                    self.refresh_in_background(key, loader_again)

    def _store(self, key: str, entry: Entry) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        if entry.size > self.max_bytes:
            log.warning("cache_entry_too_large", key=key, size=entry.size)
            return
        self._entries[key] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def clear(self) -> None:
        """Forget everything at once, including loads in flight: later callers start their own."""
        self._entries.clear()
        self._inflight.clear()
        self._again.clear()
        self._generation += 1
        self.bytes = 0

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def _cancelled(future: asyncio.Future[Entry]) -> bool:
    return future.cancelled() or isinstance(future.exception(), asyncio.CancelledError)
