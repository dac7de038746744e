"""The project's data path: route → here → cache → upstream client → Strava.

Three cached resources: the recent public activities (one upstream call fetches the newest
200), one public activity's detail, and the athlete's stats. Feed bodies are rendered from the
cached list once per (query, refresh) and kept, so a request costs a dict lookup.

With a shared store (REDIS_URL) the cache has a second tier there (cache.py), changes reach every
instance (invalidation.py), and hides are shared as `strava-integration:hidden`: `{"purged": n,
"ids": {id: [n, at]}}`, where n numbers the change. An entry whose load began before change n
loses what n hid, and is not served at all when a purge came after it began.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import structlog

from observability.metrics import Metrics
from observability.timestamps import iso_utc
from service.http_cache import etag_for
from service.projects.strava_integration import shape
from service.projects.strava_integration.cache import Lookup, SharedTier, SWRCache
from service.projects.strava_integration.client import StravaClient
from service.projects.strava_integration.config import StravaSettings
from service.projects.strava_integration.errors import (
    AccessUnconfirmed,
    NotConfigured,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotFound,
    UpstreamTimeout,
)
from service.projects.strava_integration.invalidation import Broadcast
from service.projects.strava_integration.privacy import Route, TrimmedRoutes
from service.projects.strava_integration.revocation import GrantGuard
from service.store import Store, StoreError

log = structlog.get_logger("strava.data")

MAX_HIDDEN = 10_000  # hides remembered between two list refreshes
FEED_WINDOW = 200  # newest activities fetched in one call; the feed and details draw from these
RENDERED_MAX = 256  # distinct feed queries kept rendered; as many details (and stats) besides
ACTIVITIES = "activities"
STATS = "stats"
ATHLETE = "athlete"
NAMESPACE = "strava-integration"  # the store keys' project part
HIDES_KEY = f"{NAMESPACE}:hidden"
HIDE_KEEP_S = 600  # longer than any load can be on its way (the lock's ttl), so no load misses a hide
CAS_TRIES = 8  # compare-and-set rounds before a contended shared update gives up
LOCK_WAIT_MAX_S = 5.0  # a waiter for another instance's load falls back to stale after this


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
        self,
        settings: StravaSettings,
        client: StravaClient,
        metrics: Metrics,
        clock: Callable[[], float],
        routes: TrimmedRoutes | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        # Every route handed out is trimmed here, in the loaders: once per refresh, before caching.
        self.routes = routes if routes is not None else TrimmedRoutes(settings.privacy_trim_meters)
        self._route_index: tuple[object, dict[int, Route]] | None = None  # (the list, its routes by id)
        # The in-process store (one instance) adds nothing to the cache in memory: no second tier.
        self.store = store if store is not None and store.backend != "memory" else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._purge_pending = False  # a purge the store did not take yet: done again when it answers
        self.shared: SharedTier | None = None
        self.broadcast: Broadcast | None = None
        if self.store is not None:
            wait_s = min(settings.request_timeout_seconds + 1, LOCK_WAIT_MAX_S)
            self.shared = SharedTier(
                self.store,
                NAMESPACE,
                lock_ttl_s=settings.request_timeout_seconds + 5,
                lock_wait_s=wait_s,
                busy=lambda: UpstreamTimeout(
                    "Another instance is loading this from Strava; try again shortly.", retry_after=round(wait_s)
                ),
                decode=_decode,
                refine=self._refine,
                on_written=lambda key, fetched_at: self._spawn(self.broadcast_fill(key, fetched_at)),
            )
            self.broadcast = Broadcast(self.store, NAMESPACE, apply=self._apply, on_gap=self._drop_local)
            self.store.on_reconnect(self._after_outage)
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
            shared=self.shared,
        )
        metrics.gauge("strava_cache_entries", "Entries in the Strava cache.").set_function(lambda: len(self.cache))
        metrics.gauge("strava_cache_bytes", "Bytes held by the Strava cache.").set_function(lambda: self.cache.bytes)
        self._rendered: OrderedDict[tuple[FeedQuery, float, bool, int], Rendered] = OrderedDict()
        # Details and stats, by (cache key, fetched_at, stale, id(value)), each with the value it
        # was rendered from: held here, that value's id cannot be reused while the entry lives.
        self._rendered_items: OrderedDict[tuple[str, float, bool, int], tuple[Any, Rendered]] = OrderedDict()
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
        hidden: dict[Any, int] = self._hidden  # looked up with whatever id Strava sent
        public = [a for a in raw if shape.is_public(a) and hidden.get(a.get("id"), 0) <= started_at_event]
        # Shaped from what warm trimmed (off the loop), whatever the memo kept of it.
        warmed = await self.routes.warm(shape.summary_polyline(a) for a in public)
        items = [shape.summary(a, warmed) for a in public]
        items.sort(key=lambda a: a["start_date"] or "", reverse=True)
        # Hides older than this list's request are reflected in it; newer ones must outlive it.
        self._hidden = {i: n for i, n in hidden.items() if n > started_at_event}
        value = tuple(items)
        return value, len(orjson.dumps(items))

    async def _load_activity(self, activity_id: int) -> tuple[Any, int]:
        raw = await self.client.activity(activity_id)
        if not shape.is_public(raw):
            raise UpstreamNotFound("No such public activity.")
        item = shape.detail(raw, await self.routes.warm([shape.summary_polyline(raw)]))
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
        athlete_id = await self._athlete_id()
        raw = await self.client.stats(athlete_id)
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
        key = f"activity:{activity_id}"
        lookup = await self.cache.get(key, lambda: self._load_activity(activity_id), "activity")
        return self._render(key, lookup, "activity")

    async def route(self, activity_id: int) -> Route | None:
        """The served (trimmed) route of a public activity in the feed window; None if hidden, unknown or route-less.

        Drawn from the cached list's items, so an SVG never shows more than the feed does, and a
        hide or a purge (a new list object, or none) takes the route away at once. Indexed by id
        once per list, so a request costs a dict lookup.
        """
        self._require_configured()
        lookup = await self.cache.get(ACTIVITIES, self._load_activities, "feed")
        index = self._route_index
        if index is None or index[0] is not lookup.value:
            routes = {
                a["id"]: Route(tuple(m["polylines"]), m["summary_polyline"], m["bounds"])
                for a in lookup.value
                if (m := a["map"]) is not None
            }
            index = self._route_index = (lookup.value, routes)
        return index[1].get(activity_id)

    async def stats(self) -> Rendered:
        self._require_configured()
        lookup = await self.cache.get(STATS, self._load_stats, "stats")
        return self._render(STATS, lookup)

    def _render(self, key: str, lookup: Lookup, field: str | None = None) -> Rendered:
        """The cached value as served (under `field`, or its own fields), rendered once per load.

        Kept like the feed's bodies, so a request costs a lookup, and the route's prepared
        response (its compressed variants) is built once too.
        """
        memo_key = (key, lookup.fetched_at, lookup.stale, id(lookup.value))
        entry = self._rendered_items.get(memo_key)
        if entry is not None:
            self._rendered_items.move_to_end(memo_key)
            return entry[1]
        body = {field: lookup.value} if field is not None else dict(lookup.value)
        body["updated_at"] = iso_utc(lookup.fetched_at)
        body["stale"] = lookup.stale
        raw = orjson.dumps(body)
        rendered = Rendered(raw, etag_for(raw))
        self._rendered_items[memo_key] = (lookup.value, rendered)
        while len(self._rendered_items) > RENDERED_MAX:
            self._rendered_items.popitem(last=False)
        return rendered

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
        list is fetched after the one in flight. With a shared store, every instance hides it
        too, and lists loaded elsewhere before the change lose it (see `_refine`).
        """
        self._hide_here(activity_id)
        if self.broadcast is not None:
            self._spawn(self._share_hide(activity_id))
            return
        self.cache.refresh_in_background(ACTIVITIES, self._load_activities, again=True)
        self.cache.refresh_in_background(STATS, self._load_stats, again=True)

    def _hide_here(self, activity_id: int) -> None:
        self._events += 1
        self._hidden[activity_id] = self._events
        if len(self._hidden) > MAX_HIDDEN:  # a flood of events: drop the oldest hides
            self._hidden = dict(list(self._hidden.items())[-MAX_HIDDEN:])
        self.cache.drop(f"activity:{activity_id}")
        self._rendered_items.clear()  # it may hold the hidden detail: not served, but not kept either
        entry = self.cache.peek(ACTIVITIES)
        if entry is not None:
            kept = tuple(a for a in entry.value if a["id"] != activity_id)
            if len(kept) != len(entry.value):
                entry.value = kept
                self._rendered.clear()

    async def _share_hide(self, activity_id: int) -> None:
        """Record the hide, take it out of the shared entries, tell everyone; then refetch here."""
        assert self.broadcast is not None and self.shared is not None and self.store is not None
        version: int | None = None
        try:
            version = await self.broadcast.next_version()
            await self._update_hides(
                lambda record: record["ids"].__setitem__(str(activity_id), [version, self.clock()])
            )
            await self._drop_from_shared_list(activity_id)
            await self.store.delete(self.shared.entry_key(f"activity:{activity_id}"))
        except StoreError as exc:
            # The others cannot hear of it now; they catch up at their next refresh. Ours goes on.
            log.warning("strava_hide_not_shared", error=type(exc).__name__)
        if version is not None:
            await self.broadcast.announce(version, "hide", id=activity_id)
        self.cache.refresh_in_background(ACTIVITIES, self._load_activities, again=True, min_version=version)
        self.cache.refresh_in_background(STATS, self._load_stats, again=True, min_version=version)

    async def _update_hides(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Read-modify-write of the shared hides, by compare-and-set; raises StoreError."""
        assert self.store is not None
        for _ in range(CAS_TRIES):
            raw = await self.store.get(HIDES_KEY)
            record = _hides(raw)
            change(record)
            now = self.clock()
            ids = {k: v for k, v in record["ids"].items() if now - v[1] <= HIDE_KEEP_S}
            record["ids"] = dict(list(ids.items())[-MAX_HIDDEN:])
            new = orjson.dumps(record)
            if await self.store.compare_and_set(HIDES_KEY, raw, new, ttl_s=self._entry_ttl()):
                return
        raise StoreError("store: the shared hides stayed contended")

    async def _drop_from_shared_list(self, activity_id: int) -> None:
        assert self.store is not None and self.shared is not None
        key = self.shared.entry_key(ACTIVITIES)
        for _ in range(CAS_TRIES):
            raw = await self.store.get(key)
            if raw is None:
                return
            try:
                record = orjson.loads(raw)
                kept = [a for a in record["value"] if a["id"] != activity_id]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                await self.store.delete(key)  # unreadable: nobody can use it anyway
                return
            if len(kept) == len(record["value"]):
                return
            record["value"] = kept
            if await self.store.compare_and_set(key, raw, orjson.dumps(record), ttl_s=self._entry_ttl()):
                return
        raise StoreError("store: the shared list stayed contended")

    def _entry_ttl(self) -> float:
        return self.settings.cache_ttl_seconds + self.settings.cache_stale_seconds

    async def _refine(self, key: str, value: Any, version: int | None) -> Any | None:
        """What the changes since `version` leave of a value loaded (anywhere) from that version on."""
        assert self.store is not None
        try:
            record = _hides(await self.store.get(HIDES_KEY))
        except StoreError:
            return value  # cannot tell: the instance that made a change also fixed the entries it knew
        # Unknown start (the version could not be read when it was loaded): every hide and every
        # purge applies, since it may have been loaded before any of them.
        since = -1 if version is None else version
        if record["purged"] > max(since, 0):
            return None
        hidden = {int(i) for i, (n, _) in record["ids"].items() if n > since}
        if not hidden:
            return value
        if key == ACTIVITIES:
            return tuple(a for a in value if a["id"] not in hidden)
        if key.startswith("activity:") and int(key.partition(":")[2]) in hidden:
            return None
        return value

    def _apply(self, message: dict[str, Any]) -> None:
        """Another instance's change, on this one."""
        kind = message.get("kind")
        if kind == "hide" and isinstance(message.get("id"), int):
            self._hide_here(message["id"])
        elif kind == "purge":
            self.forget_cached()
            # The grant may have ended there: re-reading the store, the token manager finds the
            # tombstone and drops the tokens held here, so no cache miss loads (and shares) with them.
            self._spawn(self.client.tokens.sync())
        elif kind == "fill" and isinstance(message.get("key"), str) and isinstance(message.get("at"), float | int):
            entry = self.cache.peek(message["key"])
            if entry is not None and entry.fetched_at < message["at"]:
                self.cache.drop(message["key"])  # the next request takes the fresher one from the store

    def _drop_local(self) -> None:
        log.info("strava_local_cache_dropped", reason="missed an invalidation")
        self.forget_cached()

    async def broadcast_fill(self, key: str, fetched_at: float) -> None:
        if self.broadcast is not None:
            await self.broadcast.tell("fill", key=key, at=fetched_at)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deauthorize(self) -> bool:
        """A deauthorization event: True if Strava confirmed it (the grant ended and everything was purged).

        Strava does not sign events, so each is checked with Strava first (see revocation.py):
        a forged one changes nothing and costs no API call; a real one purges within 2 s.
        """
        return await self.grant.deauthorization() == "revoked"

    async def purge(self, everywhere: bool = True) -> None:
        """Nothing cached of the owner's is served again, here or (`everywhere`) on any instance.

        The token manager's `on_revoked` too. Local memory first, before any await, so no request
        here sees the data after this starts. Then the shared entries go, and a purge version makes
        loads still on their way elsewhere unservable. A store that does not answer gets the purge
        again as soon as it does. `everywhere=False`: another instance ended the grant and told all.
        """
        self.forget_cached()
        log.warning("strava_cache_purged")
        if everywhere and self.broadcast is not None:
            self._purge_pending = True
            await self._share_purge()

    async def _share_purge(self) -> None:
        assert self.broadcast is not None and self.shared is not None and self.store is not None
        try:
            version = await self.broadcast.next_version()
            await self._update_hides(lambda record: record.__setitem__("purged", version))
            keys = [ACTIVITIES, STATS, ATHLETE]
            raw = await self.store.get(self.shared.entry_key(ACTIVITIES))
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                keys += [f"activity:{a['id']}" for a in orjson.loads(raw or b"")["value"]]
            await self.store.delete(*(self.shared.entry_key(k) for k in keys))
        except StoreError as exc:
            log.warning("strava_purge_not_shared", error=type(exc).__name__, note="done again when the store answers")
            return
        self._purge_pending = False
        await self.broadcast.announce(version, "purge")

    async def _after_outage(self) -> None:
        if self._purge_pending:
            await self._share_purge()

    def forget_cached(self) -> None:
        self.cache.clear()
        self._rendered.clear()
        self._rendered_items.clear()
        self._route_index = None  # it holds the purged list's routes

    async def start(self) -> None:
        """Listen for the other instances' changes (with a shared store; nothing otherwise)."""
        if self.broadcast is not None:
            await self.broadcast.start()

    def cache_status(self) -> dict[str, Any]:
        return {"entries": len(self.cache), "bytes": self.cache.bytes, "ages_s": self.cache.ages()}

    async def aclose(self) -> None:
        if self.broadcast is not None:
            await self.broadcast.aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.grant.aclose()
        await self.cache.aclose()


def _decode(value: Any) -> Any:
    """A stored value as the cache holds it: the activity list is a tuple (it is shared, never changed)."""
    return tuple(value) if isinstance(value, list) else value


def _hides(raw: bytes | None) -> dict[str, Any]:
    """The shared hides record, or an empty one for nothing (or anything unreadable)."""
    try:
        record = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("ids"), dict):
        return {"purged": 0, "ids": {}}
    purged = record.get("purged")
    return {"purged": purged if isinstance(purged, int) else 0, "ids": record["ids"]}


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
