"""strava-integration: routes, health and lifecycle, wired from the parts of this package."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from observability.health import CheckResult
from service.errors import ApiError, invalid_parameter
from service.http_cache import PreparedJSON, cache_control
from service.openapi import Param, describe
from service.projects.strava_integration import oauth
from service.projects.strava_integration.budget import Budget
from service.projects.strava_integration.client import StravaClient
from service.projects.strava_integration.config import DOCUMENTED, StravaSettings, parse_settings
from service.projects.strava_integration.data import FeedQuery, Rendered, StravaData
from service.projects.strava_integration.errors import AUTH_START_PATH, UpstreamError
from service.projects.strava_integration.sandbox import Sandbox
from service.projects.strava_integration.upstream_metrics import StravaMetrics
from service.projects.strava_integration.webhook import ASPECT_TYPES, MAX_ID, OBJECT_TYPES, Event, Webhook
from service.projects.strava_integration.widget import widget_routes
from service.registry import ProjectApp, ProjectContext, ProjectSpec
from service.security import require_api_key
from service.store import Store, build_store

__all__ = ["DOCUMENTED", "PROJECT"]
NAME = "strava-integration"
TAGS = [NAME]
MAX_EPOCH = 4_102_444_800  # 2100-01-01; anything later is a typo, not a date
log = structlog.get_logger("strava")

Handler = Callable[[Request], Awaitable[Response]]


def upstream_errors(handler: Handler) -> Handler:
    """Strava's failures become our JSON errors (502/503/504, Retry-After where known)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except UpstreamError as exc:
            raise exc.api_error() from None

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    if hasattr(handler, "__openapi__"):
        wrapped.__openapi__ = handler.__openapi__  # type: ignore[attr-defined]
    return wrapped


def _int_param(params: QueryParams, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or not lo <= int(raw) <= hi:
        raise invalid_parameter(name, f"an integer from {lo} to {hi}")
    return int(raw)


_QUERIES: dict[bytes, FeedQuery] = {}
_QUERIES_MAX = 1024


def feed_query(scope: Scope) -> FeedQuery:
    """The parsed query, memoized by its raw bytes: a site asks the same few queries all day."""
    raw = scope["query_string"]
    query = _QUERIES.get(raw)
    if query is None:
        query = _parse_feed_query(QueryParams(raw))  # invalid ones raise, and are not kept
        if len(_QUERIES) >= _QUERIES_MAX:
            _QUERIES.clear()
        _QUERIES[raw] = query
    return query


def _parse_feed_query(params: QueryParams) -> FeedQuery:
    limit = _int_param(params, "limit", 30, 1, 200)
    sport = params.get("sport_type") or None
    if sport is not None and (len(sport) > 40 or not sport.isascii() or not sport.isalpha()):
        raise invalid_parameter("sport_type", "a Strava sport type such as Run, Ride or TrailRun")
    after = _int_param(params, "after", None, 0, MAX_EPOCH)
    before = _int_param(params, "before", None, 0, MAX_EPOCH)
    if after is not None and before is not None and after >= before:
        raise invalid_parameter("before", "a time (epoch seconds) later than after")
    return FeedQuery(limit or 30, sport, after, before)


class CachedJSONRoute:
    """A GET endpoint that serves one cached JSON body, as a plain ASGI app.

    The data routes are the hot path, so they skip what Starlette's `request_response` adds to
    every request (a `Request` object and an exception wrapper around `send`): `load` reads what
    it needs from the scope, and errors go to the app's error boundary like everyone else's.
    """

    def __init__(self, name: str, load: Callable[[Scope], Awaitable[Rendered]], control: str) -> None:
        self.__name__ = name  # Starlette names the route after it
        self.load = load
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            rendered = await self.load(scope)
        except UpstreamError as exc:
            raise exc.api_error() from None
        prepared = rendered.prepared
        if prepared is None:
            prepared = rendered.prepared = PreparedJSON(rendered.body, rendered.etag, self.control)
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
    Param(
        "after",
        {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH},
        "Started after (epoch seconds).",
        allow_empty=True,
    ),
    Param(
        "before",
        {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH},
        "Started before (epoch seconds).",
        allow_empty=True,
    ),
]
# The JSON parser (orjson) reads integers up to 64 bits, unsigned; it refuses bigger ones.
EVENT_INT = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
DATA_RESPONSES = {
    "200": "OK",
    "304": "Not modified (If-None-Match)",
    "422": "Invalid parameter",
    "502": "Strava failed and nothing is cached",
    "503": "Not configured, or the Strava budget is spent",
    "504": "Strava timed out and nothing is cached",
}


