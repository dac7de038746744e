"""The project registry: one line per project. The service knows projects only through this list."""

from service.projects import strava_integration
from service.registry import ProjectSpec

REGISTRY: tuple[ProjectSpec, ...] = (strava_integration.PROJECT,)
