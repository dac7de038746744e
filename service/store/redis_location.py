"""A Redis URL taken apart: where the server is (for logs and health) and what must never be shown."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("redis", "rediss")


@dataclass(frozen=True, slots=True)
class RedisLocation:
    host: str
    port: int
    tls: bool
    secrets: tuple[str, ...]  # the URL itself, its password (raw and decoded), a password query value

    @classmethod
    def parse(cls, url: str) -> RedisLocation:
        # Messages name the part that is wrong, never echo the URL (it may hold a password).
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError("REDIS_URL must start with redis:// or rediss://")
        try:
            host, port = parts.hostname, parts.port or 6379
        except ValueError:
            raise ValueError("REDIS_URL has an invalid port") from None
        if not host:
            raise ValueError("REDIS_URL has no host")
        secrets = [url]
        if parts.password:
            secrets += [parts.password, unquote(parts.password)]
        for value in parse_qs(parts.query).get("password", []):
            secrets += [value]
        return cls(host, port, parts.scheme == "rediss", tuple(s for s in dict.fromkeys(secrets) if s))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def scrub(self, text: str) -> str:
        # Longest first, so the URL goes as a whole before its password is looked for.
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text
