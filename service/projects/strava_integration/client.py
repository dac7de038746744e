"""The Strava API client: one pooled connection set, a deadline per call, bounded retries.

Every call asks the budget first and sends nothing when it is spent (`BudgetExhausted`, at once:
we never wait for a rate-limit window). A call has one deadline, retries included. Only
idempotent GETs are retried, only for failures that say nothing was served (connection errors,
read timeouts, resets, 502/503/504), at most twice, with capped full-jitter backoff that never
sleeps past the deadline.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson
import structlog

from observability.redact import Redactor
from observability.timestamps import iso_utc
from service.projects.strava_integration.budget import Budget
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.errors import (
    AuthRejected,
    BudgetExhausted,
    NotConfigured,
    RateLimited,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from service.projects.strava_integration.tokens import TokenManager
from service.projects.strava_integration.upstream_metrics import StravaMetrics, endpoint_label
from service.store import Store

__all__ = [
    "AuthRejected",
    "BudgetExhausted",
    "NotConfigured",
    "RateLimited",
    "StravaClient",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]

log = structlog.get_logger("strava.client")

USER_AGENT = "siteapi/1.0 (strava-integration)"
MAX_RETRIES = 2
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 2.0
RETRY_STATUSES = frozenset({502, 503, 504})
# Transport failures after which a GET may safely be sent again: nothing was served, or the
# connection died before a whole response arrived.
RETRY_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
MAX_PER_PAGE = 200


class _Attempt:
    """The attempt in flight, so a deadline that cancels it can still be counted and timed."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started: float | None = None


