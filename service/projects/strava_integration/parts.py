"""The parts of strava-integration, built once by `project.build` and handed to every handler.

A handler is a module-level function of these parts (see `routes.py`); a test can build them
(or a stand-in with the same attributes) and call it alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.projects.strava_integration.budget import Budget
from service.projects.strava_integration.client import StravaClient
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.data import StravaData
from service.projects.strava_integration.oauth import StateSigner
from service.projects.strava_integration.webhook import Webhook

if TYPE_CHECKING:  # the simulator is imported only when the sandbox is asked for
    from service.projects.strava_integration.sandbox import Sandbox


@dataclass(frozen=True, slots=True)
class Strava:
    settings: StravaSettings  # as wired: in the sandbox, pointing at the simulator
    client: StravaClient
    data: StravaData
    budget: Budget
    webhook: Webhook
    signer: StateSigner  # OAuth `state` values for the connect flow
    control: str  # the data routes' Cache-Control
    sandbox: Sandbox | None = None
