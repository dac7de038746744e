"""The store's metrics, the same series in both backends so dashboards and alerts see them.

Operation and lock names are closed sets: operations are the interface's methods, lock names
are chosen by callers from their own fixed lists (a lock per purpose, never per key).
"""

from __future__ import annotations

from prometheus_client import Histogram

from observability.metrics import Metrics

OPERATIONS = (
    "get",
    "set",
    "set_if_absent",
    "delete",
    "compare_and_set",
    "compare_and_delete",
    "incr",
    "publish",
    "ping",
)
# A local Redis answers in well under a millisecond; the timeout (0.25 s by default) caps the rest.
OPERATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOCK_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StoreMetrics:
    """Created once per app; every labelled child of the closed operation set exists from the start."""

    def __init__(self, metrics: Metrics) -> None:
        self._up = metrics.gauge("store_up", "1 while the shared store answers, 0 while it is unreachable.")
        errors = metrics.counter(
            "store_operation_errors", "Store operations that failed or timed out.", labelnames=("operation",)
        )
        duration = metrics.histogram(
            "store_operation_duration_seconds",
            "Time a store operation took, failures included.",
            labelnames=("operation",),
            buckets=OPERATION_BUCKETS,
        )
        self._lock_wait = metrics.histogram(
            "store_lock_wait_seconds",
            "Time spent waiting for a store lock, whether it was had or not.",
            labelnames=("lock",),
            buckets=LOCK_WAIT_BUCKETS,
        )
        self.errors = {op: errors.labels(op) for op in OPERATIONS}
        self.duration = {op: duration.labels(op) for op in OPERATIONS}

    def set_up(self, up: bool) -> None:
        self._up.set(1 if up else 0)

    def lock_wait(self, lock: str) -> Histogram:
        return self._lock_wait.labels(lock)
