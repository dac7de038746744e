"""strava-integration's handlers (routes.py), each called alone with stand-in parts.

A handler reads only the attributes of `Strava` it uses, so a stand-in with those attributes
is enough. The end-to-end checks (real app, real uvicorn, the simulator) are in test_strava_api,
test_strava_oauth and test_strava_webhook.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.types import Message, Scope

from observability.metrics import HttpMetrics
from observability.middleware import ObservabilityMiddleware
from service.errors import EXCEPTION_HANDLERS, ApiError, ErrorBoundary
from service.projects.strava_integration import routes
from service.projects.strava_integration.data import FeedQuery, Rendered
from service.projects.strava_integration.errors import BudgetExhausted, UpstreamTimeout
from tests.support import drive

KEY = "admin-key-0123456789"


def admin_request(key: str | None = KEY) -> Request:
    headers = [(b"x-api-key", key.encode())] if key else []
    return Request({"type": "http", "method": "POST", "path": "/refresh", "query_string": b"", "headers": headers})


class Budget:
    def __init__(self, blocked_for: int | None) -> None:
        self.blocked_for = blocked_for

    async def sync(self) -> None:
        """The shared view would be read here; this stand-in has only its own."""

    def check(self) -> None:
        if self.blocked_for is not None:
            raise BudgetExhausted(self.blocked_for)


def parts(blocked_for: int | None = None, **data: Any) -> Any:
    return SimpleNamespace(
        settings=SimpleNamespace(admin_api_key=KEY),
        budget=Budget(blocked_for),
        data=SimpleNamespace(refresh=lambda: True, **data),
        control="public, max-age=60",
    )


async def test_refresh_needs_the_key_then_starts_a_refresh() -> None:
    with pytest.raises(ApiError) as missing:
        await routes.refresh(parts(), admin_request(None))
    assert missing.value.status == 401
    accepted = await routes.refresh(parts(), admin_request())
    assert accepted.status_code == 202 and orjson.loads(accepted.body) == {"status": "accepted", "refreshing": True}


async def test_refresh_with_the_budget_spent_raises_the_upstream_error_as_an_api_error() -> None:
    with pytest.raises(ApiError) as spent:
        await routes.refresh(parts(blocked_for=42), admin_request())
    assert (spent.value.status, spent.value.code, spent.value.headers) == (
        503,
        "strava_budget_exhausted",
        {"Retry-After": "42"},
    )


def serve(route: routes.CachedJSONRoute, query: bytes = b"") -> list[dict[str, Any]]:
    """One GET through the outermost middleware and the app's error boundary, as in the app."""
    app = ObservabilityMiddleware(
        route, metrics=HttpMetrics(), route_templates={}, errors=ErrorBoundary(EXCEPTION_HANDLERS)
    )
    scope: Scope = {"type": "http", "method": "GET", "path": "/feed", "query_string": query, "headers": []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    asyncio.run(drive(app, scope, receive, send))
    return sent


def test_a_data_route_serves_the_rendered_body_for_the_parsed_query() -> None:
    asked: list[FeedQuery] = []

    async def feed(query: FeedQuery) -> Rendered:
        asked.append(query)
        return Rendered(b'{"activities":[]}', '"e1"')

    sent = serve(routes.CachedJSONRoute(routes.feed, parts(feed=feed)), b"limit=5&sport_type=Run")
    assert sent[0]["status"] == 200 and sent[-1]["body"] == b'{"activities":[]}'
    assert asked == [FeedQuery(5, "Run", None, None)]


def test_a_feed_query_padded_past_the_memo_bound_is_answered_but_not_kept() -> None:
    asked: list[FeedQuery] = []

    async def feed(query: FeedQuery) -> Rendered:
        asked.append(query)
        return Rendered(b'{"activities":[]}', '"e1"')

    padded = b"limit=5&sport_type=Run" + b"&" * 16_000
    route = routes.CachedJSONRoute(routes.feed, parts(feed=feed))
    for _ in range(2):
        sent = serve(route, padded)
        assert sent[0]["status"] == 200 and sent[-1]["body"] == b'{"activities":[]}'
    assert asked == [FeedQuery(5, "Run", None, None)] * 2
    assert padded not in routes._feed_queries.entries
    assert all(len(key) <= routes._feed_queries.max_key for key in routes._feed_queries.entries)


def test_a_data_routes_upstream_failure_and_bad_query_are_rendered_by_the_one_error_path() -> None:
    async def timeout(query: FeedQuery) -> Rendered:
        raise UpstreamTimeout()

    route = routes.CachedJSONRoute(routes.feed, parts(feed=timeout))
    sent = serve(route)
    assert sent[0]["status"] == 504 and orjson.loads(sent[-1]["body"])["error"] == "strava_timeout"
    sent = serve(route, b"limit=500")
    assert sent[0]["status"] == 422 and orjson.loads(sent[-1]["body"])["parameter"] == "limit"


def test_a_data_route_takes_its_name_and_description_from_its_loader() -> None:
    route = routes.CachedJSONRoute(routes.stats, parts())
    assert route.__name__ == "stats" and route.__openapi__ is not None
    assert route.__openapi__.summary.startswith("Athlete totals")
