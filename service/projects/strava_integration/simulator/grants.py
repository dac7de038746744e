"""The athlete's grant to the application: its refresh token, access tokens, codes, and what died.

A grant starts with the initial refresh token (or a code exchange) and ends when the athlete
revokes the app (or the app revokes a token). Every token the grant ever issued and that no
longer works is remembered (boundedly), so the simulator can tell a client that presents a
rotated-away or revoked token from one that presents garbage.
"""

import secrets
from collections import OrderedDict
from typing import Any, Literal

ACCESS_TOKENS_KEPT = 256  # live ones; several service instances may each hold their own
DEAD_TOKENS_KEPT = 10_000
CODES_KEPT = 20
CODE_TTL_S = 600
AccessState = Literal["live", "dead", "unknown"]


def _new_token() -> str:
    # Same look as Strava's: 40 lowercase hex characters.
    return secrets.token_hex(20)


def _remember(tokens: "OrderedDict[str, None]", token: str) -> None:
    tokens[token] = None
    tokens.move_to_end(token)
    while len(tokens) > DEAD_TOKENS_KEPT:
        tokens.popitem(last=False)


class GrantStore:
    def __init__(self, initial_refresh_token: str, access_token_ttl_s: int) -> None:
        self.refresh_token: str | None = initial_refresh_token
        self.number = 1  # counts grants: a code exchange after a revocation starts the next one
        self._ttl_s = access_token_ttl_s
        # token -> expires_at; insertion order lets us drop the oldest ones.
        self._access: OrderedDict[str, int] = OrderedDict()
        self._codes: OrderedDict[str, float] = OrderedDict()
        self._dead_refresh: OrderedDict[str, None] = OrderedDict()
        self._dead_access: OrderedDict[str, None] = OrderedDict()

    @property
    def alive(self) -> bool:
        return self.refresh_token is not None

    def _issue(self, now: float) -> dict[str, Any]:
        for token, expires_at in list(self._access.items()):
            if expires_at <= now:
                self._retire_access(token)
        access = _new_token()
        expires_at = int(now) + self._ttl_s
        self._access[access] = expires_at
        while len(self._access) > ACCESS_TOKENS_KEPT:
            self._retire_access(next(iter(self._access)))
        # Always rotate: the previous refresh token stops working the moment a new one exists.
        if self.refresh_token is not None:
            _remember(self._dead_refresh, self.refresh_token)
        self.refresh_token = _new_token()
        return {
            "token_type": "Bearer",
            "access_token": access,
            "expires_at": expires_at,
            "expires_in": expires_at - int(now),
            "refresh_token": self.refresh_token,
        }

    def _retire_access(self, token: str) -> None:
        self._access.pop(token, None)
        _remember(self._dead_access, token)

    def refresh(self, refresh_token: str, now: float) -> dict[str, Any] | None:
        if self.refresh_token is None or refresh_token != self.refresh_token:
            return None
        return self._issue(now)

    def is_dead_refresh(self, token: str) -> bool:
        """Once valid, now rotated away or revoked (as opposed to never issued)."""
        return token in self._dead_refresh

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
        if not self.alive:
            self.number += 1  # the athlete authorized the app again after revoking it
        return self._issue(now)

    def access_state(self, token: str, now: float) -> AccessState:
        expires_at = self._access.get(token)
        if expires_at is not None:
            return "live" if now < expires_at else "dead"
        return "dead" if token in self._dead_access else "unknown"

    def expire_access(self) -> None:
        for token in self._access:
            self._access[token] = 0

    def owns(self, token: str) -> bool:
        """A token of the current grant, live or expired: what oauth/revoke accepts."""
        return self.alive and (token == self.refresh_token or token in self._access)

    def revoke_all(self) -> bool:
        """Every token of the grant dies at once; False if there was no grant to revoke."""
        was_alive = self.alive
        if self.refresh_token is not None:
            _remember(self._dead_refresh, self.refresh_token)
        self.refresh_token = None
        for token in list(self._access):
            self._retire_access(token)
        self._codes.clear()
        return was_alive
