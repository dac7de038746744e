"""Static configuration of one simulator instance."""

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


API_PREFIX = "/api/v3"
OAUTH_PREFIX = "/oauth"
CONTROL_PREFIX = "/_sim"
