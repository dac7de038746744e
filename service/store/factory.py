"""Which store an app gets: Redis when REDIS_URL is set, else the in-process one."""

from __future__ import annotations

import time
from collections.abc import Callable

from observability.metrics import Metrics
from service.store.interface import Store
from service.store.memory import MemoryStore
from service.store.metrics import StoreMetrics
from service.store.redis_store import DEFAULT_TIMEOUT_S, RedisStore


def build_store(
    redis_url: str | None,
    metrics: Metrics,
    *,
    ca_cert: str | None = None,
    key_prefix: str = "siteapi:",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    clock: Callable[[], float] = time.time,
) -> Store:
    """Raises ValueError (with a message free of credentials) on a bad URL, CA or timeout."""
    store_metrics = StoreMetrics(metrics)
    if not redis_url:
        return MemoryStore(store_metrics, clock)
    return RedisStore(redis_url, store_metrics, ca_cert=ca_cert, key_prefix=key_prefix, timeout_s=timeout_s)
