"""The redaction processor: secrets never leave the process through a log line.

Two nets, both cheap: values under secret-looking keys (at any depth) are replaced, and
query-string values of secret names inside strings are replaced. Known secret values (the
configured ones, and tokens learned at run time) are also scrubbed from every string.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

REDACTED = "[REDACTED]"
SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "client_secret",
        "code",
        "password",
        "secret",
        "token",
        "verify_token",
        "hub.verify_token",
        "cookie",
        "set-cookie",
        "state",
        "metrics_bearer_token",
    }
)
_QUERY_SECRET = re.compile(
    r"(?i)\b(access_token|refresh_token|client_secret|code|password|token|api_key|apikey|state"
    r"|hub\.verify_token|verify_token|secret)=([^&\s\"']*)"
)
_BEARER = re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+")
_MAX_KNOWN = 64
_MEMO_MAX = 1024  # distinct strings remembered by `scrub`; paths and user agents repeat all day
_MEMO_LEN = 512  # longer strings are scrubbed every time, not remembered


class Redactor:
    """A structlog processor. `add_secret` teaches it a value to scrub wherever it appears."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self._known: deque[str] = deque(maxlen=_MAX_KNOWN)
        # Scrubbed results by their raw input: a str, a (path, query) pair or a header's bytes;
        # keys of different types never collide, so one bounded dict serves all three.
        self._memo: dict[str | bytes | tuple[str, bytes], str] = {}
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, value: str | None) -> None:
        # Very short values would scrub innocent text and protect nothing.
        if value and len(value) >= 6 and value not in self._known:
            self._known.append(value)
            self._memo.clear()  # remembered results did not know this secret

    def _remember(self, key: str | bytes | tuple[str, bytes], size: int, clean: str) -> str:
        if size <= _MEMO_LEN:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[key] = clean
        return clean

    def scrub(self, text: str) -> str:
        done = self._memo.get(text)
        if done is None:
            done = self._remember(text, len(text), self._scrub(text))
        return done

    def scrub_target(self, path: str, query: bytes, limit: int) -> str:
        """A request's path and query string as one scrubbed line of at most `limit` characters.

        Memoized on the raw pieces, so the common case is one lookup. Scrubbed before it is cut,
        so a secret cut in two still matches.
        """
        key = (path, query)
        done = self._memo.get(key)
        if done is None:
            text = f"{path}?{query.decode('latin-1')}" if query else path
            done = self._remember(key, len(path) + len(query), self._scrub(text))
        return done[:limit]

    def scrub_header(self, value: bytes, limit: int) -> str:
        """A raw header value (a user agent, say) as scrubbed text of at most `limit` characters."""
        done = self._memo.get(value)
        if done is None:
            done = self._remember(value, len(value), self._scrub(value.decode("latin-1")))
        return done[:limit]

    def _scrub(self, text: str) -> str:
        if "=" in text:
            text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        if "earer" in text:
            text = _BEARER.sub(f"Bearer {REDACTED}", text)
        for secret in self._known:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _clean(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if depth > 4:
            return value
        if isinstance(value, dict):
            return {
                k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS else self._clean(v, depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._clean(v, depth + 1) for v in value]
        return value

    def __call__(self, logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key, value in event_dict.items():
            if key.lower() in SECRET_KEYS:
                event_dict[key] = REDACTED
            elif isinstance(value, str):
                event_dict[key] = self.scrub(value)
            elif isinstance(value, dict | list | tuple):
                event_dict[key] = self._clean(value, 0)
        return event_dict
