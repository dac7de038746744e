"""Strava's OAuth tokens: rotating refresh tokens, refreshed single-flight, persisted atomically.

Strava rotates the refresh token on every refresh and the old one dies at once, so a new token
set is written to disk (temp file, fsync, rename, fsync the directory) before it is used: a crash
right after a refresh must not leave only a dead token behind. Concurrent callers share one
refresh, and that refresh runs in its own task, so a caller giving up (its deadline passed)
never cancels a refresh halfway between Strava's answer and the write.

How a grant ends, in one place (`end_grant`): Strava refuses the refresh token (the owner revoked
the app, whether or not a webhook event told us), a deauthorization event is confirmed by such a
refusal, or an admin disconnects. The tokens leave memory at once, a tombstone takes the set's
place in the store, the data layer's `on_revoked` hook purges every cached item of the owner's
(the other instances, told, re-read the store and end the grant too), then the file goes. A
refusal of the application's own credentials (`client_id`/`client_secret`) is a configuration
error instead: nothing is dropped, and the held access token is used while it is valid.

The token set lives in the store (shared_tokens.py): Redis when `REDIS_URL` is set, the single
source of truth for every instance; else the in-process store, the same code path on one
instance. A refresh runs under the store's lock; after taking it the set is read again (another
instance may have refreshed: then that set is used and Strava is not asked), and the new set is
written with a compare-and-set on the bytes it replaces, then to the file, before it is used. No
lock, no refresh: with the store down the held access token is used while it lasts, then the data
goes stale. A fresh access token in memory costs no store round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import stat
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeGuard

import httpx
import orjson
import structlog

from observability.metrics import Metrics
from observability.redact import Redactor
from observability.timestamps import iso_utc
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.errors import (
    AUTH_START_PATH,
    AuthRejected,
    CredentialsRejected,
    NotConfigured,
    TokenRefreshPostponed,
    UpstreamBadResponse,
    UpstreamUnavailable,
)
from service.projects.strava_integration.shared_tokens import Shared, SharedTokens, encode, tombstone
from service.projects.strava_integration.upstream_metrics import StravaMetrics
from service.store import LockUnavailable, MemoryStore, Store, StoreError, StoreMetrics
from service.values import is_int, is_number

log = structlog.get_logger("strava.tokens")

REFRESH_MARGIN_S = 300  # refresh when the access token expires within this
REJECTED_RETRY_S = 60  # after our credentials were rejected, wait this long before asking Strava again
CLIENT_FIELDS = frozenset({"client_id", "client_secret"})  # what Strava names when our credentials are wrong
ENDED_MESSAGES = {
    "revoked": f"Strava access was revoked; re-authorize at {AUTH_START_PATH}.",
    "disconnected": f"Not connected to Strava (disconnected by an admin); authorize at {AUTH_START_PATH}.",
}
STILL_USABLE_S = 30  # if a refresh fails, an access token with this much life left is still handed out


def write_token_file(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600, surviving a crash at any point."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", suffix=".tmp", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _delete_token_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return is_number(value) and math.isfinite(value)


def _parse_token_file(raw: bytes) -> dict[str, Any]:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    refresh = data.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise ValueError("no refresh_token")
    access = data.get("access_token")
    expires_at = data.get("expires_at")
    athlete_id = data.get("athlete_id")
    scope = data.get("scope")
    return {
        "refresh_token": refresh,
        "access_token": access if isinstance(access, str) and access else None,
        "expires_at": int(expires_at) if _is_number(expires_at) else None,
        "athlete_id": athlete_id if is_int(athlete_id) else None,
        "scope": scope if isinstance(scope, str) else None,
    }


def _rejected_field(response: httpx.Response) -> str | None:
    """The `field` Strava names in a 4xx body (`client_id`, `refresh_token`, `code`), if any."""
    try:
        errors = orjson.loads(response.content).get("errors") or []
        field = errors[0].get("field")
    except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
        return None
    return field if isinstance(field, str) and len(field) <= 40 else None


class TokenManager:
    """The owner's token set. `on_revoked` (set by the data layer) runs whenever the grant ends."""

    def __init__(
        self,
        settings: StravaSettings,
        http: httpx.AsyncClient,
        metrics: StravaMetrics,
        redactor: Redactor,
        clock: Callable[[], float],
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.http = http
        self.metrics = metrics
        self.redactor = redactor
        self.clock = clock
        self._access_token: str | None = None
        self._expires_at: int | None = None
        self._refresh_token: str | None = None
        self._athlete_id: int | None = None
        self._scope: str | None = None
        self._source: str | None = None
        self._auth_ok = False
        self._last_refresh_at: float | None = None
        self._last_error: str | None = None
        self._rejected: tuple[str, float] | None = None  # (refresh token, when) our credentials were rejected
        self._credentials_rejected = False  # Strava refused client_id/client_secret since the last success
        self._ended: str | None = None  # why the grant ended: "revoked" or "disconnected"; None while held
        # Called with `everywhere`: False when another instance ended the grant (and told the others).
        self.on_revoked: Callable[[bool], Awaitable[None]] | None = None
        self._env_fallback_used = False
        self._file_problem: str | None = None  # "unreadable" or "corrupt" when load() had to skip the file
        self._generation = 0  # bumped by end_grant() and exchange_code(): older refreshes are discarded
        self._inflight: asyncio.Task[str] | None = None
        self._inflight_number = 0  # which refresh `_inflight` is, counting from 1
        self._refreshes_started = 0
        self._file_lock = asyncio.Lock()  # one writer at a time, so disk and memory agree
        # Embedded default: an in-process store (its metrics on a registry of its own: nothing exports them).
        self.shared = SharedTokens(
            store or MemoryStore(StoreMetrics(Metrics("strava-tokens")), clock),
            settings.request_timeout_seconds,
            _parse_token_file,
        )
        self._verified = False  # the held set was issued or read from the store in this process: fit to write back
        self._record_raw: bytes | None = None  # the held set, encoded, once verified
        self._shared_raw: bytes | None = None  # what the store held when it last agreed with us
        self._pending: tuple[bytes | None, bytes] | None = None  # (replaced, new): a new set the store missed
        self._rotated_away: deque[str] = deque(maxlen=8)  # refresh tokens we replaced: dead, never adopted
        self._set_version = 0  # bumped whenever the held set changes
        self._inflight_check = False  # the refresh in flight always asks Strava (a grant check)

    # ---- start-up ----

    def load(self) -> None:
        """Take the persisted token set if there is a usable one, else the environment's token."""
        path = self.settings.token_file
        record: dict[str, Any] | None = None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._file_problem = "unreadable"
            log.warning("strava_token_file_unreadable", path=str(path), error=type(exc).__name__)
        else:
            try:
                record = _parse_token_file(raw)
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                self._file_problem = "corrupt"
                log.warning("strava_token_file_corrupt", path=str(path), error=str(exc)[:200])
            else:
                with contextlib.suppress(OSError):
                    if stat.S_IMODE(path.stat().st_mode) & 0o077:
                        log.warning("strava_token_file_permissions", path=str(path), expected="0600")
        if record is not None:
            self._apply(record, "file")
            log.info("strava_tokens_loaded", source="file", athlete_id=self._athlete_id)
        elif self.settings.refresh_token:
            self._refresh_token = self.settings.refresh_token
            self._source = "environment"
            self._env_fallback_used = True
            self.redactor.add_secret(self._refresh_token)
            log.info("strava_tokens_loaded", source="environment")
        self._auth_ok = self._refresh_token is not None and self._credentials()
        self._publish()

    async def start(self) -> None:
        """`load()`, then the shared set (if there is one) wins over the file and the environment."""
        self.load()
        self.shared.store.on_reconnect(self.sync)
        await self.sync()

    async def sync(self) -> None:
        """Agree with the store: take or give. At start-up, when it answers again (maybe empty), and
        when another instance announced a purge (the grant may have ended there: its tombstone)."""
        version = self._set_version
        try:
            shared = await self.shared.read()
        except StoreError as exc:
            log.warning("strava_shared_tokens_unreadable", error=type(exc).__name__)
            return
        if self._set_version != version or (self._inflight is not None and not self._inflight.done()):
            return  # our set changed meanwhile, or a refresh is about to reconcile itself
        await self._take(shared)

    async def _take(self, shared: Shared) -> None:
        """Reconcile with what the store holds. Never talks to Strava, so no lock is needed."""
        if self._pending is not None:
            await self._flush_pending(shared)
            return
        if shared.ended is not None:
            if self._ended is None and self._refresh_token is not None:
                log.warning("strava_grant_ended_elsewhere", reason=shared.ended)
                await self.end_grant(shared.ended, ENDED_MESSAGES[shared.ended], everywhere=False)
            return
        token = shared.refresh_token
        if token is None:
            if shared.raw is None:
                await self._fill()  # absent: the store came back empty, or nobody has written yet
            return
        if token == self._refresh_token:
            self._shared_raw = shared.raw
            return
        if token in self._rotated_away:
            # An older set of ours (a write-back that lost a race): put the newer one in its place.
            if self._verified and self._record_raw is not None:
                with contextlib.suppress(StoreError):
                    if await self.shared.replace(shared.raw, self._record_raw):
                        self._shared_raw = self._record_raw
            return
        await self._adopt(shared)

    async def _adopt(self, shared: Shared) -> None:
        """Use the store's set: another instance refreshed, or the owner authorized through it."""
        assert shared.record is not None and shared.raw is not None
        self._generation += 1  # a refresh of ours still in flight is outdated now
        self._apply(shared.record, "store")
        self._verified, self._record_raw, self._shared_raw = True, shared.raw, shared.raw
        self._auth_ok, self._ended, self._rejected = True, None, None
        self._env_fallback_used = True  # the environment's token is older than any shared set
        self._publish()
        log.info("strava_tokens_adopted", athlete_id=self._athlete_id, expires_at=iso_utc(self._expires_at))
        async with self._file_lock:  # the local copy (what a restart without the store would use)
            try:
                await asyncio.to_thread(write_token_file, self.settings.token_file, shared.raw)
            except OSError as exc:
                path = str(self.settings.token_file)
                log.warning("strava_token_file_write_failed", path=path, error=type(exc).__name__)

    async def _fill(self) -> None:
        """The store has no set: write ours back (only into the absent key), if it is a proven one."""
        raw = self._record_raw
        if not self._verified or raw is None or self._ended is not None:
            return  # an unproven token (the environment's, an old file) must not become everyone's
        try:
            if await self.shared.fill(raw):
                self._shared_raw = raw
                log.warning("strava_shared_tokens_written_back")
        except StoreError as exc:
            log.warning("strava_shared_tokens_write_back_failed", error=type(exc).__name__)

    async def _flush_pending(self, shared: Shared) -> None:
        """A refresh whose set the store missed (it failed mid-refresh): the store gets it now."""
        assert self._pending is not None
        _, new = self._pending
        ours = shared.raw is None or shared.record is None or shared.refresh_token in self._rotated_away
        try:
            written = ours and await self.shared.replace(shared.raw, new)
        except StoreError:
            return
        if written:
            self._pending, self._shared_raw = None, new
            log.warning("strava_shared_tokens_written_back", pending=True)
        elif shared.record is not None or shared.ended is not None:
            self._pending = None  # something newer than ours (a new grant) is there: it wins
            await self._take(shared)

    def _credentials(self) -> bool:
        return bool(self.settings.client_id and self.settings.client_secret)

    def _apply(self, record: dict[str, Any], source: str) -> None:
        self._refresh_token = record["refresh_token"]
        self._access_token = record.get("access_token")
        self._expires_at = record.get("expires_at")
        if record.get("athlete_id") is not None:
            self._athlete_id = record["athlete_id"]
        if record.get("scope") is not None:
            self._scope = record["scope"]
        self._source = source
        self._set_version += 1
        self.redactor.add_secret(self._refresh_token)
        self.redactor.add_secret(self._access_token)

    def _publish(self) -> None:
        self.metrics.auth_ok.set(1 if self._auth_ok else 0)
        self.metrics.token_expires_at.set(self._expires_at or 0)

    # ---- the request path ----

    @property
    def connected(self) -> bool:
        """A grant is held (it may still turn out refused): credentials and a refresh token."""
        return self._refresh_token is not None and self._credentials()

    @property
    def athlete_id(self) -> int | None:
        return self._athlete_id

    def learn_athlete(self, athlete_id: Any) -> None:
        """Whose grant this is, seen in an API answer: a refresh never says (only a code exchange does).

        Webhook events are checked against it. Kept in memory and saved with the next token set.
        """
        if self._athlete_id is None and is_int(athlete_id) and athlete_id > 0:
            self._athlete_id = athlete_id

    def _fresh(self, margin: float = REFRESH_MARGIN_S) -> bool:
        return (
            self._access_token is not None and self._expires_at is not None and self._expires_at - self.clock() > margin
        )

    async def access_token(self) -> str:
        """A valid access token, refreshed (once, for all concurrent callers) when it is about to expire."""
        if self._fresh() and self._access_token is not None:
            return self._access_token
        held = self._access_token
        try:
            return await self._shared_refresh()
        except (UpstreamUnavailable, UpstreamBadResponse, CredentialsRejected):
            # Strava's token endpoint is down (or refuses our credentials), but the token we hold
            # still works for a while.
            if held is not None and held == self._access_token and self._fresh(STILL_USABLE_S):
                return held
            raise

    async def refresh_after_401(self, rejected_access_token: str) -> str:
        """Strava refused `rejected_access_token`: refresh, unless someone already replaced it."""
        if self._access_token is not None and self._access_token != rejected_access_token and self._fresh(0):
            return self._access_token
        return await self._shared_refresh()

    async def fresh_refresh(self) -> str:
        """A refresh that starts after this call, shared with concurrent callers: proof the grant is alive now.

        A refresh already in flight was sent before whatever made the caller ask (a deauthorization
        event), so its answer proves nothing about now: wait for it to end, then take the next one.
        """
        arrived = self._refreshes_started
        while True:
            task = self._inflight
            if task is None or task.done():
                task = self._start_refresh(check=True)
            # An ordinary refresh may be answered by another instance's set, without asking Strava.
            if self._inflight_number > arrived and self._inflight_check:
                return await asyncio.shield(task)
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _shared_refresh(self) -> str:
        task = self._inflight
        if task is None or task.done():
            task = self._start_refresh()
        # shield: a caller that gives up must not cancel the refresh the others wait for.
        return await asyncio.shield(task)

    def _start_refresh(self, check: bool = False) -> asyncio.Task[str]:
        self._refreshes_started += 1
        self._inflight_number = self._refreshes_started
        self._inflight_check = check
        task = self._inflight = asyncio.create_task(self._refresh(check), name="strava-token-refresh")
        # Every waiter may have given up: retrieve the outcome so asyncio does not log it as lost.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _refresh(self, check: bool) -> str:
        """One refresh for every waiting caller; with `check`, Strava is always asked (a grant check)."""
        if not self._credentials():
            raise NotConfigured()
        held = self._access_token
        # Another instance may have refreshed already: look first (a read, without the lock).
        await self._take(await self._read_shared())
        if not check and self._renewed(held):
            return self._renewed(held)
        try:
            async with self.shared.lock():
                shared = await self._read_shared()  # again: the lock's last holder may have just refreshed
                await self._take(shared)
                if not check and self._renewed(held):
                    return self._renewed(held)
                return await self._refresh_locked(shared.raw)
        except LockUnavailable:
            # Held elsewhere for the whole wait: that instance's refresh is what we need.
            await self._take(await self._read_shared())
            if not check and self._renewed(held):
                return self._renewed(held)
            raise TokenRefreshPostponed("Another instance is refreshing the Strava token; try again shortly.") from None
        except StoreError:
            raise self._store_down() from None

    def _renewed(self, held: str | None) -> str:
        """The access token, if the store gave us another, fresh one; else ""."""
        token = self._access_token
        return token if token is not None and token != held and self._fresh() else ""

    async def _read_shared(self) -> Shared:
        try:
            return await self.shared.read()
        except StoreError:
            raise self._store_down() from None

    def _store_down(self) -> TokenRefreshPostponed:
        # Refreshing without the lock could fork the token chain: the data goes stale instead.
        log.warning("strava_token_refresh_postponed", reason="store unreachable")
        return TokenRefreshPostponed("The shared store is unreachable, so the Strava token is not refreshed now.")

    async def _refresh_locked(self, replaces: bytes | None) -> str:
        """Under the lock: ask Strava, share the new set (compare-and-set on `replaces`), then use it."""
        if self._refresh_token is None:
            # After a revocation or a disconnect, say so (and where to re-authorize).
            raise NotConfigured(self._last_error if self._ended else None)
        token = self._refresh_token
        rejected = self._rejected
        if rejected is not None and rejected[0] == token and self.clock() - rejected[1] < REJECTED_RETRY_S:
            raise CredentialsRejected(self._last_error)
        generation = self._generation
        source = self._source or "environment"
        try:
            payload = await self._post_token({"grant_type": "refresh_token", "refresh_token": token}, "refresh")
        except AuthRejected:
            fallback = self.settings.refresh_token
            if self._env_fallback_used or not fallback or fallback == token or generation != self._generation:
                return await self._refused(generation, replaces, token)
            # The persisted token is dead (a sandbox simulator that restarted, or an operator who
            # put a new token in the environment): the environment's token gets one try.
            self._env_fallback_used = True
            log.warning("strava_token_file_rejected_trying_environment")
            try:
                payload = await self._post_token({"grant_type": "refresh_token", "refresh_token": fallback}, "refresh")
            except AuthRejected:
                # Both are refused: neither may come back from the store as "a set we had not seen".
                return await self._refused(generation, replaces, token, fallback)
            token, source = fallback, "environment"
        if not await self._accept(payload, source, generation, replaces, token):
            # exchange_code() or end_grant() ran meanwhile; their outcome is the newer truth.
            if self._access_token is not None and self._fresh(0):
                return self._access_token
            raise NotConfigured()
        self.metrics.token_refreshes.labels("success").inc()
        log.info("strava_token_refreshed", expires_at=iso_utc(self._expires_at), athlete_id=self._athlete_id)
        assert self._access_token is not None
        return self._access_token

    async def _refused(self, generation: int, replaces: bytes | None, *presented: str) -> str:
        """Strava refused every token `presented`: the grant is over, unless a newer one arrived meanwhile."""
        if generation != self._generation:
            # exchange_code() ran during the request: its grant is the truth, and it is not refused.
            if self._access_token is not None and self._fresh(0):
                return self._access_token
            raise NotConfigured(self._last_error if self._ended else None)
        message = self._last_error
        try:
            current = await self.shared.read()
        except StoreError:
            current = Shared(replaces)
        if current.record is not None and current.refresh_token not in (*presented, *self._rotated_away):
            # A set we had not seen (a new grant written meanwhile): that one, not ours, is the truth.
            await self._adopt(current)
            if self._access_token is not None and self._fresh(0):
                return self._access_token
            raise TokenRefreshPostponed()
        # The store still holds the refused set: a tombstone in its place tells every instance.
        await self.end_grant("revoked", message, replaces=current.raw if current.raw == replaces else None)
        raise AuthRejected(message)

    async def _post_token(self, form: dict[str, str], purpose: str) -> dict[str, Any]:
        """POST to Strava's token endpoint; the parsed token response, or an `UpstreamError`."""
        data = {"client_id": self.settings.client_id or "", "client_secret": self.settings.client_secret or "", **form}
        url = f"{self.settings.oauth_url}/token"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                response = await self.http.post(url, data=data, headers={"Accept": "application/json"})
        except (TimeoutError, httpx.TimeoutException) as exc:
            self._failed(purpose, "timeout", started, f"token endpoint timed out ({type(exc).__name__})")
            raise UpstreamUnavailable("Strava's token endpoint did not answer in time.") from None
        except httpx.HTTPError as exc:
            self._failed(purpose, "error", started, f"token endpoint unreachable ({type(exc).__name__})")
            raise UpstreamUnavailable("Strava's token endpoint is unreachable.") from None
        status = response.status_code
        if status in (400, 401):
            field = _rejected_field(response)
            self.metrics.observe_request("token", status, time.perf_counter() - started)
            if purpose == "refresh":
                self._auth_ok = False
                self._publish()
                self.metrics.token_refreshes.labels("rejected").inc()
            if field in CLIENT_FIELDS:
                # Our configuration is wrong, not the owner's grant: keep everything, say what to fix.
                if purpose == "refresh":
                    self._rejected = (form["refresh_token"], self.clock())
                self._credentials_rejected = True
                self._auth_ok = False
                self._publish()
                self._last_error = (
                    f"Strava rejected the application's credentials ({field}): "
                    "check STRAVA_CLIENT_ID/STRAVA_CLIENT_SECRET."
                )
                log.warning("strava_token_rejected", purpose=purpose, status=status, field=field)
                raise CredentialsRejected(self._last_error)
            if purpose == "refresh" and self._file_problem and form["refresh_token"] == self.settings.refresh_token:
                # Say why the environment's token was used at all: the operator's fix differs.
                self._last_error = (
                    f"The saved token file was {self._file_problem}, and Strava rejected STRAVA_REFRESH_TOKEN; "
                    f"re-authorize at {AUTH_START_PATH}."
                )
            elif purpose == "refresh":
                self._last_error = f"Strava rejected the refresh token; re-authorize at {AUTH_START_PATH}."
            else:
                self._last_error = f"Strava rejected the authorization code; start again at {AUTH_START_PATH}."
            log.warning("strava_token_rejected", purpose=purpose, status=status, field=field)
            raise AuthRejected(self._last_error)
        if status != 200:
            self._failed(purpose, status, started, f"token endpoint answered {status}")
            raise UpstreamUnavailable("Strava's token endpoint failed.", status=503 if status == 503 else 502)
        try:
            payload = orjson.loads(response.content)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            access, refresh, expires_at = payload["access_token"], payload["refresh_token"], payload["expires_at"]
            if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
                raise ValueError("tokens missing")
            if not is_number(expires_at):
                raise ValueError("expires_at missing")
        except (ValueError, KeyError, TypeError):
            self._failed(purpose, status, started, "token endpoint sent an unusable response")
            raise UpstreamBadResponse("Strava's token endpoint sent an unusable response.") from None
        self.metrics.observe_request("token", status, time.perf_counter() - started)
        # Learn the secrets first: nothing below may log them in clear.
        self.redactor.add_secret(access)
        self.redactor.add_secret(refresh)
        return payload

    def _failed(self, purpose: str, status: int | str, started: float, message: str) -> None:
        duration = time.perf_counter() - started
        self.metrics.observe_request("token", status, duration)
        if purpose == "refresh":
            self.metrics.token_refreshes.labels("error").inc()
        self._last_error = message
        log.warning("strava_token_request_failed", purpose=purpose, status=status, duration_s=round(duration, 3))

    async def _accept(
        self,
        payload: dict[str, Any],
        source: str,
        generation: int,
        replaces: bytes | None = None,
        presented: str | None = None,
    ) -> bool:
        """Share and persist the new token set, then use it; False (and nothing done) if it is outdated.

        `presented` is the refresh token Strava just rotated away; None for a code exchange (a new
        grant, which replaces whatever the store holds).
        """
        athlete = payload.get("athlete")
        athlete_id = athlete.get("id") if isinstance(athlete, dict) else None
        if not is_int(athlete_id):
            athlete_id = self._athlete_id
        record = {
            "access_token": payload["access_token"],
            "refresh_token": payload["refresh_token"],
            "expires_at": int(payload["expires_at"]),
            "athlete_id": athlete_id,
            "scope": payload.get("scope") if isinstance(payload.get("scope"), str) else self._scope,
            "saved_at": iso_utc(self.clock()),
        }
        raw = encode(record)
        async with self._file_lock:
            if generation != self._generation:
                return False
            await self._share(replaces, raw, presented)  # before it is used: the store is everyone's truth
            error: str | None = None
            try:
                await asyncio.to_thread(write_token_file, self.settings.token_file, raw)
            except OSError as exc:
                # Strava already rotated: the old token is dead, so keeping the new one in memory
                # is the only way to go on working. Say loudly that a restart would lose it.
                path = str(self.settings.token_file)
                log.error("strava_token_file_write_failed", path=path, error=type(exc).__name__)
                error = "The new Strava token set could not be saved; a restart needs re-authorization."
            if generation != self._generation:
                return False  # end_grant() ran during the write; it deletes the file once we let go
            self._last_error = error
            if error is None:
                self._file_problem = None
            previous = self._refresh_token
            self._apply(record, source)
            if previous is not None and previous != self._refresh_token:
                self._rotated_away.append(previous)
            self._verified, self._record_raw = True, raw
            self._auth_ok = True
            self._ended = None
            self._credentials_rejected = False
            self._rejected = None
            self._last_refresh_at = self.clock()
            self._publish()
        return True

    async def _share(self, replaces: bytes | None, raw: bytes, presented: str | None) -> None:
        try:
            if presented is None:
                await self.shared.put(raw)
                written = True
            else:
                written = await self.shared.replace(replaces, raw)
                if not written:
                    # Someone wrote meanwhile (the lock lapsed, or a write-back raced us): if what is
                    # there now is the set we just rotated away, or nothing, ours goes in its place.
                    current = await self.shared.read()
                    if current.raw is None or current.refresh_token in (presented, *self._rotated_away):
                        written = await self.shared.replace(current.raw, raw)
                    if not written:
                        log.error("strava_shared_tokens_conflict", note="kept the new set in this instance only")
        except StoreError as exc:
            # Strava already rotated: the new set is the only working one. Keep it, and give it to
            # the store as soon as it answers again (the reconnect hook).
            self._pending = (replaces, raw)
            log.error("strava_shared_tokens_write_failed", error=type(exc).__name__)
            return
        if written:
            self._pending, self._shared_raw = None, raw

    # ---- OAuth callback and deauthorization ----

    async def exchange_code(self, code: str, scope: str | None = None) -> dict[str, Any]:
        """Redeem an authorization code from the OAuth callback; returns Strava's athlete summary (or {})."""
        if not self._credentials():
            raise NotConfigured()
        self.redactor.add_secret(code)
        payload = await self._post_token({"grant_type": "authorization_code", "code": code}, "exchange")
        if scope is not None:
            payload = {**payload, "scope": scope}
        self._generation += 1  # a refresh in flight now would overwrite this newer set
        self._env_fallback_used = True  # a fresh authorization beats the environment's old token
        await self._accept(payload, "oauth", self._generation)  # replaces the store's set (or tombstone)
        log.info("strava_authorized", athlete_id=self._athlete_id, scope=self._scope)
        athlete = payload.get("athlete")
        return dict(athlete) if isinstance(athlete, dict) else {}

    async def end_grant(
        self, reason: str, message: str | None, *, everywhere: bool = True, replaces: bytes | None = None
    ) -> None:
        """The grant is over ("revoked" or "disconnected"): tokens out of memory, data purged, file deleted.

        With `everywhere`, a tombstone goes into the store before the data is purged: in place of
        the set `replaces` (a revocation), or whatever is there (a disconnect), so no instance uses
        or revives the set.
        """
        # Memory first, before anything awaits: a request arriving meanwhile must not use them.
        self._generation += 1
        self._access_token = self._refresh_token = None
        self._expires_at = None
        self._athlete_id = None
        self._scope = None
        self._source = None
        self._auth_ok = False
        self._ended = reason
        self._verified, self._record_raw, self._pending = False, None, None
        self._env_fallback_used = True  # the environment's token belongs to the ended grant too
        if message is not None:
            self._last_error = message
        self._publish()
        log.warning("strava_grant_ended", reason=reason)
        if everywhere and (reason == "disconnected" or replaces is not None):
            # Before the hook announces the purge: told, the others re-read the store, and must
            # find the tombstone there, not the ended set (one holding an older set would adopt it).
            dead = tombstone(reason, iso_utc(self.clock()))
            try:
                if reason == "disconnected":
                    await self.shared.put(dead)
                else:
                    await self.shared.replace(replaces, dead)
            except StoreError as exc:
                log.warning("strava_shared_tombstone_failed", error=type(exc).__name__)
        self._shared_raw = None
        hook = self.on_revoked
        if hook is not None:
            try:
                await hook(everywhere)
            except Exception as exc:  # the file must go all the same
                log.error("strava_purge_failed", error=type(exc).__name__)
        async with self._file_lock:
            await asyncio.to_thread(_delete_token_file, self.settings.token_file)
        log.warning("strava_tokens_forgotten")

    async def disconnect(self) -> bool:
        """Admin: end the grant here and revoke it at Strava; True if Strava confirmed the revocation.

        A refresh in flight ends first, so the token revoked is the newest one: Strava ignores a
        rotated-away token, which would leave the grant alive. Dropped here before Strava is asked,
        so nothing of the owner's is served while the request is on its way.
        """
        await self._settle()
        try:
            # Another instance may be refreshing: wait for it and take its set, the one to revoke.
            async with self.shared.lock():
                await self._take(await self.shared.read())
                return await self._disconnect_now()
        except StoreError:  # the store is down or busy: disconnect what this instance holds
            return await self._disconnect_now()

    async def _disconnect_now(self) -> bool:
        token: str | None = self._refresh_token
        hint = "refresh_token"
        if token is None:
            token, hint = self._access_token, "access_token"
        await self.end_grant("disconnected", ENDED_MESSAGES["disconnected"])
        if token is None or not self._credentials():
            return False
        return await self._revoke_at_strava(token, hint)

    async def _revoke_at_strava(self, token: str, hint: str) -> bool:
        """POST oauth/revoke (RFC 7009): HTTP Basic with the client credentials, the token in the form body."""
        url = f"{self.settings.oauth_url}/revoke"
        auth = httpx.BasicAuth(self.settings.client_id or "", self.settings.client_secret or "")
        form = {"token": token, "token_type_hint": hint}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                response = await self.http.post(url, data=form, auth=auth, headers={"Accept": "application/json"})
        except (TimeoutError, httpx.HTTPError) as exc:
            self.metrics.observe_request("revoke", "error", time.perf_counter() - started)
            log.warning("strava_revoke_failed", error=type(exc).__name__)
            return False
        self.metrics.observe_request("revoke", response.status_code, time.perf_counter() - started)
        if response.status_code != 200:
            log.warning("strava_revoke_failed", status=response.status_code, field=_rejected_field(response))
            return False
        log.info("strava_revoked_at_strava", token_type=hint)
        return True

    async def _settle(self) -> None:
        """Wait (bounded) for a refresh in flight, whatever its outcome."""
        task = self._inflight
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_seconds + 1)

    async def aclose(self) -> None:
        """Let a refresh in flight finish its write, so a rotated token is not lost at shutdown."""
        await self._settle()

    # ---- reporting ----

    def status(self) -> dict[str, Any]:
        return {
            "configured": self.connected,
            "auth_ok": self._auth_ok,
            "access_token_expires_at": iso_utc(self._expires_at),
            "athlete_id": self._athlete_id,
            "scope": self._scope,
            "last_refresh_at": iso_utc(self._last_refresh_at),
            "last_error": self._last_error,
            "token_source": self._source,
            "ended": self._ended,
            "credentials_rejected": self._credentials_rejected,
        }
