"""Redis pub/sub for the Redis store: one connection, one background task, reconnecting forever.

Subscriptions are kept here (channel -> callbacks) and re-sent on every new connection, so a
server restart or an outage costs only the messages published meanwhile. The reader waits for
a message at most READ_WAIT_S at a time, so channels added while it waits are subscribed soon.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.store.interface import Subscriber, Unsubscribe, deliver
from service.store.redis_location import RedisLocation

log = structlog.get_logger("service.store")

READ_WAIT_S = 0.5
FIRST_RETRY_S = 0.1
MAX_RETRY_S = 2.0


class RedisSubscriber:
    def __init__(self, redis: Redis, location: RedisLocation, timeout_s: float) -> None:
        self._redis = redis
        self._location = location
        self._timeout_s = timeout_s
        self._callbacks: dict[str, list[Subscriber]] = {}  # full channel name (prefixed)
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reset = False
        self.connected = False

    def add(self, channel: str, callback: Subscriber) -> Unsubscribe:
        self._callbacks.setdefault(channel, []).append(callback)
        self._changed.set()

        def unsubscribe() -> None:
            callbacks = self._callbacks.get(channel, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._callbacks.pop(channel, None)
                self._changed.set()

        return unsubscribe

    def reconnect(self) -> None:
        """Drop the connection and make a new one: called when the server came back from an outage,
        since a connection that silently died (no reset reached us) would otherwise just stay quiet."""
        self._reset = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-redis-subscriber")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        retry_s = FIRST_RETRY_S
        while True:
            if not self._callbacks:
                self._changed.clear()
                await self._changed.wait()
                continue
            pubsub = self._redis.pubsub()
            try:
                await self._read(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.connected:
                    log.warning("store_subscriber_disconnected", location=str(self._location), error=type(exc).__name__)
                self.connected = False
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, MAX_RETRY_S)
            else:
                retry_s = FIRST_RETRY_S
            finally:
                # Closing never waits on a hung server for long.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._timeout_s):
                        await pubsub.aclose()

    async def _read(self, pubsub: Any) -> None:
        """Returns when no channel is wanted or a reconnect was asked for; raises when the connection fails."""
        subscribed: set[str] = set()
        self._reset = False
        while True:
            wanted = set(self._callbacks)
            if not wanted or self._reset:
                return
            if wanted != subscribed:
                async with asyncio.timeout(self._timeout_s):
                    if wanted - subscribed:
                        await pubsub.subscribe(*(wanted - subscribed))
                    if subscribed - wanted:
                        await pubsub.unsubscribe(*(subscribed - wanted))
                subscribed = wanted
                if not self.connected:
                    self.connected = True
                    log.info("store_subscriber_connected", location=str(self._location), channels=len(subscribed))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_WAIT_S)
            if message is not None and message.get("type") == "message":
                channel = message["channel"].decode(errors="replace")
                for callback in list(self._callbacks.get(channel, ())):
                    deliver(channel, callback, message["data"])
