"""The project's data path: route → here → cache → upstream client → Strava.

Three cached resources: the recent public activities (one upstream call fetches the newest
200), one public activity's detail, and the athlete's stats. Feed bodies are rendered from the
cached list once per (query, refresh) and kept, so a request costs a dict lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import structlog

from observability.metrics import Metrics
from service.http_cache import etag_for
from service.projects.strava_integration import shape
from service.projects.strava_integration.cache import Lookup, SWRCache
from service.projects.strava_integration.client import StravaClient
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.errors import (
    AccessUnconfirmed,
    NotConfigured,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotFound,
)
from service.projects.strava_integration.revocation import GrantGuard
from service.timestamps import iso_utc

log = structlog.get_logger("strava.data")

MAX_HIDDEN = 10_000  # hides remembered between two list refreshes
FEED_WINDOW = 200  # newest activities fetched in one call; the feed and details draw from these
RENDERED_MAX = 256  # distinct feed queries kept rendered
ACTIVITIES = "activities"
STATS = "stats"
ATHLETE = "athlete"


class Rendered:
    """A body serialized once, its ETag, and (set by the route) its ready-to-send response."""

    __slots__ = ("body", "etag", "prepared")

    def __init__(self, body: bytes, etag: str) -> None:
        self.body = body
        self.etag = etag
        self.prepared: Any = None


class FeedQuery(NamedTuple):
    """A tuple, so hashing it (the rendered-body key, every request) runs in C."""

    limit: int = 30
    sport_type: str | None = None
    after: int | None = None
    before: int | None = None


def _epoch(start_date: Any) -> float | None:
    if not isinstance(start_date, str):
        return None
    try:
        return datetime.fromisoformat(start_date.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class StravaData:
    def __init__(
        self, settings: StravaSettings, client: StravaClient, metrics: Metrics, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        # Plain numbers, read at scrape time: a prometheus-client child (a lock per increment)
        # would cost more than the cache hit it counts. Every series exists from the start.
        self._cache_counts: dict[tuple[str, str], int] = {
            (resource, result): 0 for resource in ("feed", "activity", "stats") for result in ("hit", "miss", "stale")
        }
        metrics.counter_from(
            "strava_cache_requests",
            "Cache lookups by resource and result.",
            ("resource", "result"),
            lambda: self._cache_counts,
        )
        self.cache = SWRCache(
            ttl=settings.cache_ttl_seconds,
            stale=settings.cache_stale_seconds,
            max_entries=settings.cache_max_entries,
            max_bytes=settings.cache_max_bytes,
            clock=clock,
            on_result=self._count_cache_result,
        )
        metrics.gauge("strava_cache_entries", "Entries in the Strava cache.").set_function(lambda: len(self.cache))
        metrics.gauge("strava_cache_bytes", "Bytes held by the Strava cache.").set_function(lambda: self.cache.bytes)
        self._rendered: OrderedDict[tuple[FeedQuery, float, bool, int], Rendered] = OrderedDict()
        self._events = 0  # activity events seen; numbers the hides below
        self._hidden: dict[int, int] = {}  # activity id -> the event that hid it
        # Whoever notices that the grant ended (a refused refresh, a confirmed deauthorization, a
        # disconnect) goes through the token manager, which runs this one hook.
        client.tokens.on_revoked = self.purge
        self.grant = GrantGuard(client.tokens, self.purge)

    def _count_cache_result(self, resource: str, result: str) -> None:
        self._cache_counts[resource, result] += 1

    @property
    def configured(self) -> bool:
        return self.settings.configured or self.settings.sandbox or self.client.tokens.connected

    def _require_configured(self) -> None:
        if not self.configured:
            raise NotConfigured()
        if self.grant.withheld:  # a deauthorization Strava could not confirm yet: privacy first
            raise AccessUnconfirmed(retry_after=self.grant.retry_after_s)

    # ---- loaders: one upstream attempt each, shaped and privacy-filtered before caching ----

    async def _load_activities(self) -> tuple[Any, int]:
        # A webhook event may arrive while this list is on its way: what it hid stays hidden.
        started_at_event = self._events
        raw = await self.client.activities(page=1, per_page=FEED_WINDOW)
        if not isinstance(raw, list):
            raise UpstreamBadResponse()
        for activity in raw[:1]:
            # The list belongs to the token's athlete: learn who that is, for the webhook's owner check.
            if isinstance(activity, dict) and isinstance(activity.get("athlete"), dict):
                self.client.tokens.learn_athlete(activity["athlete"].get("id"))
        hidden = self._hidden
        items = [shape.summary(a) for a in raw if shape.is_public(a) and hidden.get(a.get("id"), 0) <= started_at_event]
        items.sort(key=lambda a: a["start_date"] or "", reverse=True)
        # Hides older than this list's request are reflected in it; newer ones must outlive it.
        self._hidden = {i: n for i, n in hidden.items() if n > started_at_event}
        value = tuple(items)
        return value, len(orjson.dumps(items))

    async def _load_activity(self, activity_id: int) -> tuple[Any, int]:
        raw = await self.client.activity(activity_id)
        if not shape.is_public(raw):
            raise UpstreamNotFound("No such public activity.")
        item = shape.detail(raw)
        return item, len(orjson.dumps(item))

    async def _athlete_id(self) -> int:
        known = self.client.tokens.athlete_id
        if known:
            return known
        lookup = await self.cache.get(ATHLETE, self._load_athlete, "stats")
        return lookup.value

    async def _load_athlete(self) -> tuple[Any, int]:
        athlete = await self.client.athlete()
        athlete_id = athlete.get("id") if isinstance(athlete, dict) else None
        if not isinstance(athlete_id, int):
            raise UpstreamBadResponse()
        self.client.tokens.learn_athlete(athlete_id)
        return athlete_id, 8

    async def owner_id(self) -> int | None:
        """The connected athlete's id, asking Strava (once, cached) if no answer has told us yet."""
        try:
            return await self._athlete_id()
        except UpstreamError:
            return None

    async def _load_stats(self) -> tuple[Any, int]:
        raw = await self.client.stats(await self._athlete_id())
        value = shape.stats(raw if isinstance(raw, dict) else {})
        return value, len(orjson.dumps(value))

    # ---- what routes ask for ----

    async def feed(self, query: FeedQuery) -> Rendered:
        self._require_configured()
        lookup = await self.cache.get(ACTIVITIES, self._load_activities, "feed")
        # The list's identity too: two loads may share a timestamp (a coarse or a test clock).
        key = (query, lookup.fetched_at, lookup.stale, id(lookup.value))
        rendered = self._rendered.get(key)
        if rendered is not None:
            self._rendered.move_to_end(key)
            return rendered
        items = [a for a in lookup.value if _wanted(a, query)][: query.limit]
        body = orjson.dumps(
            {"activities": items, "count": len(items), "updated_at": iso_utc(lookup.fetched_at), "stale": lookup.stale}
        )
        rendered = self._rendered[key] = Rendered(body, etag_for(body))
        while len(self._rendered) > RENDERED_MAX:
            self._rendered.popitem(last=False)
        return rendered

    async def public_ids(self) -> frozenset[int]:
        lookup = await self.cache.get(ACTIVITIES, self._load_activities, "feed")
        return frozenset(a["id"] for a in lookup.value)

    async def activity(self, activity_id: int) -> Rendered:
        """Only activities in the public feed window are looked up: unknown or hidden ids cost no call."""
        self._require_configured()
        if activity_id not in await self.public_ids():
            raise UpstreamNotFound("No such public activity.")
        lookup = await self.cache.get(f"activity:{activity_id}", lambda: self._load_activity(activity_id), "activity")
        return self._render({"activity": lookup.value}, lookup)

    async def stats(self) -> Rendered:
        self._require_configured()
        lookup = await self.cache.get(STATS, self._load_stats, "stats")
        return self._render(dict(lookup.value), lookup)

    @staticmethod
    def _render(body: dict[str, Any], lookup: Lookup) -> Rendered:
        body["updated_at"] = iso_utc(lookup.fetched_at)
        body["stale"] = lookup.stale
        raw = orjson.dumps(body)
        return Rendered(raw, etag_for(raw))

    # ---- changes: admin refresh, webhook events, deauthorization ----

    def refresh(self) -> list[str]:
        """Start background refreshes of the shared resources; the caller checked the budget."""
        self._require_configured()
        self.cache.refresh_in_background(ACTIVITIES, self._load_activities)
        self.cache.refresh_in_background(STATS, self._load_stats)
        return [ACTIVITIES, STATS]

    def activity_changed(self, activity_id: int) -> None:
        """Hide it at once (it may have turned private or been deleted), then refetch in the background.

        A list already on its way was asked for before the change, so it must not bring the
        activity back: the id stays hidden from lists requested before this event, and a fresh
        list is fetched after the one in flight.
        """
        self._events += 1
        self._hidden[activity_id] = self._events
        if len(self._hidden) > MAX_HIDDEN:  # a flood of events: drop the oldest hides
            self._hidden = dict(list(self._hidden.items())[-MAX_HIDDEN:])
        self.cache.drop(f"activity:{activity_id}")
        entry = self.cache.peek(ACTIVITIES)
        if entry is not None:
            kept = tuple(a for a in entry.value if a["id"] != activity_id)
            if len(kept) != len(entry.value):
                entry.value = kept
                self._rendered.clear()
        self.cache.refresh_in_background(ACTIVITIES, self._load_activities, again=True)
        self.cache.refresh_in_background(STATS, self._load_stats, again=True)

    async def deauthorize(self) -> bool:
        """A deauthorization event: True if Strava confirmed it (the grant ended and everything was purged).

        Strava does not sign events, so each is checked with Strava first (see revocation.py):
        a forged one changes nothing and costs no API call; a real one purges within 2 s.
        """
        return await self.grant.deauthorization() == "revoked"

    async def purge(self, everywhere: bool = True) -> None:
        """The owner's grant ended: nothing of theirs is served again (the token manager's `on_revoked`).

        Local memory first, before any await, so no request sees the data after this starts. Once
        data is shared, `everywhere` says to purge the shared tier and tell the other instances too
        (False: another instance ended the grant and has told everyone already).
        """
        self.forget_cached()
        log.warning("strava_cache_purged")

    def forget_cached(self) -> None:
        self.cache.clear()
        self._rendered.clear()

    def cache_status(self) -> dict[str, Any]:
        return {"entries": len(self.cache), "bytes": self.cache.bytes, "ages_s": self.cache.ages()}

    async def aclose(self) -> None:
        await self.grant.aclose()
        await self.cache.aclose()


def _wanted(item: dict[str, Any], query: FeedQuery) -> bool:
    if query.sport_type is not None and item["sport_type"] != query.sport_type:
        return False
    if query.after is not None or query.before is not None:
        started = _epoch(item["start_date"])
        if started is None:
            return False
        if query.after is not None and started <= query.after:
            return False
        if query.before is not None and started >= query.before:
            return False
    return True
