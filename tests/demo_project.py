"""A small test-only project: proof that adding a project is one package plus one registry line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from observability.health import CheckResult
from service.errors import invalid_parameter
from service.openapi import Param, describe
from service.registry import ProjectApp, ProjectContext, ProjectSpec
from service.settings import Settings, env_str

# Each build's lifecycle flags, newest last, so tests can see the hooks ran.
STATES: list[dict[str, Any]] = []


def parse_settings(env: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    return {"greeting": env_str(env, "DEMO_GREETING", "hello")}


def build(ctx: ProjectContext) -> ProjectApp:
    state = {"started": False, "stopped": False, "healthy": "pass", "ready": True}
    hits = ctx.metrics.counter("demo_hits_total", "Demo hits.", ["kind"])

    @describe("Greets", params=[Param("times", {"type": "integer", "minimum": 1, "maximum": 5})])
    async def greet(request: Request) -> Response:
        raw = request.query_params.get("times", "1")
        if not raw.isdigit() or not 1 <= int(raw) <= 5:
            raise invalid_parameter("times", "an integer from 1 to 5")
        hits.labels(kind="greet").inc()
        return JSONResponse({"greeting": " ".join([ctx.project_settings["greeting"]] * int(raw))})

    @describe("Always fails", responses={"500": "boom"})
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internals: do not show")

    @describe("Reads the body slowly", responses={"200": "echo", "413": "too large"})
    async def echo(request: Request) -> Response:
        body = await request.body()
        return JSONResponse({"bytes": len(body)})

    @describe("Sleeps", params=[Param("s", {"type": "number", "minimum": 0, "maximum": 5})])
    async def slow(request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("s", "0.5")))
        return JSONResponse({"slept": True})

    @describe("Answers at once, then works for a while in the background")
    async def background(request: Request) -> Response:
        return JSONResponse({"queued": True}, background=BackgroundTask(asyncio.sleep, 1.0))

    async def health() -> CheckResult:
        return CheckResult(state["healthy"], observed_value=state["started"])  # type: ignore[arg-type]

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        state["started"] = True
        yield
        state["stopped"] = True

    STATES.append(state)
    return ProjectApp(
        routes=[
            Route("/greet", greet),
            Route("/boom", boom),
            Route("/echo", echo, methods=["POST"]),
            Route("/slow", slow),
            Route("/background", background),
        ],
        health=health,
        lifespan=lifespan,
        ready=lambda: bool(state["ready"]),
        info=lambda: {"greeting": ctx.project_settings["greeting"]},
    )


DEMO = ProjectSpec(
    name="demo",
    description="Test-only demo project.",
    version="0.0.1",
    parse_settings=parse_settings,
    build=build,
)
