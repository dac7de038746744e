"""strava-integration: its parts wired together; the routes are in `routes.py`.

`build` only wires: it makes each part once, hands them to the routes as one `Strava` object
(`parts.py`), and returns the project's routes, health check, lifespan and info.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import structlog

from observability.health import CheckResult
from service import __version__
from service.http_cache import cache_control
from service.projects.strava_integration import oauth
from service.projects.strava_integration.budget import Budget
from service.projects.strava_integration.client import StravaClient
from service.projects.strava_integration.config import DOCUMENTED, StravaSettings, parse_settings
from service.projects.strava_integration.data import StravaData
from service.projects.strava_integration.errors import AUTH_START_PATH
from service.projects.strava_integration.parts import Strava
from service.projects.strava_integration.privacy import TrimmedRoutes
from service.projects.strava_integration.routes import NAME, routes
from service.projects.strava_integration.sandbox import Sandbox
from service.projects.strava_integration.upstream_metrics import StravaMetrics
from service.projects.strava_integration.webhook import Event, Webhook
from service.registry import ProjectApp, ProjectContext, ProjectSpec

__all__ = ["DOCUMENTED", "PROJECT"]
log = structlog.get_logger("strava")


def build(ctx: ProjectContext[StravaSettings]) -> ProjectApp:
    configured = ctx.project_settings
    sandbox = Sandbox(configured) if configured.sandbox else None
    settings = sandbox.wire(configured) if sandbox else configured
    # Every configured secret, before anything can log it; tokens learned later are added as they come.
    for secret in settings.secrets():
        ctx.redactor.add_secret(secret)
    metrics = StravaMetrics(ctx.metrics)
    store = ctx.store
    budget = Budget(settings.budget_reserve, metrics, ctx.clock, store)
    client = StravaClient(settings, metrics, ctx.redactor, ctx.clock, budget, store=store)
    # The trim memo and the rendered maps (routes.py) each take an eighth of the cache's byte bound.
    trimmed = TrimmedRoutes(settings.privacy_trim_meters, max_chars=settings.cache_max_bytes // 8)
    data = StravaData(settings, client, ctx.metrics, ctx.clock, routes=trimmed, store=store)
    webhook = Webhook(
        verify_token=settings.webhook_verify_token,
        subscription_id=settings.webhook_subscription_id,
        owner_id=lambda: client.tokens.athlete_id,
        on_event=partial(on_webhook_event, client, data),
        metrics=ctx.metrics,
        store=store,
        clock=ctx.clock,
    )
    secret = (settings.client_secret or "") + "\x00" + (settings.admin_api_key or "")
    strava = Strava(
        settings=settings,
        client=client,
        data=data,
        budget=budget,
        webhook=webhook,
        signer=oauth.StateSigner(secret, ctx.clock, store),
        control=cache_control(settings.cache_ttl_seconds, settings.cache_stale_seconds),
        sandbox=sandbox,
    )
    return ProjectApp(
        routes=routes(strava),
        health=partial(health, strava),
        lifespan=partial(lifespan, strava),
        info=partial(info, strava),
    )


async def on_webhook_event(client: StravaClient, data: StravaData, event: Event) -> None:
    """What an accepted webhook event does: drop what it changed, or forget the owner's data."""
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


async def health(strava: Strava) -> CheckResult:
    settings, data, client = strava.settings, strava.data, strava.client
    where = "sandbox (built-in Strava simulator)" if settings.sandbox else "strava.com"
    if not data.configured:
        return CheckResult(
            "warn",
            output="not configured: set STRAVA_CLIENT_ID, STRAVA_CLIENT_SECRET and STRAVA_REFRESH_TOKEN, "
            f"or authorize at {AUTH_START_PATH}",
            observed_value="unconfigured",
        )
    if data.grant.withheld:
        return CheckResult(
            "warn",
            output=f"{where}: a deauthorization could not be confirmed with Strava yet; "
            "the owner's data is withheld until it is",
            observed_value="deauthorization_unconfirmed",
        )
    tokens = client.tokens.status()
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
    until = strava.budget.blocked_until()
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
async def lifespan(strava: Strava) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        if strava.sandbox is not None:
            url = await stack.enter_async_context(strava.sandbox.serve())
            log.warning("strava_sandbox", simulator=url, note="SANDBOX: serving simulated Strava data")
        stack.push_async_callback(strava.client.aclose)
        stack.push_async_callback(strava.data.aclose)
        stack.push_async_callback(strava.webhook.aclose)
        stack.push_async_callback(strava.budget.aclose)
        await strava.client.start()
        await strava.data.start()
        yield


def info(strava: Strava) -> dict[str, Any]:
    return {"sandbox": strava.settings.sandbox, "configured": strava.data.configured}


PROJECT: ProjectSpec[StravaSettings] = ProjectSpec(
    name=NAME,
    description="The owner's Strava activities as a cached, privacy-safe feed.",
    version=__version__,  # it ships in, and versions with, the service
    parse_settings=parse_settings,
    build=build,
)
