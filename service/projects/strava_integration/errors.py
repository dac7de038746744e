"""What can go wrong talking to Strava, as values: our HTTP status, a stable code, a safe message.

Each is an `ApiError`, so one raised anywhere below a route reaches the client through the
app's one error renderer as it is, Retry-After included. Messages are written here or by the
caller from fixed text; they never carry a token, a secret or an upstream URL, so routes may
show them to visitors as they are.
"""

from __future__ import annotations

from service.errors import ApiError

AUTH_START_PATH = "/api/strava-integration/auth/start"


class UpstreamError(ApiError):
    status: int = 502
    code: str = "strava_upstream_error"
    default_message: str = "Strava could not be reached."

    def __init__(self, message: str | None = None, *, retry_after: int | None = None, status: int | None = None):
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(status or self.status, self.code, message or self.default_message, headers=headers)
        self.retry_after = retry_after


class BudgetExhausted(UpstreamError):
    """Our share of Strava's rate limit is spent; no request was sent."""

    status = 503
    code = "strava_budget_exhausted"
    default_message = "The Strava request budget is spent for now."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, retry_after=max(1, int(retry_after)))


class RateLimited(BudgetExhausted):
    """Strava answered 429; the budget now blocks until the window resets."""

    code = "strava_rate_limited"
    default_message = "Strava's rate limit is reached for now."


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "strava_unavailable"
    default_message = "Strava is unavailable."


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "strava_timeout"
    default_message = "Strava did not answer in time."


class UpstreamBadResponse(UpstreamError):
    status = 502
    code = "strava_bad_response"
    default_message = "Strava sent a response we could not use."


class UpstreamNotFound(UpstreamError):
    status = 404
    code = "strava_not_found"
    default_message = "Strava has no such resource."


class AuthRejected(UpstreamError):
    status = 503
    code = "strava_auth_rejected"
    default_message = f"Strava rejected the stored authorization; the owner must re-authorize at {AUTH_START_PATH}."


class CredentialsRejected(UpstreamError):
    """Strava refused the application's own credentials: a configuration error, not a revoked grant.

    The owner's grant may be fine, so nothing is dropped: cached data is served stale meanwhile.
    """

    status = 503
    code = "strava_credentials_rejected"
    default_message = "Strava rejected the application's credentials: check STRAVA_CLIENT_ID/STRAVA_CLIENT_SECRET."


class TokenRefreshPostponed(UpstreamUnavailable):
    """No token refresh without the shared lock (that would fork the token chain): the data goes stale instead."""

    status = 503
    code = "strava_token_refresh_postponed"
    default_message = "The Strava token cannot be refreshed right now; try again shortly."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, retry_after=5)


class AccessUnconfirmed(UpstreamError):
    """A deauthorization event could not be checked with Strava yet: the owner's data is withheld until it is."""

    status = 503
    code = "strava_access_unconfirmed"
    default_message = "A deauthorization is being confirmed with Strava; the owner's data is withheld until then."


class NotConfigured(UpstreamError):
    status = 503
    code = "strava_not_configured"
    default_message = (
        f"Strava is not configured: set STRAVA_CLIENT_ID and STRAVA_CLIENT_SECRET, then authorize at {AUTH_START_PATH}."
    )
