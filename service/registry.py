"""What a project is, as far as the service is concerned.

A project is one package under `service/projects/<name>/` that exposes a `PROJECT` spec. The
service knows projects only through these types and the list in `service/projects/__init__.py`.
Both are generic over the project's own settings type, so a project's `build` is checked
against what its `parse_settings` returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from starlette.routing import BaseRoute

from observability.health import CheckResult
from observability.metrics import Metrics
from observability.redact import Redactor
from service.settings import Settings
from service.store import Store

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class ProjectContext(Generic[S]):
    """What a project gets from the service when it is built."""

    name: str
    settings: Settings
    project_settings: S
    metrics: Metrics
    redactor: Redactor
    clock: Callable[[], float]
    store: Store  # shared state: Redis when REDIS_URL is set, else in-process


@dataclass(slots=True)
class ProjectApp:
    """What a built project gives back: its routes (relative to /api/<name>), health and hooks."""

    routes: Sequence[BaseRoute]
    health: Callable[[], Awaitable[CheckResult]]
    lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None
    ready: Callable[[], bool] | None = None  # a required dependency; None means always ready
    info: Callable[[], Mapping[str, Any]] = field(default=lambda: {})


@dataclass(frozen=True, slots=True)
class ProjectSpec(Generic[S]):
    name: str  # the URL segment: /api/<name>/
    description: str
    version: str
    parse_settings: Callable[[Mapping[str, str], Settings], S]
    build: Callable[[ProjectContext[S]], ProjectApp]
