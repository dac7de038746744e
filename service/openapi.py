"""OpenAPI 3.1 for every route, built from the router itself so it cannot drift.

Endpoints describe themselves with `@describe(...)`; `build_spec` walks the routes (through
mounts) and emits one operation per method. A test checks the spec against the router.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.routing import BaseRoute, Mount, Route

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message", "request_id"],
    "properties": {
        "error": {"type": "string", "description": "Stable machine-readable code."},
        "message": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "parameter": {"type": "string", "description": "The offending parameter, for 422."},
    },
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False
    where: str = "query"
    allow_empty: bool = False  # `?name=` is accepted and means the same as leaving it out

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "in": self.where, "required": self.required, "schema": self.schema}
        if self.allow_empty:
            out["allowEmptyValue"] = True
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class Operation:
    summary: str
    params: Sequence[Param] = ()
    responses: Mapping[str, str] = field(default_factory=lambda: {"200": "OK"})
    admin: bool = False
    request_body: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    media_type: str = "application/json"


F = TypeVar("F", bound=Callable[..., Any])  # what `describe` decorates keeps its own type


def describe(summary: str, **kwargs: Any) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        fn.__openapi__ = Operation(summary, **kwargs)  # type: ignore[attr-defined]
        return fn

    return deco


def iter_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    """Every leaf `Route` with its full path template (mount prefixes included)."""
    for route in routes:
        if isinstance(route, Mount):
            yield from iter_routes(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path_format, route  # {id}, not {id:int}


def route_templates(routes: Sequence[BaseRoute]) -> dict[int, str]:
    return {id(route): path for path, route in iter_routes(routes)}


def _path_param_schema(convertor: object) -> dict[str, Any]:
    if isinstance(convertor, IntegerConvertor):
        return {"type": "integer", "minimum": 0}
    if isinstance(convertor, FloatConvertor):
        return {"type": "number"}
    return {"type": "string"}


def _slug(path: str) -> str:
    return path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace("-", "_") or "root"


def _operation(path: str, route: Route, method: str) -> dict[str, Any]:
    op: Operation = getattr(route.endpoint, "__openapi__", None) or Operation(route.name)
    params = [p.as_json() for p in op.params]
    for name, convertor in route.param_convertors.items():
        params.append(Param(name, _path_param_schema(convertor), required=True, where="path").as_json())
    if op.admin:
        params.append(
            Param("X-API-Key", {"type": "string", "maxLength": 512}, "Admin API key.", where="header").as_json()
        )
    responses: dict[str, Any] = {}
    content: dict[str, Any] | None
    for status, description in op.responses.items():
        if status.startswith(("4", "5")):
            content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        else:
            content = {op.media_type: {"schema": {}}} if status not in ("202", "204", "302", "304") else None
        responses[status] = {"description": description, **({"content": content} if content else {})}
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{method.lower()}_{_slug(path)}",
        "parameters": params,
        "responses": responses,
    }
    if op.tags:
        out["tags"] = list(op.tags)
    if op.request_body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.request_body}}}
    return out


def build_spec(routes: Sequence[BaseRoute], *, title: str, version: str, description: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, route in iter_routes(routes):
        if not route.include_in_schema:
            continue
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(path, route, method)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }
