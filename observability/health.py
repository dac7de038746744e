"""Health: liveness, readiness and the aggregated `application/health+json` report.

Liveness says only that the process serves. Readiness is 503 until start-up has finished,
from the moment SIGTERM arrives (so the platform drains us), and while a required dependency
is down. `/health` aggregates every registered check (draft-inadarei-api-health-check format).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from observability.timestamps import iso_utc

Status = Literal["pass", "warn", "fail"]
_RANK = {"pass": 0, "warn": 1, "fail": 2}
CHECK_TIMEOUT_S = 2.0


def now_iso() -> str:
    return iso_utc(time.time())


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Status
    output: str | None = None
    observed_value: Any = None
    observed_unit: str | None = None
    time: str = field(default_factory=now_iso)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "time": self.time}
        if self.observed_value is not None:
            out["observedValue"] = self.observed_value
        if self.observed_unit:
            out["observedUnit"] = self.observed_unit
        if self.output:
            out["output"] = self.output
        return out


HealthCheck = Callable[[], Awaitable[CheckResult]]
ReadyCheck = Callable[[], bool]


class Health:
    """Holds the service's lifecycle flags and the checks projects register."""

    def __init__(self, service: str, version: str) -> None:
        self.service = service
        self.version = version
        self.started = False
        self.draining = False
        self._checks: dict[str, HealthCheck] = {}
        self._required: dict[str, ReadyCheck] = {}

    def add_check(self, name: str, check: HealthCheck) -> None:
        self._checks[name] = check

    def add_required(self, name: str, ready: ReadyCheck) -> None:
        """A dependency without which the service must not take traffic."""
        self._required[name] = ready

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.started:
            return False, "starting"
        for name, ready in self._required.items():
            if not ready():
                return False, f"{name} not ready"
        return True, "ready"

    async def run_check(self, name: str) -> CheckResult:
        try:
            return await asyncio.wait_for(self._checks[name](), CHECK_TIMEOUT_S)
        except TimeoutError:
            return CheckResult("fail", output="health check timed out")
        except Exception as exc:
            return CheckResult("fail", output=f"health check raised {type(exc).__name__}")

    async def report(self) -> tuple[int, bytes]:
        names = list(self._checks)
        results = await asyncio.gather(*(self.run_check(n) for n in names))
        checks = {name: [result.as_json()] for name, result in zip(names, results, strict=True)}
        ready, reason = self.readiness()
        checks["service:readiness"] = [CheckResult("pass" if ready else "fail", observed_value=reason).as_json()]
        worst = max((r[0]["status"] for r in checks.values()), key=_RANK.__getitem__, default="pass")
        body = {
            "status": worst,
            "version": self.version.split(".")[0],
            "releaseId": self.version,
            "serviceId": self.service,
            "checks": checks,
        }
        return (503 if worst == "fail" else 200), orjson.dumps(body)
