"""Metrics of the Strava upstream layer: requests, rate-limit budget, tokens.

Created once per app on its `Metrics` registry (which adds the `siteapi_` prefix). Every label
comes from a closed set, so the number of series is bounded.
"""

from __future__ import annotations

from observability.metrics import Metrics

ENDPOINTS = ("token", "athlete", "activities", "activity", "stats")
OTHER_ENDPOINT = "other"
WINDOWS = ("15min", "day")
KINDS = ("overall", "read")
REFRESH_OUTCOMES = ("success", "rejected", "error")


def endpoint_label(endpoint: str) -> str:
    return endpoint if endpoint in ENDPOINTS else OTHER_ENDPOINT


class StravaMetrics:
    def __init__(self, metrics: Metrics) -> None:
        # prometheus-client appends `_total` to counter names itself; passing the bare name keeps
        # the exported one exactly `siteapi_strava_upstream_requests_total`.
        self.requests = metrics.counter(
            "strava_upstream_requests",
            "Requests sent to Strava, by endpoint and HTTP status (or error/timeout).",
            ("endpoint", "status"),
        )
        self.duration = metrics.histogram(
            "strava_upstream_request_duration_seconds",
            "Time of one request to Strava (one attempt), by endpoint.",
            ("endpoint",),
        )
        self.ratelimit_usage = metrics.gauge(
            "strava_ratelimit_usage", "Strava rate-limit usage last reported by Strava.", ("window", "kind")
        )
        self.ratelimit_limit = metrics.gauge(
            "strava_ratelimit_limit", "Strava rate limit last reported by Strava (0 until known).", ("window", "kind")
        )
        self.ratelimit_blocked = metrics.gauge(
            "strava_ratelimit_blocked", "1 while upstream calls are refused because the budget is spent or after 429."
        )
        self.token_refreshes = metrics.counter(
            "strava_token_refreshes", "Strava access-token refreshes, by outcome.", ("outcome",)
        )
        self.token_expires_at = metrics.gauge(
            "strava_token_expires_at_seconds", "Unix time the held Strava access token expires (0 when none)."
        )
        self.auth_ok = metrics.gauge(
            "strava_auth_ok", "1 while a usable Strava token set is held; 0 when it was rejected or is missing."
        )
        # Closed sets: show every series at once, so dashboards and alerts have data from the start.
        for window in WINDOWS:
            for kind in KINDS:
                self.ratelimit_usage.labels(window, kind)
                self.ratelimit_limit.labels(window, kind)
        for outcome in REFRESH_OUTCOMES:
            self.token_refreshes.labels(outcome)
        for endpoint in ENDPOINTS:
            self.duration.labels(endpoint)

    def observe_request(self, endpoint: str, status: int | str, duration: float) -> None:
        label = endpoint_label(endpoint)
        self.requests.labels(label, str(status)).inc()
        self.duration.labels(label).observe(duration)
