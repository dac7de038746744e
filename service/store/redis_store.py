"""The Redis (or Valkey) store, shared by every instance, on redis-py's asyncio client.

Every call is bounded twice: socket timeouts on the connection, and `asyncio.timeout` around the
whole call (pool wait included), so a hung server never holds a caller longer than `timeout_s`.
redis-py's own retries are off: a failure shows at once and the caller falls back to what it
holds. The first failure marks the store down; from then on operations fail at once without
touching the network, and a pinger (every `ping_interval_s`) is the only one probing. When it
gets an answer again, or sees that the server restarted (a new run_id: it may have come back
empty), it runs the reconnect hooks. Nothing here logs or raises the URL or its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from service.store.errors import StoreError, StoreUnavailable
from service.store.interface import Backend, ReconnectHook, Store, Subscriber, Unsubscribe, check_ttl
from service.store.metrics import StoreMetrics
from service.store.redis_location import RedisLocation
from service.store.redis_pubsub import RedisSubscriber

log = structlog.get_logger("service.store")

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 0.25
DEFAULT_MAX_CONNECTIONS = 16
PING_INTERVAL_S = 1.0
HOOK_TIMEOUT_S = 5.0

# KEYS[1]; ARGV: has_expected ("1"/"0"), expected, new, ttl in ms ("0" = none).
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"""
# KEYS[1]; ARGV: ttl in ms ("0" = none), given only to a key without an expiry.
_INCR = """
local value = redis.call('INCR', KEYS[1])
if ARGV[1] ~= '0' and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return value
"""
_COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


