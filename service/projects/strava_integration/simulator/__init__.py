"""A Strava API v3 simulator for tests and the local sandbox mode.

Serves `/api/v3` (Bearer auth, rate limits, seeded activities), `/oauth` (authorize, token,
deauthorize) and `/_sim` (test control: faults, limits, usage, tokens, activities, stats, reset).
Run it alone with `python -m service.projects.strava_integration.simulator --port 8099`.
"""

from .app import create_simulator
from .config import SimulatorConfig
from .faults import FAULT_KINDS, Fault, SimulatedConnectionReset
from .polyline import decode_polyline, encode_polyline
from .state import SimulatorState

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "SimulatedConnectionReset",
    "SimulatorConfig",
    "SimulatorState",
    "create_simulator",
    "decode_polyline",
    "encode_polyline",
]
