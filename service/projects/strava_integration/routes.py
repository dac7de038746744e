"""strava-integration's routes: each handler a module-level function of the project's parts.

The data routes (feed, activity, stats) are the hot path and are plain ASGI apps
(`CachedJSONRoute`); the rest are Starlette endpoints made by `service.routing.bind`. Each
handler's OpenAPI description sits on it; `routes` lists them all, in one table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from service.errors import ApiError, invalid_parameter
from service.http_cache import PreparedBody
from service.memo import RawMemo
from service.openapi import Param, describe
from service.projects.strava_integration import oauth
from service.projects.strava_integration.data import FeedQuery, Rendered
from service.projects.strava_integration.params import TIME_SCHEMA, int_param, time_param
from service.projects.strava_integration.parts import Strava
from service.projects.strava_integration.route_svg import MEDIA_TYPE, SVG_PARAMS, SVG_RESPONSES, RouteSvg
from service.projects.strava_integration.webhook import ASPECT_TYPES, MAX_ID, OBJECT_TYPES
from service.projects.strava_integration.widget import widget_routes
from service.routing import bind
from service.security import require_api_key

NAME = "strava-integration"
TAGS = [NAME]
log = structlog.get_logger("strava")


# ---- query parsing ----


def feed_query(scope: Scope) -> FeedQuery:
    """The parsed query, memoized by its raw bytes: a site asks the same few queries all day."""
    return _feed_queries(scope["query_string"])


def _parse_feed_query(params: QueryParams) -> FeedQuery:
    limit = int_param(params, "limit", 30, 1, 200)
    sport = params.get("sport_type") or None
    if sport is not None and (len(sport) > 40 or not sport.isascii() or not sport.isalpha()):
        raise invalid_parameter("sport_type", "a Strava sport type such as Run, Ride or TrailRun")
    after = time_param(params, "after")
    before = time_param(params, "before", round_up=True)
    if after is not None and before is not None and after >= before:
        raise invalid_parameter("before", "a time later than after")
    return FeedQuery(limit or 30, sport, after, before)


_feed_queries: RawMemo[FeedQuery] = RawMemo(lambda raw: _parse_feed_query(QueryParams(raw)))


# ---- the data routes ----

Load = Callable[[Strava, Scope], Awaitable[Rendered]]


class CachedJSONRoute:
    """A GET endpoint that serves one cached JSON body, as a plain ASGI app.

    The data routes are the hot path, so they skip what Starlette's `request_response` adds to
    every request (a `Request` object and an exception wrapper around `send`): `load` reads what
    it needs from the scope, and its errors (`ApiError`s, upstream ones included) go to the app's
    error boundary like everyone else's. It takes its name and description from `load`.
    """

    def __init__(self, load: Load, strava: Strava) -> None:
        self.__name__ = load.__name__  # Starlette names the route after it
        self.__openapi__ = getattr(load, "__openapi__", None)
        self.load = load
        self.strava = strava
        self.control = strava.control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rendered = await self.load(self.strava, scope)
        prepared = rendered.prepared
        if prepared is None:
            prepared = rendered.prepared = PreparedBody(rendered.body, rendered.etag, self.control)
        await prepared.for_request(scope)(scope, receive, send)


# Each may also be sent empty (`?sport_type=`), which means the same as leaving it out.
FEED_PARAMS = [
    Param(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 200, "default": 30},
        "How many activities.",
        allow_empty=True,
    ),
    Param("sport_type", {"type": "string", "pattern": "^[A-Za-z]{1,40}$"}, "Only this sport type.", allow_empty=True),
    Param("after", TIME_SCHEMA, "Started after this time.", allow_empty=True),
    Param("before", TIME_SCHEMA, "Started before this time.", allow_empty=True),
]
DATA_RESPONSES = {
    "200": "OK",
    "304": "Not modified (If-None-Match)",
    "406": "Accept-Encoding refuses identity and every coding we have",
    "422": "Invalid parameter",
    "502": "Strava failed and nothing is cached",
    "503": "Not configured, or the Strava budget is spent",
    "504": "Strava timed out and nothing is cached",
}
ADMIN_RESPONSES = {"401": "X-API-Key missing", "403": "X-API-Key wrong", "503": "Admin disabled or Strava unavailable"}


@describe("Public activities, newest first", params=FEED_PARAMS, responses=DATA_RESPONSES, tags=TAGS)
def feed(strava: Strava, scope: Scope) -> Awaitable[Rendered]:
    return strava.data.feed(feed_query(scope))


@describe("One public activity", responses={**DATA_RESPONSES, "404": "Unknown or not public"}, tags=TAGS)
def activity(strava: Strava, scope: Scope) -> Awaitable[Rendered]:
    return strava.data.activity(scope["path_params"]["activity_id"])


@describe("Athlete totals: recent, year to date, all time", responses=DATA_RESPONSES, tags=TAGS)
def stats(strava: Strava, scope: Scope) -> Awaitable[Rendered]:
    return strava.data.stats()


# ---- admin ----


@describe(
    "Start a refresh within the rate-limit budget",
    admin=True,
    responses={"202": "Accepted", **ADMIN_RESPONSES},
    tags=TAGS,
)
async def refresh(strava: Strava, request: Request) -> Response:
    require_api_key(request, strava.settings.admin_api_key)
    await strava.budget.sync()
    strava.budget.check()
    started = strava.data.refresh()
    return JSONResponse({"status": "accepted", "refreshing": started}, status_code=202)


@describe(
    "Token expiry, budget, cache ages, last errors", admin=True, responses={"200": "OK", **ADMIN_RESPONSES}, tags=TAGS
)
async def status(strava: Strava, request: Request) -> Response:
    require_api_key(request, strava.settings.admin_api_key)
    upstream = strava.client.status()
    body = {
        "sandbox": strava.settings.sandbox,
        "configured": strava.data.configured,
        "token": upstream["tokens"],
        "budget": upstream["budget"],
        "cache": strava.data.cache_status(),
        "last_upstream_error": upstream["last_upstream_error"],
        "webhook": strava.webhook.status(),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


# ---- webhook ----

# The JSON parser (orjson) reads integers up to 64 bits, unsigned; it refuses bigger ones.
EVENT_INT = {"type": "integer", "minimum": 0, "maximum": MAX_ID}


@describe(
    "Strava webhook subscription validation",
    params=[
        Param("hub.mode", {"type": "string", "enum": ["subscribe"]}, required=True),
        # The handler wants a non-empty printable string; Strava's challenge is printable ASCII.
        Param("hub.challenge", {"type": "string", "pattern": "^[ -~]{1,256}$"}, required=True),
        Param("hub.verify_token", {"type": "string", "maxLength": 512}, required=True),
    ],
    responses={"200": "Challenge echoed", "400": "Malformed", "403": "Wrong verify token"},
    tags=TAGS,
)
async def webhook_validate(strava: Strava, request: Request) -> Response:
    return await strava.webhook.validate(request)


@describe(
    "Strava webhook event (answered at once; work happens in the background)",
    request_body={
        "type": "object",
        "required": ["object_type", "object_id", "aspect_type", "owner_id", "subscription_id", "event_time"],
        "properties": {
            "object_type": {"type": "string", "enum": list(OBJECT_TYPES)},
            "object_id": EVENT_INT,
            "aspect_type": {"type": "string", "enum": list(ASPECT_TYPES)},
            "updates": {"type": "object"},
            "owner_id": EVENT_INT,
            "subscription_id": EVENT_INT,
            "event_time": EVENT_INT,
        },
    },
    responses={"200": "Received", "400": "Malformed JSON or event", "413": "Too large"},
    tags=TAGS,
)
async def webhook_receive(strava: Strava, request: Request) -> Response:
    return await strava.webhook.receive(request)


# ---- the owner's OAuth connect flow ----


@describe(
    "Start the owner's OAuth connect flow (redirects to Strava)",
    admin=True,
    responses={"302": "Redirect to Strava", **ADMIN_RESPONSES},
    tags=TAGS,
)
async def auth_start(strava: Strava, request: Request) -> Response:
    settings = strava.settings
    require_api_key(request, settings.admin_api_key)
    if not settings.client_id or not settings.client_secret:
        raise ApiError(503, "strava_not_configured", "Set STRAVA_CLIENT_ID and STRAVA_CLIENT_SECRET first.")
    redirect_uri = str(request.url_for(f"{NAME}:auth_callback"))
    url = oauth.authorize_url(settings.oauth_url, settings.client_id, redirect_uri, strava.signer.issue())
    return JSONResponse({"authorize_url": url}, status_code=302, headers={"Location": url, "Cache-Control": "no-store"})


@describe(
    "OAuth callback: exchanges the code and stores the tokens",
    params=[
        Param("code", {"type": "string", "maxLength": 512}),
        Param("state", {"type": "string", "maxLength": 200}),
        Param("scope", {"type": "string", "maxLength": 200}),
        Param("error", {"type": "string", "maxLength": 200}),
    ],
    responses={"200": "Connected", "400": "Denied, bad state or scope", **DATA_RESPONSES},
    tags=TAGS,
)
async def auth_callback(strava: Strava, request: Request) -> Response:
    params = request.query_params
    if params.get("error"):
        raise ApiError(400, "authorization_denied", "The owner did not authorize the app on Strava.")
    await strava.signer.redeem(params.get("state"))
    code = params.get("code")
    if not code or len(code) > 512 or not code.isascii() or not code.isprintable():
        raise invalid_parameter("code", "the authorization code Strava sent")
    oauth.check_scope(params.get("scope"))
    tokens = strava.client.tokens
    athlete = await tokens.exchange_code(code, params.get("scope"))
    await strava.data.purge()  # it may be another account now: on every instance
    log.info("strava_connected", athlete_id=tokens.athlete_id)
    return JSONResponse(
        {"status": "connected", "athlete_id": tokens.athlete_id or athlete.get("id")},
        headers={"Cache-Control": "no-store"},
    )


@describe(
    "Disconnect from Strava: revoke the grant (oauth/revoke), drop the tokens and every cached item",
    admin=True,
    responses={"200": "Disconnected (revoked_at_strava says whether Strava confirmed)", **ADMIN_RESPONSES},
    tags=TAGS,
)
async def auth_disconnect(strava: Strava, request: Request) -> Response:
    require_api_key(request, strava.settings.admin_api_key)
    revoked = await strava.client.tokens.disconnect()  # its on_revoked hook purges the data, on every instance
    log.warning("strava_disconnected", revoked_at_strava=revoked)
    return JSONResponse({"status": "disconnected", "revoked_at_strava": revoked}, headers={"Cache-Control": "no-store"})


def routes(strava: Strava) -> list[BaseRoute]:
    """Every route of the project, relative to /api/strava-integration."""
    return [
        Route("/feed", CachedJSONRoute(feed, strava), methods=["GET"]),
        Route("/activities/{activity_id:int}", CachedJSONRoute(activity, strava), methods=["GET"]),
        Route("/activities/{activity_id:int}/route.svg", route_svg(strava), methods=["GET"]),
        Route("/stats", CachedJSONRoute(stats, strava), methods=["GET"]),
        Route("/refresh", bind(refresh, strava), methods=["POST"]),
        Route("/status", bind(status, strava)),
        Route("/webhook", bind(webhook_validate, strava), methods=["GET"]),
        Route("/webhook", bind(webhook_receive, strava), methods=["POST"]),
        Route("/auth/start", bind(auth_start, strava)),
        Route("/auth/callback", bind(auth_callback, strava), name=f"{NAME}:auth_callback"),
        Route("/auth/disconnect", bind(auth_disconnect, strava), methods=["POST"]),
        *widget_routes(strava.settings),
    ]


def route_svg(strava: Strava) -> RouteSvg:
    """The route maps, drawn from the cached list; their render cache takes an eighth of the cache's bytes."""
    settings = strava.settings
    maps = RouteSvg(
        strava.data.route,
        strava.control,
        max_entries=settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes // 8,
    )
    return describe(
        "The activity's route as an SVG image",
        params=SVG_PARAMS,
        responses=SVG_RESPONSES,
        tags=TAGS,
        media_type=MEDIA_TYPE,
    )(maps)
