"""Shared state for projects: one small interface, an in-process and a Redis implementation."""

from service.store.errors import LockUnavailable, StoreError, StoreUnavailable
from service.store.factory import build_store
from service.store.health import store_check
from service.store.interface import Store
from service.store.lock import StoreLock
from service.store.memory import MemoryStore
from service.store.metrics import StoreMetrics
from service.store.redis_store import RedisStore

__all__ = [
    "LockUnavailable",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreError",
    "StoreLock",
    "StoreMetrics",
    "StoreUnavailable",
    "build_store",
    "store_check",
]
