"""The owner's OAuth connect flow: how an operator recovers when the refresh token is lost.

`/auth/start` (admin key) redirects to Strava's authorize page with a signed, expiring,
single-use `state`; `/auth/callback` checks it, exchanges the code and stores the tokens.
Single use holds across instances: `redeem` claims the state in the store
(`strava-integration:oauth-state:<payload>`; the memory store in embedded mode), and refuses with
a 503 rather than accept a state it could not claim. The state stays unclaimed then, so the same
callback succeeds once the store answers again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from urllib.parse import urlencode

from service.errors import ApiError
from service.store import Store, StoreError

STATE_TTL_S = 600
SCOPE = "read,activity:read"
_MAX_STATE = 200
STORE_RETRY_AFTER_S = 5


class StateSigner:
    def __init__(self, secret: str, clock: Callable[[], float], store: Store) -> None:
        self._key = hashlib.sha256(b"strava-oauth-state\x00" + secret.encode()).digest()
        self.clock = clock
        self.store = store

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()[:40]

    def issue(self) -> str:
        payload = f"{int(self.clock()) + STATE_TTL_S}.{os.urandom(12).hex()}"
        return f"{payload}.{self._sign(payload)}"

    async def redeem(self, state: str | None) -> None:
        """Raises a 400 unless the state is ours, unexpired and unused on any instance (then it is used).

        A 503 when the store cannot say whether another instance took it: better a retry than a replay.
        """
        payload = self._check(state)
        try:
            claimed = await self.store.set_if_absent(f"strava-integration:oauth-state:{payload}", b"1", STATE_TTL_S)
        except StoreError:
            raise ApiError(
                503,
                "store_unavailable",
                "The shared store did not answer, so the OAuth state cannot be checked; try again shortly.",
                headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
            ) from None
        if not claimed:
            raise ApiError(400, "invalid_state", "The OAuth state was already used; start again.", parameter="state")

    def _check(self, state: str | None) -> str:
        """The state's payload, once it proved ours and unexpired; else a 400."""
        if not state or len(state) > _MAX_STATE or state.count(".") != 2:
            raise ApiError(400, "invalid_state", "The OAuth state is missing or malformed.", parameter="state")
        payload, _, signature = state.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise ApiError(400, "invalid_state", "The OAuth state is not ours.", parameter="state")
        if int(payload.split(".", 1)[0]) < self.clock():
            raise ApiError(400, "invalid_state", "The OAuth state has expired; start again.", parameter="state")
        return payload


def authorize_url(oauth_url: str, client_id: str, redirect_uri: str, state: str) -> str:
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "approval_prompt": "force",
            "scope": SCOPE,
            "state": state,
        }
    )
    return f"{oauth_url}/authorize?{query}"


def check_scope(granted: str | None) -> None:
    scopes = set((granted or "").split(","))
    if "activity:read" not in scopes and "activity:read_all" not in scopes:
        raise ApiError(
            400, "insufficient_scope", "Strava did not grant activity:read; authorize again and keep it checked."
        )
