"""Deauthorization events, checked with Strava before anything is dropped, at a bounded cost.

Strava does not sign webhook events and athlete ids are public, so anyone can post a
deauthorization for our owner. Each one is checked by a refresh at Strava's OAuth token endpoint,
which does not count against the API rate limits:

- refused: the grant is gone. The token manager then ends it as it does for any refused refresh
  (tokens dropped, the data layer's purge hook run), so there is one revocation path, not two.
- accepted: the event was forged; nothing changes (the cache is not even touched). The refresh
  rotated the token set, which the token manager persists like any other.
- inconclusive (the token endpoint is down, slow, or refuses our client credentials; or the
  shared store is unreachable, and no refresh may be sent without its lock): privacy first.
  Nothing of the owner's is served (`withheld`: the data layer answers 503 with Retry-After)
  until a check succeeds; checks are retried in the background with backoff.

Concurrent events share one check, but a check proves only what was true when it started: an
event that arrives while one is in flight gets the next one (the `again` of cache.py). Checks
start at most once per `MIN_INTERVAL_S`; events inside that window wait for the next. A flood of
forged events therefore costs at most one token request per second and no API call at all, and a
real revocation right after forged events is honoured within `MIN_INTERVAL_S` plus one round trip
to the token endpoint (under 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from service.projects.strava_integration.errors import AuthRejected, NotConfigured, UpstreamError
from service.projects.strava_integration.tokens import TokenManager

log = structlog.get_logger("strava.revocation")

Verdict = Literal["alive", "revoked", "unconfirmed"]
MIN_INTERVAL_S = 1.0  # between the starts of two checks
RETRY_FIRST_S = 2.0  # after an inconclusive check, the next one starts this much later, doubling ...
RETRY_MAX_S = 60.0  # ... up to this


class GrantGuard:
    def __init__(
        self,
        tokens: TokenManager,
        purge: Callable[[], Awaitable[None]],
        *,
        min_interval_s: float = MIN_INTERVAL_S,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.tokens = tokens
        self.purge = purge
        self.min_interval_s = min_interval_s
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.withheld = False  # a deauthorization could not be confirmed either way yet
        self._next: asyncio.Future[Verdict] | None = None  # the verdict events arriving now will get
        self._current: asyncio.Future[Verdict] | None = None  # the verdict of the check in flight
        self._worker: asyncio.Task[None] | None = None
        self._last_started: float | None = None  # loop time
        self._retry_s = retry_first_s

    @property
    def retry_after_s(self) -> int:
        """When a withheld owner's data might be served again, for Retry-After."""
        return max(1, int(self._retry_s))

    async def deauthorization(self) -> Verdict:
        """A deauthorization event arrived: the verdict of the first check that starts after it."""
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
        future = self._next
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="strava-grant-check")
        return await asyncio.shield(future)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._next is not None or self.withheld:
            spacing = self._retry_s if self.withheld else self.min_interval_s
            if self._last_started is not None:
                wait = self._last_started + spacing - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            # From here on, arriving events need a check that starts after this one.
            future, self._next = self._next, None
            self._current = future
            self._last_started = loop.time()
            verdict = await self._check()
            if verdict == "unconfirmed":
                self._retry_s = min(self._retry_s * 2, self.retry_max_s) if self.withheld else self.retry_first_s
                if not self.withheld:
                    log.warning("strava_owner_data_withheld", retry_in_s=self._retry_s)
                self.withheld = True
            else:
                if self.withheld:
                    log.info("strava_owner_data_released", verdict=verdict)
                self.withheld = False
                self._retry_s = self.retry_first_s
            if future is not None and not future.done():
                future.set_result(verdict)

    async def _check(self) -> Verdict:
        try:
            await self.tokens.fresh_refresh()
        except AuthRejected:
            # Refused: the token manager has ended the grant (and purged the data) already.
            log.warning("strava_deauthorization_confirmed")
            return "revoked"
        except NotConfigured:
            # No grant held any more (revoked or disconnected meanwhile): make sure nothing is left.
            await self.purge()
            log.warning("strava_deauthorization_confirmed", reason="no grant held")
            return "revoked"
        except UpstreamError as exc:
            log.warning("strava_deauthorization_unconfirmed", error=exc.code)
            return "unconfirmed"
        log.warning("strava_deauthorization_forged", note="Strava still accepts the grant; nothing changed")
        return "alive"

    async def aclose(self) -> None:
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for future in (self._current, self._next):
            if future is not None and not future.done():
                future.cancel()