def build(ctx: ProjectContext) -> ProjectApp:
    configured: StravaSettings = ctx.project_settings
    sandbox = Sandbox(configured) if configured.sandbox else None
    settings = sandbox.wire(configured) if sandbox else configured
    for secret in settings.secrets():
        ctx.redactor.add_secret(secret)
    metrics = StravaMetrics(ctx.metrics)
    budget = Budget(settings.budget_reserve, metrics, ctx.clock)
    store, own_store = _store_for(ctx)
    client = StravaClient(settings, metrics, ctx.redactor, ctx.clock, budget, store=store)
    data = StravaData(settings, client, ctx.metrics, ctx.clock)
    control = cache_control(settings.cache_ttl_seconds, settings.cache_stale_seconds)
    signer = oauth.StateSigner((settings.client_secret or "") + "\x00" + (settings.admin_api_key or ""), ctx.clock)

    async def on_event(event: Event) -> None:
        if client.tokens.athlete_id is None:
            # Nothing has told us whose grant we hold yet, so the webhook could not check the owner:
            # find out before acting on an event (a forged deauthorization would cost the tokens).
            owner = await data.owner_id()
            if owner is not None and owner != event.owner_id:
                log.info("webhook_ignored", reason="another athlete", object_type=event.object_type)
                return
        if event.deauthorization:
            await data.deauthorize()
        elif event.object_type == "activity":
            data.activity_changed(event.object_id)

    webhook = Webhook(
        verify_token=settings.webhook_verify_token,
        subscription_id=settings.webhook_subscription_id,
        owner_id=lambda: client.tokens.athlete_id,
        on_event=on_event,
        metrics=ctx.metrics,
    )

    feed = describe("Public activities, newest first", params=FEED_PARAMS, responses=DATA_RESPONSES, tags=TAGS)(
        CachedJSONRoute("feed", lambda scope: data.feed(feed_query(scope)), control)
    )
    activity = describe("One public activity", responses={**DATA_RESPONSES, "404": "Unknown or not public"}, tags=TAGS)(
        CachedJSONRoute("activity", lambda scope: data.activity(scope["path_params"]["activity_id"]), control)
    )
    stats = describe("Athlete totals: recent, year to date, all time", responses=DATA_RESPONSES, tags=TAGS)(
        CachedJSONRoute("stats", lambda scope: data.stats(), control)
    )

    admin = {"401": "X-API-Key missing", "403": "X-API-Key wrong", "503": "Admin disabled or Strava unavailable"}

    @describe(
        "Start a refresh within the rate-limit budget", admin=True, responses={"202": "Accepted", **admin}, tags=TAGS
    )
    @upstream_errors
    async def refresh(request: Request) -> Response:
        require_api_key(request, settings.admin_api_key)
        budget.check()
        started = data.refresh()
        return JSONResponse({"status": "accepted", "refreshing": started}, status_code=202)

    @describe("Token expiry, budget, cache ages, last errors", admin=True, responses={"200": "OK", **admin}, tags=TAGS)
    async def status(request: Request) -> Response:
        require_api_key(request, settings.admin_api_key)
        upstream = client.status()
        body = {
            "sandbox": settings.sandbox,
            "configured": data.configured,
            "token": upstream["tokens"],
            "budget": upstream["budget"],
            "cache": data.cache_status(),
            "last_upstream_error": upstream["last_upstream_error"],
            "webhook": webhook.status(),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

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
    async def webhook_validate(request: Request) -> Response:
        return await webhook.validate(request)

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
    async def webhook_receive(request: Request) -> Response:
        return await webhook.receive(request)

    @describe(
        "Start the owner's OAuth connect flow (redirects to Strava)",
        admin=True,
        responses={"302": "Redirect to Strava", **admin},
        tags=TAGS,
    )
    async def auth_start(request: Request) -> Response:
        require_api_key(request, settings.admin_api_key)
        if not settings.client_id or not settings.client_secret:
            raise ApiError(503, "strava_not_configured", "Set STRAVA_CLIENT_ID and STRAVA_CLIENT_SECRET first.")
        redirect_uri = str(request.url_for(f"{NAME}:auth_callback"))
        url = oauth.authorize_url(settings.oauth_url, settings.client_id, redirect_uri, signer.issue())
        return JSONResponse(
            {"authorize_url": url}, status_code=302, headers={"Location": url, "Cache-Control": "no-store"}
        )

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
    @upstream_errors
    async def auth_callback(request: Request) -> Response:
        params = request.query_params
        if params.get("error"):
            raise ApiError(400, "authorization_denied", "The owner did not authorize the app on Strava.")
        signer.verify(params.get("state"))
        code = params.get("code")
        if not code or len(code) > 512 or not code.isascii() or not code.isprintable():
            raise invalid_parameter("code", "the authorization code Strava sent")
        oauth.check_scope(params.get("scope"))
        athlete = await client.tokens.exchange_code(code, params.get("scope"))
        data.forget_cached()  # it may be another account now
        log.info("strava_connected", athlete_id=client.tokens.athlete_id)
        return JSONResponse(
            {"status": "connected", "athlete_id": client.tokens.athlete_id or athlete.get("id")},
            headers={"Cache-Control": "no-store"},
        )

    @describe(
        "Disconnect from Strava: revoke the grant (oauth/revoke), drop the tokens and every cached item",
        admin=True,
        responses={"200": "Disconnected (revoked_at_strava says whether Strava confirmed)", **admin},
        tags=TAGS,
    )
    async def auth_disconnect(request: Request) -> Response:
        require_api_key(request, settings.admin_api_key)
        revoked = await client.tokens.disconnect()  # its on_revoked hook purges the data
        log.warning("strava_disconnected", revoked_at_strava=revoked)
        return JSONResponse(
            {"status": "disconnected", "revoked_at_strava": revoked}, headers={"Cache-Control": "no-store"}
        )

    async def health() -> CheckResult:
        where = "sandbox (built-in Strava simulator)" if settings.sandbox else "strava.com"
        if not data.configured:
            return CheckResult(
                "warn",
                output="not configured: set STRAVA_CLIENT_ID, STRAVA_CLIENT_SECRET and STRAVA_REFRESH_TOKEN, "
                f"or authorize at {AUTH_START_PATH}",
                observed_value="unconfigured",
            )
        tokens = client.tokens.status()
        if data.grant.withheld:
            return CheckResult(
                "warn",
                output=f"{where}: a deauthorization could not be confirmed with Strava yet; "
                "the owner's data is withheld until it is",
                observed_value="deauthorization_unconfirmed",
            )
        if not tokens["auth_ok"]:
            if tokens["ended"] == "disconnected":
                return CheckResult("warn", output=tokens["last_error"], observed_value="disconnected")
            if tokens["credentials_rejected"]:  # a configuration error: re-authorizing would not help
                return CheckResult("fail", output=tokens["last_error"], observed_value="credentials_rejected")
            return CheckResult(
                "fail",
                output=tokens.get("last_error") or f"no usable Strava token; re-authorize at {AUTH_START_PATH}",
                observed_value="revoked" if tokens["ended"] == "revoked" else "auth_failed",
            )
        until = budget.blocked_until()
        if until is not None:
            return CheckResult(
                "warn", output=f"{where}: rate-limit budget spent; serving cached data", observed_value="budget_blocked"
            )
        failure = client.failing()
        if failure is not None:
            # Visitors still get cached data (stale) or a clear 5xx; the operator should know why.
            return CheckResult(
                "warn",
                output=f"{where}: the last Strava call failed ({failure['code']}); serving cached data if there is any",
                observed_value=failure["code"],
            )
        ages = data.cache.ages()
        return CheckResult(
            "pass",
            output=f"{where}: ok",
            observed_value=ages.get("activities"),
            observed_unit="s" if "activities" in ages else None,
        )

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if sandbox is not None:
                url = await stack.enter_async_context(sandbox.serve())
                log.warning("strava_sandbox", simulator=url, note="SANDBOX: serving simulated Strava data")
            if own_store:
                await store.start()
                stack.push_async_callback(store.aclose)  # last: the client may still write the token set
            stack.push_async_callback(client.aclose)
            stack.push_async_callback(data.aclose)
            stack.push_async_callback(webhook.aclose)
            await client.start()
            yield

    def info() -> dict[str, Any]:
        return {"sandbox": settings.sandbox, "configured": data.configured}

    routes = [
        Route("/feed", feed, methods=["GET"]),
        Route("/activities/{activity_id:int}", activity, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/refresh", refresh, methods=["POST"]),
        Route("/status", status),
        Route("/webhook", webhook_validate, methods=["GET"]),
        Route("/webhook", webhook_receive, methods=["POST"]),
        Route("/auth/start", auth_start),
        Route("/auth/callback", auth_callback, name=f"{NAME}:auth_callback"),
        Route("/auth/disconnect", auth_disconnect, methods=["POST"]),
        *widget_routes(settings),
    ]
    return ProjectApp(routes=routes, health=health, lifespan=lifespan, info=info)


def _store_for(ctx: ProjectContext) -> tuple[Store, bool]:
    """The app's shared store, and whether this project must start and close it.

    TEMPORARY until create_app puts the store into the ProjectContext (`ctx.store`): meanwhile the
    project builds its own from the same settings (REDIS_URL unset: the in-process store).
    """
    shared: Store | None = getattr(ctx, "store", None)
    if shared is not None:
        return shared, False
    s = ctx.settings
    store = build_store(
        s.redis_url,
        ctx.metrics,
        ca_cert=s.redis_ca_cert,
        key_prefix=s.redis_key_prefix,
        timeout_s=s.redis_timeout_seconds,
        clock=ctx.clock,
    )
    return store, True


PROJECT = ProjectSpec(
    name=NAME,
    description="The owner's Strava activities as a cached, privacy-safe feed.",
    version="1.0.0",
    parse_settings=parse_settings,
    build=build,
)