class StravaClient:
    def __init__(
        self,
        settings: StravaSettings,
        metrics: StravaMetrics,
        redactor: Redactor,
        clock: Callable[[], float],
        budget: Budget,
        tokens: TokenManager | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.redactor = redactor
        self.clock = clock
        self.budget = budget
        timeout = settings.request_timeout_seconds
        self.http = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=10, max_keepalive_connections=5, keepalive_expiry=30),
            timeout=httpx.Timeout(timeout, connect=settings.connect_timeout_seconds),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            trust_env=False,
        )
        self.tokens = tokens or TokenManager(settings, self.http, metrics, redactor, clock, store)
        self._last_error: dict[str, Any] | None = None
        self._failing = False  # the last call failed (not counting "no such resource")

    async def start(self) -> None:
        await self.tokens.start()

    async def aclose(self) -> None:
        await self.tokens.aclose()
        await self.http.aclose()

    # ---- typed helpers ----

    async def athlete(self) -> dict[str, Any]:
        return await self.get_json("athlete", "/athlete")

    async def activities(
        self, page: int = 1, per_page: int = 30, before: int | None = None, after: int | None = None
    ) -> list[dict[str, Any]]:
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"page must be >= 1 and per_page within 1..{MAX_PER_PAGE}")
        params: dict[str, int] = {"page": int(page), "per_page": int(per_page)}
        if before is not None:
            params["before"] = int(before)
        if after is not None:
            params["after"] = int(after)
        return await self.get_json("activities", "/athlete/activities", params)

    async def activity(self, activity_id: int) -> dict[str, Any]:
        return await self.get_json("activity", f"/activities/{_positive(activity_id)}")

    async def stats(self, athlete_id: int) -> dict[str, Any]:
        return await self.get_json("stats", f"/athletes/{_positive(athlete_id)}/stats")

    # ---- the one request path ----

    async def get_json(self, endpoint: str, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET `path` (below the API URL) and return its JSON, or raise an `UpstreamError`."""
        if not path.startswith("/") or "://" in path:
            raise ValueError("path must be relative to the API URL")
        label = endpoint_label(endpoint)
        try:
            await self.budget.sync()  # what the other instances learnt of the limits (a shared store only)
            self.budget.check()
            attempt = _Attempt()
            deadline_s = self.settings.request_timeout_seconds
            deadline = asyncio.get_running_loop().time() + deadline_s
            try:
                async with asyncio.timeout_at(deadline):
                    result = await self._call(label, path, params, deadline, attempt)
                self._failing = False
                return result
            except TimeoutError:
                if attempt.started is not None:
                    self._observe(label, "timeout", attempt)
                log.warning("strava_upstream_deadline", endpoint=label, deadline_s=deadline_s)
                raise UpstreamTimeout() from None
        except UpstreamError as exc:
            self._last_error = {"type": type(exc).__name__, "code": exc.code, "status": exc.status, "at": self.clock()}
            self._failing = not isinstance(exc, UpstreamNotFound)
            raise

    async def _call(
        self, label: str, path: str, params: Mapping[str, Any] | None, deadline: float, attempt: _Attempt
    ) -> Any:
        loop = asyncio.get_running_loop()
        url = self.settings.api_url + path
        token = await self.tokens.access_token()
        refreshed = False
        retries = 0
        while True:
            failure: UpstreamError
            attempt.started = time.perf_counter()
            try:
                response = await self.http.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
            except httpx.TimeoutException as exc:
                self._observe(label, "timeout", attempt, error=type(exc).__name__)
                if not isinstance(exc, RETRY_ERRORS):
                    raise UpstreamTimeout() from None
                failure = UpstreamTimeout()
            except RETRY_ERRORS as exc:
                self._observe(label, "error", attempt, error=type(exc).__name__)
                failure = UpstreamUnavailable()
            except httpx.HTTPError as exc:
                self._observe(label, "error", attempt, error=type(exc).__name__)
                raise UpstreamUnavailable() from None
            else:
                status = response.status_code
                self._observe(label, status, attempt)
                self.budget.record(response.headers, status)
                if 200 <= status < 300:
                    try:
                        return orjson.loads(response.content)
                    except orjson.JSONDecodeError:
                        log.warning("strava_upstream_bad_json", endpoint=label, status=status)
                        raise UpstreamBadResponse() from None
                if status == 401 and not refreshed:
                    refreshed = True
                    token = await self.tokens.refresh_after_401(token)
                    continue
                if status not in RETRY_STATUSES:
                    raise self._status_error(status)
                failure = UpstreamUnavailable(status=503 if status == 503 else 502)
            # A retryable failure: try again if allowed, the budget agrees, and the deadline leaves room.
            if retries >= MAX_RETRIES:
                raise failure
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retries))
            if loop.time() + delay >= deadline:
                raise failure
            retries += 1
            await asyncio.sleep(delay)
            self.budget.check()

    def _status_error(self, status: int) -> UpstreamError:
        if status == 429:
            until = self.budget.blocked_until()
            retry_after = math.ceil(until - self.clock()) if until is not None else 900
            return RateLimited(retry_after)
        if status == 401:
            return AuthRejected("Strava refused a freshly refreshed access token; re-authorization may be needed.")
        if status == 404:
            return UpstreamNotFound()
        if 400 <= status < 500:
            return UpstreamBadResponse(f"Strava refused the request ({status}).")
        if 300 <= status < 400:
            return UpstreamBadResponse(f"Strava answered with an unexpected redirect ({status}).")
        return UpstreamUnavailable(f"Strava failed ({status}).", status=503 if status == 503 else 502)

    def _observe(self, label: str, status: int | str, attempt: _Attempt, *, error: str | None = None) -> None:
        """Count and time the attempt that just ended, and log it when it failed."""
        started, attempt.started = attempt.started, None
        duration = time.perf_counter() - started if started is not None else 0.0
        self.metrics.observe_request(label, status, duration)
        if status == 404:
            log.info("strava_upstream_not_found", endpoint=label, status=status, duration_s=round(duration, 3))
        elif status in ("error", "timeout") or (isinstance(status, int) and status >= 400):
            log.warning(
                "strava_upstream_failed", endpoint=label, status=status, duration_s=round(duration, 3), error=error
            )
        else:
            log.debug("strava_upstream_request", endpoint=label, status=status, duration_s=round(duration, 3))

    # ---- reporting ----

    def failing(self) -> dict[str, Any] | None:
        """The last error, while no call has succeeded since (a 404 is an answer, not a failure)."""
        return self._last_error if self._failing else None

    def status(self) -> dict[str, Any]:
        last = self._last_error
        return {
            "budget": self.budget.snapshot(),
            "tokens": self.tokens.status(),
            "last_upstream_error": {**last, "at": iso_utc(last["at"])} if last else None,
        }


def _positive(value: int) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("ids are positive integers")
    return number
