from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import figures
from tests.support import LOG_DIR, SECRETS, ServiceProcess, configure_test_logging, secret_hits


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
