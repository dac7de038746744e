"""Unit tests for the static-first router, side by side with Starlette's own `Router`.

Most requests must be answered exactly as Starlette's router answers them (status, headers,
body, what the endpoint sees through `Request`). Where the two differ today, the difference is
pinned in a test of its own, named after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import Message, Receive, Scope, Send

from service.errors import EXCEPTION_HANDLERS
from service.routing import StaticFirstRouter


def probe(name: str) -> Callable[[Request], Any]:
    """An endpoint that reports what it saw: which route, which parameters, which paths."""

    async def endpoint(request: Request) -> Response:
        scope = request.scope
        return JSONResponse(
            {
                "endpoint": name,
                "endpoint_key": scope["endpoint"].__name__,
                "route": scope["route"].path,
                "router_is_apps": scope["router"] is request.app.router,
                "path_params": scope["path_params"],
                "url": str(request.url),
                "base_url": str(request.base_url),
                "url_for": str(request.url_for("p:x")),
                "root_path": scope.get("root_path"),
                "app_root_path": scope.get("app_root_path"),
            }
        )

    endpoint.__name__ = f"ep_{name}"
    return endpoint


class Raw:
    """A raw ASGI route (as the cached JSON routes are): no method list, so any method."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"endpoint": "raw", "method": scope["method"], "route": scope["route"].path})(
            scope, receive, send
        )


def routes() -> list[BaseRoute]:
    return [
        Route("/", probe("root")),
        Route("/a", probe("a")),
        Route("/post-only", probe("post_only"), methods=["POST"]),
        Route("/raw", Raw()),
        Route("/items/{name}", probe("item_by_name")),
        Route("/items/new", probe("item_new")),  # static, but listed after a pattern that matches it
        Route("/things/special", probe("special"), methods=["GET"]),
        Route("/things/{name}", probe("thing"), methods=["GET", "POST"]),
        Mount(
            "/api/p",
            routes=[
                Route("/", probe("p_info")),
                Route("/x", probe("p_x"), name="p:x"),
                Route("/items/{id:int}", probe("p_item")),
                Route("/hook", probe("hook_get"), methods=["GET"]),
                Route("/hook", probe("hook_post"), methods=["POST"]),
            ],
        ),
    ]


def app_with(router_cls: type[Router]) -> Starlette:
    app = Starlette(routes=routes(), exception_handlers=dict(EXCEPTION_HANDLERS))
    app.router = router_cls(app.routes)  # as `ServiceApp` does
    return app


@asynccontextmanager
async def client_for(router_cls: type[Router], root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_with(router_cls), root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", follow_redirects=False) as client:
        yield client


async def answer(router_cls: type[Router], method: str, path: str, root_path: str = "") -> dict[str, Any]:
    async with client_for(router_cls, root_path) as client:
        response = await client.request(method, root_path + path)
    is_json = response.headers.get("content-type") == "application/json" and response.content  # not for HEAD
    body: Any = response.json() if is_json else response.text
    return {
        "status": response.status_code,
        "allow": response.headers.get("allow"),
        "location": response.headers.get("location"),
        "body": body,
    }


def without_root_paths(result: dict[str, Any]) -> dict[str, Any]:
    body = result["body"]
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("root_path", "app_root_path")}
    return {**result, "body": body}


SAME_AS_STARLETTE = [
    ("GET", "/"),
    ("GET", "/a"),
    ("HEAD", "/a"),
    ("POST", "/a"),  # 405
    ("DELETE", "/a"),  # 405
    ("GET", "/post-only"),  # 405
    ("POST", "/post-only"),
    ("GET", "/raw"),
    ("PUT", "/raw"),
    ("GET", "/a/"),  # redirect to /a
    ("GET", "/items/abc"),
    ("GET", "/things/other"),
    ("POST", "/things/other"),
    ("GET", "/things/special"),
    ("GET", "/api/p/"),
    ("GET", "/api/p"),  # redirect to /api/p/
    ("GET", "/api/p/x"),
    ("POST", "/api/p/x"),  # 405
    ("GET", "/api/p/x?q=1"),
    ("GET", "/api/p/items/7"),
    ("GET", "/api/p/items/seven"),  # 404
    ("GET", "/api/p/hook"),
    ("POST", "/api/p/hook"),
    ("PUT", "/api/p/hook"),  # 405 naming both routes' methods
    ("GET", "/items/%7Bname%7D"),  # a template's own text is a path like any other
    ("GET", "/api/p/items/%7Bid%7D"),  # 404: not an int
    ("GET", "/nope"),  # 404
    ("GET", "/api/nope"),  # 404
]


@pytest.mark.parametrize("root_path", ["", "/pre"])
@pytest.mark.parametrize(("method", "path"), SAME_AS_STARLETTE)
async def test_answers_are_starlettes(method: str, path: str, root_path: str) -> None:
    ours = await answer(StaticFirstRouter, method, path, root_path)
    theirs = await answer(Router, method, path, root_path)
    assert without_root_paths(ours) == without_root_paths(theirs)


