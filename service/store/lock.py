"""A lock on top of any store: an owner token set only if absent, with an expiry, and a release that
deletes the key only while it still holds our token (so an expired lock that another owner has
since taken is never released by us).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from types import TracebackType
from typing import TYPE_CHECKING

import structlog

from service.store.errors import LockUnavailable, StoreError

if TYPE_CHECKING:
    from service.store.interface import Store

log = structlog.get_logger("service.store")

FIRST_BACKOFF_S = 0.005
MAX_BACKOFF_S = 0.1


class StoreLock:
    __slots__ = ("_key", "label", "name", "store", "token", "ttl_s", "wait_s")

    def __init__(self, store: Store, name: str, ttl_s: float, wait_s: float, label: str) -> None:
        if not ttl_s > 0 or wait_s < 0:
            raise ValueError("a lock needs ttl_s > 0 and wait_s >= 0")
        self.store = store
        self.name = name
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.label = label
        self.token = b""
        self._key = f"{name}:lock"

    async def __aenter__(self) -> StoreLock:
        token = secrets.token_hex(16).encode()
        start = time.monotonic()
        deadline = start + self.wait_s
        backoff = FIRST_BACKOFF_S
        try:
            # StoreUnavailable from an attempt propagates at once: waiting on a dead store is pointless.
            while not await self.store.set_if_absent(self._key, token, self.ttl_s):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockUnavailable(f"store: lock {self.name} held elsewhere for {self.wait_s:g} s")
                # Jitter, so waiters on several instances do not poll in step.
                await asyncio.sleep(min(backoff * (0.5 + random.random()), remaining))
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self.store.metrics.lock_wait(self.label).observe(time.monotonic() - start)
        self.token = token
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Never raise from here: that would hide the body's own exception. A lock we cannot
        # release expires by itself after ttl_s.
        try:
            released = await self.store.compare_and_delete(self._key, self.token)
        except StoreError:
            log.warning("store_lock_release_failed", lock=self.name, expires_in_s=self.ttl_s)
            return
        if not released:
            log.warning("store_lock_expired_while_held", lock=self.name, ttl_s=self.ttl_s)
