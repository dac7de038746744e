"""Static configuration of one simulator instance, and the path layout it serves."""

from dataclasses import dataclass


@dataclass
class SimulatorConfig:
    """What a simulated Strava "application" and its one athlete look like.

    The defaults are sandbox values, not secrets: they only ever unlock the simulator.
    """

    client_id: str = "sim-client"
    client_secret: str = "sim-secret"  # noqa: S105 - sandbox credential, only valid against the simulator
    initial_refresh_token: str = "sim-refresh-0"  # noqa: S105 - the one valid refresh token at start
    access_token_ttl_s: int = 6 * 3600
    athlete_id: int = 12345
    limit_15min: int = 200  # overall limits
    limit_day: int = 2000
    read_limit_15min: int = 100  # non-upload ("read") limits
    read_limit_day: int = 1000
    activity_count: int = 40  # seeded activities
    webhook_subscription_id: int = 1  # what deauthorization events sent by /_sim/revoke_grant carry


# The API is served under both of Strava's layouts: the old `https://www.strava.com/api/v3/...`
# and, from 1 June 2027, `https://www.api-v3.strava.com/...` (the same paths at the root).
API_PREFIX = "/api/v3"
OAUTH_PREFIX = "/oauth"
CONTROL_PREFIX = "/_sim"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def is_api_path(path: str) -> bool:
    """Whether a request path is an API call (billed, needs a Bearer token), in either layout."""
    return not (_under(path, OAUTH_PREFIX) or _under(path, CONTROL_PREFIX))


def api_v3_path(path: str) -> str:
    """An API path in the old layout, so counts and fault prefixes read the same for both layouts."""
    if not is_api_path(path) or _under(path, API_PREFIX):
        return path
    return API_PREFIX + path
