from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.projects.strava_integration.simulator import SimulatorState
from tests import figures
from tests.strava_upstream import T0, running_simulator
from tests.support import LOG_DIR, SECRETS, FakeClock, ServiceProcess, configure_test_logging, secret_hits


def pytest_sessionstart(session: pytest.Session) -> None:
    configure_test_logging()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Secret hygiene over the whole run: no distinctive secret in any captured log line."""
    hits = secret_hits(SECRETS.values())
    files = len(list(LOG_DIR.glob("*.log")))
    figures.record("secret hygiene (log scan)", log_files=files, secrets=len(SECRETS), hits=len(hits))
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nSECRET LEAK in captured logs: {hits}")


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


# The Strava simulator on a fake clock, for the upstream tests (one simulator per module).


@pytest.fixture(scope="module")
def module_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def simulator(module_clock: FakeClock) -> Iterator[tuple[str, SimulatorState]]:
    with running_simulator(module_clock) as running:
        yield running


@pytest.fixture
def sim(simulator: tuple[str, SimulatorState], module_clock: FakeClock) -> SimulatorState:
    """The module's simulator, reset, with the clock back at T0."""
    module_clock.now = T0
    simulator[1].reset()
    return simulator[1]
