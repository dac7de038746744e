"""The store's health check: `warn` while Redis is unreachable, never `fail`.

An instance without its store still serves what it holds, so readiness stays up: cached data beats
an outage. The check only says so, naming the store, for the operator.
"""

from __future__ import annotations

from observability.health import CheckResult, HealthCheck
from service.store.interface import Store


def store_check(store: Store) -> HealthCheck:
    async def check() -> CheckResult:
        if store.up:
            return CheckResult("pass", observed_value=store.backend)
        return CheckResult(
            "warn",
            observed_value=store.backend,
            output=f"store: {store.backend} unreachable at {store.location}; serving what this instance holds",
        )

    return check
