"""The in-process store: the embedded default when no REDIS_URL is set. Always up.

Same semantics as the Redis store on one instance: expiries by the injected clock, single-use
claims, compare-and-set, locks and pub/sub delivered on this loop. Everything runs on the event
loop thread, so plain dict operations are atomic between awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from service.store.errors import StoreError
from service.store.interface import Backend, ReconnectHook, Store, Subscriber, Unsubscribe, check_ttl, deliver
from service.store.metrics import StoreMetrics

# Expired entries are dropped when read, and all of them once every this many writes, so keys
# nobody reads again (claims, dedupe markers) do not pile up.
SWEEP_EVERY_WRITES = 1024


class MemoryStore(Store):
    backend: Backend = "memory"

    def __init__(self, metrics: StoreMetrics, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.clock = clock
        self._data: dict[str, tuple[bytes, float | None]] = {}  # key -> (value, expires at or None)
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._writes = 0
        metrics.set_up(True)

    @property
    def up(self) -> bool:
        return True

    @property
    def location(self) -> str:
        return "memory"

    async def start(self) -> None:
        """Nothing runs in the background."""

    async def aclose(self) -> None:
        """Nothing to close; the data goes with the process."""

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= self.clock():
            del self._data[key]
            return None
        return entry

    def _write(self, key: str, value: bytes, ttl_s: float | None) -> None:
        self._data[key] = (bytes(value), None if ttl_s is None else self.clock() + ttl_s)
        self._writes += 1
        if self._writes % SWEEP_EVERY_WRITES == 0:
            now = self.clock()
            for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
                del self._data[k]

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        self._write(key, value, ttl_s)

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        check_ttl(ttl_s)
        if self._live(key) is not None:
            return False
        self._write(key, value, ttl_s)
        return True

    async def delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                del self._data[key]
                removed += 1
        return removed

    async def compare_and_set(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        check_ttl(ttl_s)
        entry = self._live(key)
        if (entry[0] if entry is not None else None) != expected:
            return False
        self._write(key, new, ttl_s)
        return True

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        entry = self._live(key)
        if entry is None or entry[0] != expected:
            return False
        del self._data[key]
        return True

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        check_ttl(ttl_s)
        entry = self._live(key)
        try:
            value = 1 if entry is None else int(entry[0]) + 1
        except ValueError:
            raise StoreError(f"store: incr on {key}: not an integer") from None
        expires_at = None if entry is None else entry[1]
        if expires_at is None and ttl_s is not None:
            expires_at = self.clock() + ttl_s
        self._data[key] = (str(value).encode(), expires_at)
        return value

    async def publish(self, channel: str, message: bytes) -> None:
        # Delivered on a later loop iteration, as from Redis, so a publisher never runs its own
        # subscribers inline.
        loop = asyncio.get_running_loop()
        for callback in list(self._subscribers.get(channel, ())):
            loop.call_soon(deliver, channel, callback, bytes(message))

    def subscribe(self, channel: str, callback: Subscriber) -> Unsubscribe:
        self._subscribers.setdefault(channel, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(channel, [])
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def on_reconnect(self, hook: ReconnectHook) -> None:
        """Never runs: memory is never unreachable."""
