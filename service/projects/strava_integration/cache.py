"""A bounded TTL cache with stale-while-revalidate and single-flight loading.

- Fresh entries are served as they are.
- Within the stale window, the old value is served at once and one background refresh starts.
- Past it (or on a miss) callers wait for one shared load: fifty concurrent callers on a cold
  key cause one upstream call.
- When a load fails and an old value still inside the stale window exists, it is served, marked stale.
- Entries are evicted least-recently-used beyond `max_entries` or `max_bytes`.

With a `SharedTier` (several instances on one store) a second tier sits behind this one. A fresh
local entry is still served without touching the store. A local miss or expiry first reads the
store; loads and refreshes take the store lock of their key, re-read the store once it is theirs,
and only then ask the loader, so every instance together asks the source once. A waiter that
cannot get the lock in time re-reads the store, then serves stale, then fails: it never loads a
second time while the holder lives. Store down: exactly the single-instance behaviour above.

It never sleeps and never retries; the loader decides what one attempt means.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from service.store import LockUnavailable, Store, StoreError

log = structlog.get_logger("strava.cache")

Loader = Callable[[], Awaitable[tuple[Any, int]]]  # returns (value, size in bytes)
# (key, value, version the load started at) -> the value less what later invalidations took out,
# or None when it must not be served any more (purged since).
Refine = Callable[[str, Any, int | None], Awaitable[Any | None]]


@dataclass(slots=True)
class Entry:
    value: Any
    size: int
    fetched_at: float
    failed_at: float | None = None  # last refresh failure since the value was fetched
    version: int | None = None  # the shared invalidation version its load started at (None: unknown)


@dataclass(frozen=True, slots=True)
class Lookup:
    value: Any
    fetched_at: float
    stale: bool


async def _unchanged(key: str, value: Any, version: int | None) -> Any:
    return value


class SharedTier:
    """The store behind one cache: `<namespace>:cache:<key>` entries and `<namespace>:load:<key>` locks.

    An entry is `{"at": fetched_at, "v": version, "value": value}` as JSON, kept for ttl + stale.
    `version_key` counts invalidations (see invalidation.py): an entry records the count its load
    started at, so `refine` can take out what was invalidated while it was on its way.
    """

    def __init__(
        self,
        store: Store,
        namespace: str,
        *,
        lock_ttl_s: float,
        lock_wait_s: float,
        busy: Callable[[], Exception],
        decode: Callable[[Any], Any] = lambda value: value,
        refine: Refine = _unchanged,
        on_written: Callable[[str, float], None] = lambda key, fetched_at: None,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.version_key = f"{namespace}:version"
        self.lock_ttl_s = lock_ttl_s
        self.lock_wait_s = lock_wait_s
        self.busy = busy  # what a waiter raises when neither the store nor stale data can answer
        self.decode = decode
        self.refine = refine
        self.on_written = on_written  # an event-driven refresh landed: tell the other instances

    def entry_key(self, key: str) -> str:
        return f"{self.namespace}:cache:{key}"

    async def version(self) -> int | None:
        try:
            raw = await self.store.get(self.version_key)
        except StoreError:
            return None
        return int(raw) if raw is not None and raw.isdigit() else 0

    async def read(self, key: str) -> Entry | None:
        """The stored entry as stored (see `refined`); raises StoreError when the store does not answer."""
        raw = await self.store.get(self.entry_key(key))
        if raw is None:
            return None
        try:
            record = orjson.loads(raw)
            fetched_at, version, value = float(record["at"]), record["v"], self.decode(record["value"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("shared_cache_entry_unreadable", key=key)
            return None
        return Entry(value, len(raw), fetched_at, version=version if isinstance(version, int) else None)

    async def refined(self, key: str, entry: Entry | None) -> Entry | None:
        """`entry` less what was invalidated since its load began; None if nothing of it may be served.

        Done only for an entry about to be used, so a read that is not used costs one round trip.
        """
        if entry is None:
            return None
        value = await self.refine(key, entry.value, entry.version)
        if value is None:
            return None
        entry.value = value
        return entry

    async def write(self, key: str, entry: Entry, ttl_s: float) -> None:
        record = orjson.dumps({"at": entry.fetched_at, "v": entry.version, "value": entry.value})
        await self.store.set(self.entry_key(key), record, ttl_s)


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
        shared: SharedTier | None = None,
    ) -> None:
        self.ttl = ttl
        self.stale = stale
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.on_result = on_result
        self.shared = shared
        self.bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Entry]] = {}
        self._generation = 0  # bumped by clear(): loads begun before it must not refill the cache
        self._again: dict[str, tuple[Loader, int | None]] = {}  # refreshes to start once the one in flight ends
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
        if self.clock() - fresh.fetched_at <= self.ttl:
            return Lookup(fresh.value, fresh.fetched_at, False)
        # Only from the shared tier: another instance's entry, past its TTL but still servable.
        self.refresh_in_background(key, loader)
        return Lookup(fresh.value, fresh.fetched_at, True)

    def refresh_in_background(
        self, key: str, loader: Loader, *, again: bool = False, min_version: int | None = None
    ) -> None:
        """Start one refresh unless one is running. With `again`, a running one is not enough
        (it was asked for before whatever changed): another starts when it ends. `min_version`:
        a shared entry whose load began before that invalidation does not count as a refresh."""
        if key in self._inflight:
            if again:
                self._again[key] = (loader, min_version)
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(key, loader, min_version))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(self, key: str, loader: Loader, min_version: int | None = None) -> None:
        try:
            await self._load(key, loader, min_version)
        except Exception as exc:
            entry = self._entries.get(key)
            if entry is not None:
                entry.failed_at = self.clock()
            log.warning("background_refresh_failed", key=key, error=type(exc).__name__)

    async def _load(self, key: str, loader: Loader, min_version: int | None = None) -> Entry:
        future = self._inflight.get(key)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        generation = self._generation
        try:
            if self.shared is None:
                value, size = await loader()
                entry = Entry(value, size, self.clock())
            else:
                entry = await self._load_shared(self.shared, key, loader, min_version)
        except BaseException as exc:
            if not future.cancelled():
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters re-raise it; no "never retrieved" noise
            raise
        else:
            if generation == self._generation:
                self._store(key, entry)
            future.set_result(entry)
            return entry
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
                again = self._again.pop(key, None)
                # Not while shutting down: a cancelled load starts nothing new.
                if again is not None and not (future.done() and _cancelled(future)):
                    self.refresh_in_background(key, again[0], min_version=again[1])

    # ---- the shared tier ----

    def _answer(self, found: Entry | None, newer_than: float, min_version: int | None, *, fresh: bool) -> Entry | None:
        """Another instance's entry, if it answers this load: newer than ours, and recent enough."""
        if found is None or found.fetched_at <= newer_than:
            return None
        if min_version is not None and (found.version is None or found.version < min_version):
            return None  # loaded before the change this refresh is for
        age = self.clock() - found.fetched_at
        return found if age <= (self.ttl if fresh else self.ttl + self.stale) else None

    async def _load_shared(self, shared: SharedTier, key: str, loader: Loader, min_version: int | None) -> Entry:
        local = self._entries.get(key)
        newer_than = local.fetched_at if local is not None else float("-inf")
        try:
            found = await shared.read(key)
        except StoreError:
            return await self._load_here(loader)  # store down: one instance's behaviour
        answer = self._answer(found, newer_than, min_version, fresh=True)
        if answer is None and local is None and min_version is None:
            answer = self._answer(found, newer_than, None, fresh=False)  # stale: served, and the caller refreshes
        answer = await shared.refined(key, answer)
        if answer is not None:
            return answer
        try:
            async with shared.store.lock(
                f"{shared.namespace}:load:{key}",
                shared.lock_ttl_s,
                shared.lock_wait_s,
                label=f"{shared.namespace}:load",
            ):
                # Whoever held the lock before us may have just loaded it.
                found = await self._read_quietly(shared, key)
                answer = await shared.refined(key, self._answer(found, newer_than, min_version, fresh=True))
                if answer is not None:
                    return answer
                entry = await self._load_here(loader, await shared.version())
                if await shared.refined(key, entry) is None:
                    raise shared.busy()  # purged while on its way: nothing of it may be kept
                try:
                    await shared.write(key, entry, self.ttl + self.stale)
                except StoreError:
                    log.warning("shared_cache_write_failed", key=key)
                else:
                    if min_version is not None:
                        shared.on_written(key, entry.fetched_at)
                return entry
        except LockUnavailable:
            # The holder is alive and still loading: its answer, else stale, never a second load.
            found = await self._read_quietly(shared, key)
            answer = await shared.refined(key, self._answer(found, newer_than, None, fresh=False))
            if answer is not None:
                return answer
            raise shared.busy() from None
        except StoreError:
            return await self._load_here(loader)

    async def _read_quietly(self, shared: SharedTier, key: str) -> Entry | None:
        try:
            return await shared.read(key)
        except StoreError:
            return None

    async def _load_here(self, loader: Loader, version: int | None = None) -> Entry:
        value, size = await loader()
        return Entry(value, size, self.clock(), version=version)

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
