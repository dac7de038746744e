"""Invalidations among instances: a pub/sub message for speed, a version number for certainty.

Whoever changes shared data takes the next version (`incr <namespace>:version`), records the
change in the store, then publishes `{"v": n, "kind": ..., "from": <instance>}` on
`<namespace>:invalidate`. Every instance applies the messages of the others at once. Pub/sub is
best effort (a message sent while a subscriber was reconnecting is gone), so each instance also
reads the version every `interval_s`: a number it has no message for means it missed one, and it
drops its local tier (`on_gap`), so its next request reads the store, where the change is.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from service.store import Store, StoreError

log = structlog.get_logger("strava.invalidation")

CHECK_INTERVAL_S = 0.5  # a missed message is caught within this (plus one store round trip)


class Broadcast:
    def __init__(
        self,
        store: Store,
        namespace: str,
        *,
        apply: Callable[[dict[str, Any]], None],
        on_gap: Callable[[], None],
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.store = store
        self.channel = f"{namespace}:invalidate"
        self.version_key = f"{namespace}:version"
        self.apply = apply
        self.on_gap = on_gap
        self.interval_s = interval_s
        self.instance = secrets.token_hex(8)  # tells our own messages from the others'
        self.known: int | None = None  # every change up to here has reached this instance
        self._unsubscribe: Callable[[], None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self.channel, self._received)
        await self.check()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="strava-invalidation-watch")

    async def aclose(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def next_version(self) -> int:
        """The number of a change about to be made; raises StoreError."""
        return await self.store.incr(self.version_key)

    async def announce(self, version: int, kind: str, **fields: Any) -> None:
        """Tell the other instances about change `version`, already recorded in the store."""
        self._note(version)
        message = orjson.dumps({"v": version, "kind": kind, "from": self.instance, **fields})
        try:
            await self.store.publish(self.channel, message)
        except StoreError:
            # The version is taken, so the others catch the change by their check instead.
            log.warning("invalidation_publish_failed", kind=kind, version=version)

    async def tell(self, kind: str, **fields: Any) -> None:
        """A message that is no change (`fill`: fresher data is in the store): no version, best effort."""
        message = orjson.dumps({"kind": kind, "from": self.instance, **fields})
        with contextlib.suppress(StoreError):
            await self.store.publish(self.channel, message)

    def _received(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("invalidation_message_unreadable")
            return
        if not isinstance(message, dict) or message.get("from") == self.instance:
            return
        self.apply(message)
        version = message.get("v")
        if isinstance(version, int):
            self._note(version)

    def _note(self, version: int) -> None:
        # Only the next number moves us on: after a gap, the check below decides.
        if self.known is not None and version == self.known + 1:
            self.known = version

    async def check(self) -> None:
        try:
            raw = await self.store.get(self.version_key)
        except StoreError:
            return  # the store is away: we serve what we hold, and look again later
        current = int(raw) if raw is not None and raw.isdigit() else 0
        if self.known is None or current < self.known:
            self.known = current  # first look, or the store came back empty
        elif current > self.known:
            log.info("invalidation_missed", known=self.known, current=current)
            self.known = current
            self.on_gap()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception as exc:  # never let the watcher die: it is what catches missed messages
                log.error("invalidation_check_failed", error=type(exc).__name__)
