"""Temporary skeleton: replaced by the full project."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from observability.health import CheckResult
from service.registry import ProjectApp, ProjectContext, ProjectSpec
from service.settings import Settings


def parse_settings(env: Mapping[str, str], settings: Settings) -> Any:
    return None


def build(ctx: ProjectContext) -> ProjectApp:
    async def health() -> CheckResult:
        return CheckResult("warn", output="not configured")

    return ProjectApp(routes=[], health=health)


PROJECT = ProjectSpec(
    name="strava-integration",
    description="The owner's Strava activities as a cached, privacy-safe feed.",
    version="1.0.0",
    parse_settings=parse_settings,
    build=build,
)
