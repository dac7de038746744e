"""What a project is, as far as the service is concerned.

A project is one package under `service/projects/<name>/` that exposes a `PROJECT` spec. The
service knows projects only through these types and the list in `service/projects/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute

from observability.health import CheckResult
from observability.metrics import Metrics
from observability.redact import Redactor
from service.settings import Settings
from service.store import Store


@dataclass(frozen=True, slots=True)
class ProjectContext:
    """What a project gets from the service when it is built."""

    name: str
    settings: Settings
    project_settings: Any
    metrics: Metrics
    redactor: Redactor
    clock: Callable[[], float]
    store: Store | None = None  # shared state; None: the project keeps its own in memory


@dataclass(slots=True)
class ProjectApp:
    """What a built project gives back: its routes (relative to /api/<name>), health and hooks."""

    routes: Sequence[BaseRoute]
    health: Callable[[], Awaitable[CheckResult]]
    lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None
    ready: Callable[[], bool] | None = None  # a required dependency; None means always ready
    info: Callable[[], Mapping[str, Any]] = field(default=lambda: {})


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    name: str  # the URL segment: /api/<name>/
    description: str
    version: str
    parse_settings: Callable[[Mapping[str, str], Settings], Any]
    build: Callable[[ProjectContext], ProjectApp]
