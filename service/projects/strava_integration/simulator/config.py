"""TEMPORARY: the old name of sim_config.py, kept only while strava_integration/config.py imports it.

Delete this file when the settings branch (config.py without the simulator import) is merged.
"""

from .sim_config import SimulatorConfig

__all__ = ["SimulatorConfig"]
