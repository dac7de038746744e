"""The owner's token set in the shared store: one key, one refresh lock, and tombstones.

With `REDIS_URL` set, the store is the single source of truth for the token set; without it,
the in-process store plays the same part for one instance (one code path), and the token file is
what survives a restart.

- `strava-integration:tokens`: the set as JSON (the token file's format), or a tombstone
  `{"ended": "revoked" | "disconnected"}` once the grant ended, so no instance revives it by
  writing back the set it still holds (write-backs only fill an absent key).
- `strava-integration:token-refresh` (key `...:lock`): held while one instance refreshes. Its
  expiry covers two token requests (the environment fallback) and the store round trips, so it
  never lapses while its holder still works; a holder that dies frees it by expiry.
- Every write of a new set is a compare-and-set on the exact bytes it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service.store import Store, StoreLock

TOKENS_KEY = "strava-integration:tokens"
REFRESH_LOCK = "strava-integration:token-refresh"
LOCK_MARGIN_S = 5.0  # on top of two token requests' timeouts
ENDED_REASONS = ("revoked", "disconnected")


@dataclass(frozen=True, slots=True)
class Shared:
    """What the store holds: `raw` exactly (for compare-and-set), parsed as a set or a tombstone."""

    raw: bytes | None
    record: dict[str, Any] | None = None
    ended: str | None = None

    @property
    def refresh_token(self) -> str | None:
        return self.record["refresh_token"] if self.record is not None else None


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def tombstone(reason: str, at: str | None) -> bytes:
    return orjson.dumps({"ended": reason, "ended_at": at})


class SharedTokens:
    def __init__(self, store: Store, request_timeout_s: float, parse: Any) -> None:
        self.store = store
        self._parse = parse  # tokens.py's parser of the file format (refuses a set without a refresh token)
        self.lock_ttl_s = 2 * request_timeout_s + LOCK_MARGIN_S
        # Long enough for the holder's one refresh; then the waiter re-reads what it wrote.
        self.lock_wait_s = request_timeout_s + 1.0

    async def read(self) -> Shared:
        """The stored set; raises `StoreError` when the store cannot say."""
        raw = await self.store.get(TOKENS_KEY)
        if raw is None:
            return Shared(None)
        try:
            data = orjson.loads(raw)
            if isinstance(data, dict) and data.get("ended") in ENDED_REASONS:
                return Shared(raw, ended=data["ended"])
            return Shared(raw, record=self._parse(raw))
        except (ValueError, TypeError):
            return Shared(raw)  # unreadable: treated as absent, but replaced only by compare-and-set

    def lock(self) -> StoreLock:
        return self.store.lock(REFRESH_LOCK, self.lock_ttl_s, self.lock_wait_s)

    async def replace(self, expected: bytes | None, new: bytes) -> bool:
        return await self.store.compare_and_set(TOKENS_KEY, expected, new)

    async def fill(self, new: bytes) -> bool:
        """Write only into an absent key (a store that came back empty)."""
        return await self.store.set_if_absent(TOKENS_KEY, new)

    async def put(self, new: bytes) -> None:
        """A new grant (an OAuth code exchange): it replaces whatever was there."""
        await self.store.set(TOKENS_KEY, new)
