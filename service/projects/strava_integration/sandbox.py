"""Sandbox mode: the Strava simulator served in-process on loopback, for a newcomer's first run.

The simulator lives in the repository but not in the production image, so it is imported here,
when a sandbox is built, and never at module level: production starts import none of it, and
`--sandbox` in the image fails with one line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import uvicorn

from service.projects.strava_integration.config import StravaSettings
from service.settings import ConfigError

SIMULATOR = "service.projects.strava_integration.simulator"
NO_SIMULATOR = "the Strava simulator, which is not part of this image; run it from a checkout"


def load_simulator() -> ModuleType:
    """The simulator package, or the one-line ConfigError the launcher prints (exit 2) where it is absent."""
    try:
        return importlib.import_module(SIMULATOR)
    except ModuleNotFoundError as exc:
        if exc.name != SIMULATOR and not SIMULATOR.startswith(f"{exc.name}."):
            raise  # the simulator is there but something it needs is not: that is a real bug
        raise ConfigError("--sandbox", NO_SIMULATOR) from None


class _EmbeddedServer(uvicorn.Server):
    """Leaves signal handling to the main server (uvicorn's default would take SIGTERM over)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Sandbox:
    def __init__(self, settings: StravaSettings) -> None:
        # First, so a missing simulator fails before anything is bound or created.
        self.simulator = load_simulator()
        defaults = self.simulator.SimulatorConfig
        self.config = defaults(
            client_id=settings.client_id or defaults.client_id,
            client_secret=settings.client_secret or defaults.client_secret,
            initial_refresh_token=settings.refresh_token or defaults.initial_refresh_token,
        )
        # Bound now so the client can be built with the final URL; served once the app starts.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        # A fresh simulator knows only its initial token, so the sandbox's tokens live per run.
        self.token_dir = Path(tempfile.mkdtemp(prefix="siteapi-sandbox-"))

    def wire(self, settings: StravaSettings) -> StravaSettings:
        # The API at the root: the layout Strava serves from https://www.api-v3.strava.com (June 2027).
        return replace(
            settings,
            api_url=self.url,
            oauth_url=f"{self.url}/oauth",
            token_file=self.token_dir / "tokens.json",
            has_token_file=False,
        )

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        config = uvicorn.Config(
            self.simulator.create_simulator(self.config), log_config=None, access_log=False, lifespan="off", http="h11"
        )
        server = _EmbeddedServer(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[self.socket]))
        try:
            for _ in range(100):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.02)
            if not server.started:
                raise RuntimeError("the Strava simulator did not start")
            yield self.url
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            self.socket.close()
