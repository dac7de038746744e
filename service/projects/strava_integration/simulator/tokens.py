"""OAuth token bookkeeping: one refresh token, a few access tokens, single-use authorization codes."""

import secrets
from collections import OrderedDict
from typing import Any

ACCESS_TOKENS_KEPT = 5
CODES_KEPT = 20
CODE_TTL_S = 600


def _new_token() -> str:
    # Same look as Strava's: 40 lowercase hex characters.
    return secrets.token_hex(20)


class TokenStore:
    def __init__(self, initial_refresh_token: str, access_token_ttl_s: int) -> None:
        self.refresh_token: str | None = initial_refresh_token
        self._ttl_s = access_token_ttl_s
        # token -> expires_at; insertion order lets us drop the oldest ones.
        self._access: OrderedDict[str, int] = OrderedDict()
        self._codes: OrderedDict[str, float] = OrderedDict()

    def _issue(self, now: float) -> dict[str, Any]:
        access = _new_token()
        expires_at = int(now) + self._ttl_s
        self._access[access] = expires_at
        while len(self._access) > ACCESS_TOKENS_KEPT:
            self._access.popitem(last=False)
        # Always rotate: the previous refresh token stops working the moment a new one exists.
        self.refresh_token = _new_token()
        return {
            "token_type": "Bearer",
            "access_token": access,
            "expires_at": expires_at,
            "expires_in": expires_at - int(now),
            "refresh_token": self.refresh_token,
        }

    def refresh(self, refresh_token: str, now: float) -> dict[str, Any] | None:
        if self.refresh_token is None or refresh_token != self.refresh_token:
            return None
        return self._issue(now)

    def new_code(self, now: float) -> str:
        code = _new_token()
        self._codes[code] = now + CODE_TTL_S
        while len(self._codes) > CODES_KEPT:
            self._codes.popitem(last=False)
        return code

    def redeem_code(self, code: str, now: float) -> dict[str, Any] | None:
        expires_at = self._codes.pop(code, None)  # pop: a code works once, even if it has expired
        if expires_at is None or now >= expires_at:
            return None
        return self._issue(now)

    def access_valid(self, token: str, now: float) -> bool:
        expires_at = self._access.get(token)
        return expires_at is not None and now < expires_at

    def expire_access(self) -> None:
        for token in self._access:
            self._access[token] = 0

    def revoke_all(self) -> None:
        self.refresh_token = None
        self._access.clear()
        self._codes.clear()