# ---- what the answers are (so the comparison above cannot pass by both being wrong) ----


async def test_static_paths_are_served_with_the_scope_keys_a_route_expects() -> None:
    result = await answer(StaticFirstRouter, "GET", "/api/p/x")
    assert result["status"] == 200
    body = result["body"]
    assert (body["endpoint"], body["endpoint_key"], body["route"]) == ("p_x", "ep_p_x", "/x")
    assert body["path_params"] == {}
    assert body["router_is_apps"] is True
    assert (body["url"], body["base_url"], body["url_for"]) == (
        "http://test/api/p/x",
        "http://test/",
        "http://test/api/p/x",
    )


async def test_parameterised_routes_get_their_converted_parameters() -> None:
    body = (await answer(StaticFirstRouter, "GET", "/api/p/items/7"))["body"]
    assert (body["endpoint"], body["path_params"]) == ("p_item", {"id": 7})
    body = (await answer(StaticFirstRouter, "GET", "/items/abc"))["body"]
    assert (body["endpoint"], body["path_params"]) == ("item_by_name", {"name": "abc"})


async def test_a_raw_asgi_route_takes_any_method() -> None:
    result = await answer(StaticFirstRouter, "PATCH", "/raw")
    assert (result["status"], result["body"]) == (200, {"endpoint": "raw", "method": "PATCH", "route": "/raw"})


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/a", "GET, HEAD"),
        ("GET", "/post-only", "POST"),
        ("POST", "/api/p/x", "GET, HEAD"),
        ("PUT", "/api/p/hook", "GET, HEAD, POST"),  # both routes at the path, not just the first
    ],
)
async def test_a_wrong_method_is_a_json_405_with_allow(method: str, path: str, allow: str) -> None:
    result = await answer(StaticFirstRouter, method, path)
    assert (result["status"], result["allow"]) == (405, allow)
    assert result["body"]["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/nope", "/api/p/items/seven", "/api/p/nope"])
async def test_an_unknown_path_is_a_json_404(path: str) -> None:
    result = await answer(StaticFirstRouter, "GET", path)
    assert result["status"] == 404
    assert result["body"] == {"error": "not_found", "message": "No such resource.", "request_id": None}


async def test_trailing_slash_redirects_still_happen() -> None:
    result = await answer(StaticFirstRouter, "GET", "/api/p")
    assert (result["status"], result["location"]) == (307, "http://test/api/p/")


# ---- where it differs from Starlette's router today ----


async def test_a_static_path_wins_over_an_earlier_pattern_that_matches_it() -> None:
    # Starlette takes the first route that matches, the pattern; the static lookup comes first.
    assert (await answer(Router, "GET", "/items/new"))["body"]["endpoint"] == "item_by_name"
    assert (await answer(StaticFirstRouter, "GET", "/items/new"))["body"]["endpoint"] == "item_new"


async def test_a_static_path_with_the_wrong_method_is_a_405_even_if_a_later_pattern_takes_the_method() -> None:
    # Starlette keeps looking past a path-only match and finds /things/{name}, which takes POST.
    theirs = await answer(Router, "POST", "/things/special")
    assert (theirs["status"], theirs["body"]["endpoint"]) == (200, "thing")
    ours = await answer(StaticFirstRouter, "POST", "/things/special")
    assert (ours["status"], ours["allow"]) == (405, "GET, HEAD, POST")


@pytest.mark.parametrize("root_path", ["", "/pre"])
async def test_static_routes_in_a_mount_see_the_scope_starlettes_mount_gives(root_path: str) -> None:
    # Parameterised routes go through Starlette's Mount, which appends its prefix to `root_path`
    # and sets `app_root_path`; the static lookup sets both the same way, so a handler cannot tell
    # which path found it (and `url`, `base_url`, `url_for` agree too, compared above).
    static = (await answer(StaticFirstRouter, "GET", "/api/p/x", root_path))["body"]
    assert (static["root_path"], static["app_root_path"]) == (root_path + "/api/p", root_path)
    through_mount = (await answer(StaticFirstRouter, "GET", "/api/p/items/7", root_path))["body"]
    assert (through_mount["root_path"], through_mount["app_root_path"]) == (root_path + "/api/p", root_path)
    theirs = (await answer(Router, "GET", "/api/p/x", root_path))["body"]
    assert (theirs["root_path"], theirs["app_root_path"]) == (root_path + "/api/p", root_path)


# ---- other scopes ----


async def test_lifespan_goes_to_starlettes_handling() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    router = StaticFirstRouter(routes(), lifespan=lifespan)
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    await router({"type": "lifespan", "state": {}}, receive, send)
    assert events == ["startup", "shutdown"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