class RedisStore(Store):
    backend: Backend = "redis"

    def __init__(
        self,
        url: str,
        metrics: StoreMetrics,
        *,
        ca_cert: str | None = None,
        key_prefix: str = "siteapi:",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError("REDIS_TIMEOUT_SECONDS must be positive")
        self._location = RedisLocation.parse(url)
        tls: dict[str, Any] = {}
        if self._location.tls and ca_cert:
            try:
                ssl.create_default_context(cadata=ca_cert)  # refuse a bad PEM now, not at first use
            except (ssl.SSLError, ValueError):
                raise ValueError("REDIS_CA_CERT is not a PEM certificate") from None
            tls["ssl_ca_data"] = ca_cert
        self.metrics = metrics
        self.prefix = key_prefix
        self._timeout_s = timeout_s
        self._ping_interval_s = ping_interval_s
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                client_name="siteapi",
                **tls,
            )
        except Exception as exc:  # redis-py's URL parsing; its message may quote the URL
            raise ValueError(f"REDIS_URL: {self._location.scrub(str(exc))}") from None
        self._redis = Redis.from_pool(pool)
        self._cas = self._redis.register_script(_COMPARE_AND_SET)
        self._cad = self._redis.register_script(_COMPARE_AND_DELETE)
        self._incr = self._redis.register_script(_INCR)
        self._subscriber = RedisSubscriber(self._redis, self._location, timeout_s)
        self._hooks: list[ReconnectHook] = []
        self._up = False
        self._hooks_pending = False
        self._run_id: str | None = None
        self._info_refused = False  # the server refused INFO once: probe with PING from then on
        self._pinger: asyncio.Task[None] | None = None
        metrics.set_up(False)

    @property
    def up(self) -> bool:
        return self._up

    @property
    def location(self) -> str:
        return str(self._location)

    async def start(self) -> None:
        if self._pinger is not None:
            return
        if not await self.ping():
            self._hooks_pending = True  # when it answers, whatever we hold goes back in
        self._pinger = asyncio.create_task(self._ping_forever(), name="store-redis-pinger")
        self._subscriber.start()

    async def aclose(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        await self._subscriber.aclose()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(1.0, self._timeout_s)):
                await self._redis.aclose()

    # The calls

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        if not self._up and not probe:
            self.metrics.errors[operation].inc()
            raise StoreUnavailable(f"store: redis unreachable at {self._location}")
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                try:
                    return await call()
                except RedisConnectionError:
                    # A pooled connection the server closed (it restarted, or dropped idle clients):
                    # one more try, on a fresh connection, inside the same time limit. What redis-py's
                    # own retry would do, once; an outage still fails within the timeout.
                    return await call()
        except ResponseError as exc:
            # The server answered but refused (wrong type, read-only replica...): not an outage.
            self.metrics.errors[operation].inc()
            raise StoreError(f"store: redis refused {operation}: {self._location.scrub(str(exc))[:200]}") from None
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.errors[operation].inc()
            self._mark_down(operation, exc)
            raise StoreUnavailable(
                f"store: redis unreachable at {self._location} ({operation}: {type(exc).__name__})"
            ) from None
        finally:
            self.metrics.duration[operation].observe(time.perf_counter() - start)

    def _mark_down(self, operation: str, exc: BaseException) -> None:
        self._hooks_pending = True
        if self._up:
            self._up = False
            self.metrics.set_up(False)
            log.warning(
                "store_unreachable",
                location=str(self._location),
                operation=operation,
                error=type(exc).__name__,
                # e.g. a refused connection, a bad certificate; asyncio's timeout says nothing itself
                detail=self._location.scrub(str(exc))[:200] or f"no answer within {self._timeout_s:g} s",
            )

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str) -> bytes | None:
        # decode_responses is off: redis-py hands back the bytes as stored.
        return cast("bytes | None", await self._call("get", lambda: self._redis.get(self._key(key))))

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        px = None if ttl_s is None else _ms(ttl_s)
        await self._call("set", lambda: self._redis.set(self._key(key), value, px=px))

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        check_ttl(ttl_s)
        px = None if ttl_s is None else _ms(ttl_s)
        return bool(await self._call("set_if_absent", lambda: self._redis.set(self._key(key), value, px=px, nx=True)))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._call("delete", lambda: self._redis.delete(*(self._key(k) for k in keys))))

    async def compare_and_set(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        check_ttl(ttl_s)
        args = [b"0" if expected is None else b"1", expected or b"", new, b"0" if ttl_s is None else _ms(ttl_s)]
        return bool(await self._call("compare_and_set", lambda: self._cas(keys=[self._key(key)], args=args)))

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        return bool(await self._call("compare_and_delete", lambda: self._cad(keys=[self._key(key)], args=[expected])))

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        check_ttl(ttl_s)
        if ttl_s is None:
            return int(await self._call("incr", lambda: self._redis.incr(self._key(key))))
        args = [_ms(ttl_s)]
        return int(await self._call("incr", lambda: self._incr(keys=[self._key(key)], args=args)))

    async def publish(self, channel: str, message: bytes) -> None:
        await self._call("publish", lambda: self._redis.publish(self._key(channel), message))

    def subscribe(self, channel: str, callback: Subscriber) -> Unsubscribe:
        return self._subscriber.add(self._key(channel), callback)

    def on_reconnect(self, hook: ReconnectHook) -> None:
        self._hooks.append(hook)

    # Health

    async def ping(self) -> bool:
        """Probe the server once (also while down); runs the reconnect hooks when it is back."""
        try:
            if self._info_refused:
                await self._call("ping", lambda: self._redis.ping(), probe=True)
                info: dict[str, Any] = {}
            else:
                info = await self._call("ping", lambda: self._redis.info("server"), probe=True)
        except StoreUnavailable:
            return False
        except StoreError:
            if self._info_refused:  # PING refused too (NOAUTH, say): not usable
                return False
            # The server answers but refuses INFO (an ACL user without @dangerous, a managed server
            # that blocks it): PING says as well whether it is there; only its restarts go unseen.
            self._info_refused = True
            log.warning("store_info_refused", location=str(self._location), consequence="restarts are not detected")
            return await self.ping()
        run_id = str(info.get("run_id", ""))
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            self._hooks_pending = True
        if not self._up:
            self._up = True
            self.metrics.set_up(True)
            log.info("store_reachable", location=str(self._location))
        if self._hooks_pending:
            self._subscriber.reconnect()
            await self._run_hooks()
        return True

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval_s)
            await self.ping()

    async def _run_hooks(self) -> None:
        self._hooks_pending = False
        for hook in list(self._hooks):
            try:
                async with asyncio.timeout(HOOK_TIMEOUT_S):
                    await hook()
            except Exception as exc:
                # Try again at the next answer; the hooks are meant to be idempotent (write if absent).
                self._hooks_pending = True
                name = getattr(hook, "__qualname__", "?")
                log.warning("store_reconnect_hook_failed", hook=name, error=type(exc).__name__)
