"""The store interface: shared state for projects, as bytes under namespaced keys.

Two implementations: `MemoryStore` (in-process, the embedded default) and `RedisStore` (shared by
every instance). Keys are chosen by projects as `<project>:<what>[:<id>]` (`strava-integration:tokens`,
`strava-integration:webhook:<event>`); a lock `<name>` lives at `<name>:lock`. The Redis store puts
its `REDIS_KEY_PREFIX` in front of every key and channel, so several apps can share one server.
Every operation is bounded in time; a failure raises a `StoreError`, never a backend's exception.
The hot path is not meant to come here: projects keep what they serve in process memory and use
the store for misses, claims, locks and invalidation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from service.store.lock import StoreLock
from service.store.metrics import StoreMetrics

log = structlog.get_logger("service.store")

Backend = Literal["memory", "redis"]
# Runs on the event loop for every message; must not block (schedule a task for real work).
Subscriber = Callable[[bytes], None]
# Runs when the store answers again after being unreachable (it may have come back empty).
ReconnectHook = Callable[[], Awaitable[None]]
Unsubscribe = Callable[[], None]


def deliver(channel: str, callback: Subscriber, message: bytes) -> None:
    """Run one subscriber; its failure is logged, never allowed to stop delivery to the others."""
    try:
        callback(message)
    except Exception as exc:
        log.error("store_subscriber_failed", channel=channel, error=type(exc).__name__)


def check_ttl(ttl_s: float | None) -> None:
    if ttl_s is not None and not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive or None, not {ttl_s!r}")


class Store(ABC):
    backend: Backend
    metrics: StoreMetrics

    @property
    @abstractmethod
    def up(self) -> bool:
        """False while the store is unreachable; operations then raise `StoreUnavailable` at once."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store lives (`host:port`, or `memory`), fit for a log line or a health message."""

    @abstractmethod
    async def start(self) -> None:
        """Start background work (pinger, subscriptions). Never raises because the store is down."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop background work and close connections; bounded."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Write `value`; `ttl_s=None` means no expiry (and clears an earlier one)."""

    @abstractmethod
    async def set_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        """Write only if `key` holds nothing; True if this call wrote it. For single-use claims."""

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Remove keys; the number that existed."""

    @abstractmethod
    async def compare_and_set(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        """Atomically write `new` if `key` holds `expected` (None: only if absent); True if written."""

    @abstractmethod
    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Atomically remove `key` if it holds `expected`; True if removed."""

    @abstractmethod
    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        """Add one to an integer value (absent counts as 0) and return it.

        The key keeps its expiry; `ttl_s` gives it one if it has none (a counter per time window).
        """

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> None:
        """Send `message` to every subscriber of `channel`, on every instance (at most once each)."""

    @abstractmethod
    def subscribe(self, channel: str, callback: Subscriber) -> Unsubscribe:
        """Call `callback` for each message on `channel` until the returned function is called.

        Delivery is best effort: messages published while the store was unreachable are lost, so
        pair a subscription with a version (`incr`) the subscriber checks.
        """

    @abstractmethod
    def on_reconnect(self, hook: ReconnectHook) -> None:
        """Run `hook` each time the store answers again after being unreachable."""

    def lock(self, name: str, ttl_s: float, wait_s: float, *, label: str | None = None) -> StoreLock:
        """An async context manager holding the lock `name` (key `<name>:lock`) while its body runs.

        The lock expires after `ttl_s` even if its holder dies; it is waited for at most `wait_s`.
        Raises `LockUnavailable` or `StoreUnavailable` instead of entering: the caller must then not
        do the guarded work. `label` is the lock-wait metric's label (default `name`): pass a fixed
        one when `name` carries a variable part.
        """
        return StoreLock(self, name, ttl_s, wait_s, label or name)
