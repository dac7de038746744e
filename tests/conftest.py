from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import SECRETS, ServiceProcess


@pytest.fixture(scope="session")
def sandbox_service() -> Iterator[ServiceProcess]:
    """`python -m service --sandbox` with distinctive secrets; /metrics needs no token here."""
    env = {k: v for k, v in SECRETS.items() if k != "METRICS_BEARER_TOKEN"}
    with ServiceProcess(env=env, args=("--sandbox",)) as service:
        yield service


@pytest.fixture
def service_factory() -> Iterator[type[ServiceProcess]]:
    """Start extra service processes inside a test; all are stopped at the end."""
    started: list[ServiceProcess] = []

    class Tracked(ServiceProcess):
        def start(self, wait: bool = True, timeout: float = 15.0) -> ServiceProcess:
            started.append(self)
            return super().start(wait, timeout)

    yield Tracked
    for service in started:
        if service.proc is not None and service.proc.poll() is None:
            service.stop()
