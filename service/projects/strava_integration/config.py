"""strava-integration settings: every STRAVA_* variable, read once at start-up.

Missing credentials are not an error: the project then reports itself unconfigured. Malformed
values are, and the `ConfigError` names the variable, never the value (it may be a secret).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.projects.strava_integration.simulator.config import SimulatorConfig
from service.settings import ConfigError, Settings, env_float, env_int, env_str

DEFAULT_API_URL = "https://www.strava.com/api/v3"
DEFAULT_OAUTH_URL = "https://www.strava.com/oauth"
SANDBOX_ADMIN_API_KEY = "sandbox-admin-key"  # only unlocks the sandbox's admin routes
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"  # noqa: S105 - only valid against the simulator
ADMIN_KEY_MIN_LEN = 16
MIB = 1024 * 1024

# What README documents; a test checks that the two agree.
DOCUMENTED: tuple[str, ...] = (
    "STRAVA_CLIENT_ID",
    "STRAVA_CLIENT_SECRET",
    "STRAVA_REFRESH_TOKEN",
    "STRAVA_API_URL",
    "STRAVA_OAUTH_URL",
    "STRAVA_WEBHOOK_VERIFY_TOKEN",
    "STRAVA_WEBHOOK_SUBSCRIPTION_ID",
    "STRAVA_ADMIN_API_KEY",
    "STRAVA_TOKEN_FILE",
    "STRAVA_CACHE_TTL_SECONDS",
    "STRAVA_CACHE_STALE_SECONDS",
    "STRAVA_CACHE_MAX_ENTRIES",
    "STRAVA_CACHE_MAX_BYTES",
    "STRAVA_REQUEST_TIMEOUT_SECONDS",
    "STRAVA_CONNECT_TIMEOUT_SECONDS",
    "STRAVA_BUDGET_RESERVE",
)

# Strava's client ids are digits; the simulator's is a short slug. Either way: no spaces, no URL syntax.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: survives a form body and a header


@dataclass(frozen=True, slots=True)
class StravaSettings:
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)  # the initial token, from the environment
    api_url: str = DEFAULT_API_URL
    oauth_url: str = DEFAULT_OAUTH_URL
    webhook_verify_token: str | None = field(default=None, repr=False)
    admin_api_key: str | None = field(default=None, repr=False)
    token_file: Path = Path("data/strava/tokens.json")
    has_token_file: bool = False  # checked once at parse time, so `configured` does no I/O
    cache_ttl_seconds: int = 300
    cache_stale_seconds: int = 86400
    cache_max_entries: int = 512
    cache_max_bytes: int = 16 * MIB
    request_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 3.0
    budget_reserve: int = 10
    webhook_subscription_id: int | None = None
    sandbox: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.client_id and self.client_secret and (self.refresh_token or self.has_token_file))

    def secrets(self) -> tuple[str, ...]:
        """Every secret value set, for the log redactor."""
        values = (self.client_secret, self.refresh_token, self.webhook_verify_token, self.admin_api_key)
        return tuple(v for v in values if v)


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env_str(env, name, default, max_len=512) or default
    if not value.startswith(("http://", "https://")) or any(c in value for c in " ?#") or len(value) < 9:
        raise ConfigError(name, "an http:// or https:// URL without query or fragment")
    return value.rstrip("/")


def _token(env: Mapping[str, str], name: str, default: str | None, *, min_len: int = 1) -> str | None:
    value = env_str(env, name, max_len=512)
    if value is None:
        return default
    if len(value) < min_len or not _TOKEN.fullmatch(value):
        raise ConfigError(name, f"at least {min_len} printable characters without spaces")
    return value


def _client_id(env: Mapping[str, str], default: str | None) -> str | None:
    value = env_str(env, "STRAVA_CLIENT_ID", max_len=64)
    if value is None:
        return default
    if not _CLIENT_ID.fullmatch(value):
        raise ConfigError("STRAVA_CLIENT_ID", "the numeric client id of the Strava application")
    return value


def _subscription_id(env: Mapping[str, str]) -> int | None:
    if env_str(env, "STRAVA_WEBHOOK_SUBSCRIPTION_ID") is None:
        return None
    return env_int(env, "STRAVA_WEBHOOK_SUBSCRIPTION_ID", 0, minimum=1, maximum=2**63 - 1)


def parse_settings(env: Mapping[str, str], settings: Settings) -> StravaSettings:
    sandbox = settings.sandbox
    sim = SimulatorConfig() if sandbox else None
    token_file_default = settings.data_dir / "strava" / ("sandbox-tokens.json" if sandbox else "tokens.json")
    token_file = Path(env_str(env, "STRAVA_TOKEN_FILE", max_len=1024) or token_file_default)
    try:
        has_token_file = token_file.is_file()
    except OSError:  # e.g. a parent directory we may not read: the token manager reports it later
        has_token_file = False
    cache_ttl = env_int(env, "STRAVA_CACHE_TTL_SECONDS", 300, minimum=5, maximum=86400)
    client_id = _client_id(env, sim.client_id if sim else None)
    client_secret = _token(env, "STRAVA_CLIENT_SECRET", sim.client_secret if sim else None)
    # Half a credential is a typo, not "unconfigured": stop rather than run without Strava.
    if client_secret and not client_id:
        raise ConfigError("STRAVA_CLIENT_ID", "the Strava application id (required when STRAVA_CLIENT_SECRET is set)")
    if client_id and not client_secret:
        raise ConfigError(
            "STRAVA_CLIENT_SECRET", "the Strava application secret (required when STRAVA_CLIENT_ID is set)"
        )
    return StravaSettings(
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=_token(env, "STRAVA_REFRESH_TOKEN", sim.initial_refresh_token if sim else None),
        api_url=_url(env, "STRAVA_API_URL", DEFAULT_API_URL),
        oauth_url=_url(env, "STRAVA_OAUTH_URL", DEFAULT_OAUTH_URL),
        webhook_verify_token=_token(env, "STRAVA_WEBHOOK_VERIFY_TOKEN", SANDBOX_VERIFY_TOKEN if sandbox else None),
        admin_api_key=_token(
            env, "STRAVA_ADMIN_API_KEY", SANDBOX_ADMIN_API_KEY if sandbox else None, min_len=ADMIN_KEY_MIN_LEN
        ),
        token_file=token_file,
        has_token_file=has_token_file,
        cache_ttl_seconds=cache_ttl,
        cache_stale_seconds=env_int(env, "STRAVA_CACHE_STALE_SECONDS", 86400, minimum=0, maximum=30 * 86400),
        cache_max_entries=env_int(env, "STRAVA_CACHE_MAX_ENTRIES", 512, minimum=1, maximum=1_000_000),
        cache_max_bytes=env_int(env, "STRAVA_CACHE_MAX_BYTES", 16 * MIB, minimum=64 * 1024, maximum=4096 * MIB),
        request_timeout_seconds=env_float(env, "STRAVA_REQUEST_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=120),
        connect_timeout_seconds=env_float(env, "STRAVA_CONNECT_TIMEOUT_SECONDS", 3.0, minimum=0.1, maximum=60),
        budget_reserve=env_int(env, "STRAVA_BUDGET_RESERVE", 10, minimum=0, maximum=10_000),
        webhook_subscription_id=_subscription_id(env),
        sandbox=sandbox,
    )
