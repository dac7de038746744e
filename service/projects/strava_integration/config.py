"""strava-integration settings: every STRAVA_* variable, declared once, read once at start-up.

Missing credentials are not an error: the project then reports itself unconfigured. Malformed
values are, and the `ConfigError` names the variable, never the value (it may be a secret).
The declarations work as in `service.settings`: one `var()` per field, the rest derived.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.settings import (
    ConfigError,
    Settings,
    boolean,
    http_url,
    integer,
    matching,
    number,
    path,
    read_vars,
    secret_values,
    var,
    variables,
)

DEFAULT_API_URL = "https://www.api-v3.strava.com"  # Strava's API base from 1 June 2027
LEGACY_API_URL = "https://www.strava.com/api/v3"  # the base before; still settable
DEFAULT_OAUTH_URL = "https://www.strava.com/oauth"
# The sandbox's credentials: the simulator's defaults, written out so that production, which never
# runs the sandbox, need not import the simulator (tests/test_strava_config.py checks they agree).
SANDBOX_CLIENT_ID = "sim-client"
SANDBOX_CLIENT_SECRET = "sim-secret"  # noqa: S105 - only valid against the simulator
SANDBOX_REFRESH_TOKEN = "sim-refresh-0"  # noqa: S105 - the simulator's one valid refresh token at start
SANDBOX_ADMIN_API_KEY = "sandbox-admin-key"  # only unlocks the sandbox's admin routes
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"  # noqa: S105 - only valid against the simulator
ADMIN_KEY_MIN_LEN = 16
MIB = 1024 * 1024

# Strava's client ids are digits; the simulator's is a short slug. Either way: no spaces, no URL syntax.
_client_id = matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "the numeric client id of the Strava application")


def _token(min_len: int = 1) -> Callable[[str], str]:
    # Printable ASCII without spaces: survives a form body and a header.
    return matching(rf"[\x21-\x7e]{{{min_len},}}", f"at least {min_len} printable characters without spaces")


def _in_sandbox(value: str) -> Callable[[Settings], str | None]:
    return lambda settings: value if settings.sandbox else None


def _token_file(settings: Settings) -> Path:
    return settings.data_dir / "strava" / ("sandbox-tokens.json" if settings.sandbox else "tokens.json")


@dataclass(frozen=True, slots=True)
class StravaSettings:
    client_id: str | None = var(
        "STRAVA_CLIENT_ID", _client_id, None, "Strava API application id", default_for=_in_sandbox(SANDBOX_CLIENT_ID)
    )
    client_secret: str | None = var(
        "STRAVA_CLIENT_SECRET",
        _token(),
        None,
        "its secret (required when `STRAVA_CLIENT_ID` is set)",
        secret=True,
        default_for=_in_sandbox(SANDBOX_CLIENT_SECRET),
    )
    refresh_token: str | None = var(  # the initial token, from the environment
        "STRAVA_REFRESH_TOKEN",
        _token(),
        None,
        "the initial refresh token; once rotated, the persisted one wins",
        secret=True,
        default_for=_in_sandbox(SANDBOX_REFRESH_TOKEN),
    )
    api_url: str = var(
        "STRAVA_API_URL",
        http_url,
        DEFAULT_API_URL,
        f"API base URL (Strava's from 1 June 2027; the old `{LEGACY_API_URL}` stays settable)",
    )
    oauth_url: str = var("STRAVA_OAUTH_URL", http_url, DEFAULT_OAUTH_URL, "OAuth base URL")
    webhook_verify_token: str | None = var(
        "STRAVA_WEBHOOK_VERIFY_TOKEN",
        _token(),
        None,
        "token Strava echoes when validating the webhook subscription",
        secret=True,
        default_for=_in_sandbox(SANDBOX_VERIFY_TOKEN),
    )
    webhook_subscription_id: int | None = var(
        "STRAVA_WEBHOOK_SUBSCRIPTION_ID",
        integer(1, 2**63 - 1),
        None,
        "when set, events for other subscriptions are ignored",
    )
    admin_api_key: str | None = var(
        "STRAVA_ADMIN_API_KEY",
        _token(ADMIN_KEY_MIN_LEN),
        None,
        f"`X-API-Key` for admin routes ({ADMIN_KEY_MIN_LEN}+ characters)",
        secret=True,
        doc_default="unset (admin routes off)",
        default_for=_in_sandbox(SANDBOX_ADMIN_API_KEY),
    )
    token_file: Path = var(  # noqa: RUF009 - var() is a field(); its default, a Path, is immutable
        "STRAVA_TOKEN_FILE",
        path(),
        Path("data/strava/tokens.json"),
        "where the newest token set is persisted (0600, atomic)",
        doc_default="`$DATA_DIR/strava/tokens.json`",
        default_for=_token_file,
    )
    cache_ttl_seconds: int = var("STRAVA_CACHE_TTL_SECONDS", integer(5, 86400), 300, "how long cached data is fresh")
    cache_stale_seconds: int = var(
        "STRAVA_CACHE_STALE_SECONDS",
        integer(0, 30 * 86400),
        86400,
        "how long stale data may be served while refreshing or when Strava fails",
    )
    cache_max_entries: int = var("STRAVA_CACHE_MAX_ENTRIES", integer(1, 1_000_000), 512, "cache entry bound")
    cache_max_bytes: int = var("STRAVA_CACHE_MAX_BYTES", integer(64 * 1024, 4096 * MIB), 16 * MIB, "cache size bound")
    request_timeout_seconds: float = var(
        "STRAVA_REQUEST_TIMEOUT_SECONDS",
        number(0.1, 120),
        10.0,
        "overall deadline per upstream call, retries included",
    )
    connect_timeout_seconds: float = var(
        "STRAVA_CONNECT_TIMEOUT_SECONDS", number(0.1, 60), 3.0, "connect timeout for each upstream attempt"
    )
    budget_reserve: int = var(
        "STRAVA_BUDGET_RESERVE",
        integer(0, 10_000),
        10,
        "requests kept unused per 15-minute window (×10 per day)",  # noqa: RUF001 - README's sign
    )
    privacy_trim_meters: int = var(
        "STRAVA_PRIVACY_TRIM_METERS",
        integer(0, 5000),
        200,
        "radius of a privacy circle around each route's true start and end: no point inside one leaves the"
        " service (0 = off)",
    )
    demo_page: bool = var(
        "STRAVA_DEMO_PAGE",
        boolean,
        False,
        "serve the widget's demo page at `/api/strava-integration/demo`",
        doc_default="`false` (`true` in the sandbox)",
        default_for=lambda settings: settings.sandbox,
    )
    has_token_file: bool = False  # checked once at parse time, so `configured` does no I/O
    sandbox: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.client_id and self.client_secret and (self.refresh_token or self.has_token_file))

    def secrets(self) -> tuple[str, ...]:
        """Every secret value set, for the log redactor."""
        return secret_values(self)


# What README documents, derived from the declarations.
DOCUMENTED: tuple[str, ...] = tuple(v.name for v in variables(StravaSettings))


def _check_credentials(settings: StravaSettings) -> None:
    # Half a credential is a typo, not "unconfigured": stop rather than run without Strava.
    if settings.client_secret and not settings.client_id:
        raise ConfigError("STRAVA_CLIENT_ID", "the Strava application id (required when STRAVA_CLIENT_SECRET is set)")
    if settings.client_id and not settings.client_secret:
        raise ConfigError(
            "STRAVA_CLIENT_SECRET", "the Strava application secret (required when STRAVA_CLIENT_ID is set)"
        )


def _has_file(token_file: Path) -> bool:
    try:
        return token_file.is_file()
    except OSError:  # e.g. a parent directory we may not read: the token manager reports it later
        return False


def parse_settings(env: Mapping[str, str], settings: Settings) -> StravaSettings:
    values = read_vars(StravaSettings, env, settings)
    parsed = StravaSettings(**values, has_token_file=_has_file(values["token_file"]), sandbox=settings.sandbox)
    _check_credentials(parsed)
    return parsed
