"""strava-integration: the owner's Strava activities as a cached, privacy-safe feed."""

from service.projects.strava_integration.project import PROJECT

__all__ = ["PROJECT"]
