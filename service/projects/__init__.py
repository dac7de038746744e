"""The project registry: one line per project. The service knows projects only through this list."""

from typing import Any

from service.projects import strava_integration
from service.registry import ProjectSpec

REGISTRY: tuple[ProjectSpec[Any], ...] = (strava_integration.PROJECT,)
