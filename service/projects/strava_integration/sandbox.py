"""Sandbox mode: the Strava simulator served in-process on loopback, for a newcomer's first run."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import uvicorn

from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.simulator import SimulatorConfig, create_simulator


class _EmbeddedServer(uvicorn.Server):
    """Leaves signal handling to the main server (uvicorn's default would take SIGTERM over)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Sandbox:
    def __init__(self, settings: StravaSettings) -> None:
        # Bound now so the client can be built with the final URL; served once the app starts.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        # A fresh simulator knows only its initial token, so the sandbox's tokens live per run.
        self.token_dir = Path(tempfile.mkdtemp(prefix="siteapi-sandbox-"))
        self.config = SimulatorConfig(
            client_id=settings.client_id or SimulatorConfig.client_id,
            client_secret=settings.client_secret or SimulatorConfig.client_secret,
            initial_refresh_token=settings.refresh_token or SimulatorConfig.initial_refresh_token,
        )

    def wire(self, settings: StravaSettings) -> StravaSettings:
        return replace(
            settings,
            api_url=f"{self.url}/api/v3",
            oauth_url=f"{self.url}/oauth",
            token_file=self.token_dir / "tokens.json",
            has_token_file=False,
        )

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        config = uvicorn.Config(
            create_simulator(self.config), log_config=None, access_log=False, lifespan="off", http="h11"
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
