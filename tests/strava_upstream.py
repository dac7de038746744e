"""Helpers for the Strava upstream tests: the simulator on a fake clock, settings, metrics.

The fixtures built on them (`module_clock`, `simulator`, `sim`) are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from observability.metrics import Metrics
from observability.redact import Redactor
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.simulator import SimulatorConfig, SimulatorState, create_simulator
from service.projects.strava_integration.tokens import TokenManager
from service.projects.strava_integration.upstream_metrics import StravaMetrics
from service.store import Store
from tests.support import CLOCK_START, FakeClock, serve_in_thread

T0 = CLOCK_START
SIM = SimulatorConfig()
SIX_HOURS = 6 * 3600


@contextlib.contextmanager
def running_simulator(clock: FakeClock) -> Iterator[tuple[str, SimulatorState]]:
    app = create_simulator(SimulatorConfig(), clock=clock)
    with serve_in_thread(app) as base_url:
        yield base_url, app.state.sim


def strava_settings(base_url: str, tmp_path: Path, **overrides: Any) -> StravaSettings:
    values: dict[str, Any] = {
        "client_id": SIM.client_id,
        "client_secret": SIM.client_secret,
        "refresh_token": SIM.initial_refresh_token,
        "api_url": f"{base_url}/api/v3",  # the old layout; tests/strava_harness.py uses the new root one
        "oauth_url": f"{base_url}/oauth",
        "token_file": tmp_path / "strava" / "tokens.json",
        "request_timeout_seconds": 5.0,
        "connect_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return StravaSettings(**values)


class Harness:
    """One app's worth of the pieces: a registry, the Strava metrics, a redactor."""

    def __init__(self) -> None:
        self.metrics = Metrics("test")
        self.strava = StravaMetrics(self.metrics)
        self.redactor = Redactor()

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})


def make_tokens(
    settings: StravaSettings, http: httpx.AsyncClient, clock: FakeClock, harness: Harness, store: Store | None = None
) -> TokenManager:
    """A token manager as the project builds one; `store` shared by several stands in for Redis."""
    for secret in settings.secrets():  # as the project's `build` does, before anything can log them
        harness.redactor.add_secret(secret)
    return TokenManager(settings, http, harness.strava, harness.redactor, clock, store)


def refresh_calls(sim: SimulatorState) -> int:
    return sim.stats()["calls"].get("POST /oauth/token", 0)
