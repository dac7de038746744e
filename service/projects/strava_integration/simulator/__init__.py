"""A Strava API v3 simulator for tests and the local sandbox mode.

Serves the API under both of Strava's layouts, `/api/v3/...` and the root (Bearer auth, rate
limits, seeded activities), `/oauth` (authorize, token, revoke, deauthorize) and `/_sim` (test
control: faults, limits, usage, tokens, revoking the grant, activities, stats, reset).
Run it alone with `python -m service.projects.strava_integration.simulator --port 8099`.

Not part of the production image (.dockerignore): only tests and `--sandbox` import it.
"""

from .app import create_simulator
from .faults import FAULT_KINDS, Fault, SimulatedConnectionReset
from .polyline import decode_polyline, encode_polyline
from .seed import MARKUP_NAME
from .sim_config import SimulatorConfig
from .state import SimulatorState

__all__ = [
    "FAULT_KINDS",
    "MARKUP_NAME",
    "Fault",
    "SimulatedConnectionReset",
    "SimulatorConfig",
    "SimulatorState",
    "create_simulator",
    "decode_polyline",
    "encode_polyline",
]
