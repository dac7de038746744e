"""Prometheus metrics: the per-request series, build info, and the API projects register with.

Request metrics are the hot path, so they do not go through prometheus-client's labelled
children (a lock and a label lookup per call). `HttpMetrics` keeps plain counters per
(method, route, status) and turns them into metric families only when scraped. Everything runs
on the event loop thread, so the counters need no lock. The label sets are closed by the
middleware (route templates, a fixed method set, integer statuses), so the series are bounded.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

PREFIX = "siteapi_"
# prometheus-client's defaults, which match OpenTelemetry's for seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
OTHER_METHOD = "_OTHER"
UNMATCHED_ROUTE = "__unmatched__"
LABELS = ("method", "route", "status")


_SIZE_BOUNDS = tuple(int(b) for b in SIZE_BUCKETS)  # bisected with the int size: int compares are cheaper


class _Series:
    # No separate count: it is the sum of the duration buckets, added up at scrape time.
    __slots__ = ("duration_buckets", "duration_sum", "size_buckets", "size_sum")

    def __init__(self) -> None:
        self.duration_sum = 0.0
        self.size_sum = 0
        # Per-bucket (not cumulative) counts; the last slot is +Inf. Cumulated at scrape time.
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.size_buckets = [0] * (len(SIZE_BUCKETS) + 1)


def _cumulative(bounds: Sequence[float], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out


class HttpMetrics(Collector):
    """Request counter, duration and size histograms, and the in-flight gauge."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.in_progress = 0
        self._series: dict[tuple[str, str, int], _Series] = {}

    def observe(self, method: str, route: str, status: int, duration: float, size: int) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.duration_sum += duration
        series.duration_buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        series.size_sum += size
        series.size_buckets[bisect_left(_SIZE_BOUNDS, size)] += 1

    def series_count(self) -> int:
        return len(self._series)

    def collect(self) -> Iterator[Metric]:
        p = self.prefix
        requests = CounterMetricFamily(f"{p}http_requests", "HTTP requests served.", labels=LABELS)
        duration = HistogramMetricFamily(
            f"{p}http_request_duration_seconds",
            "Time from the request's arrival to its last response byte.",
            labels=LABELS,
        )
        size = HistogramMetricFamily(f"{p}http_response_size_bytes", "Response body size.", labels=LABELS)
        for (method, route, status), s in list(self._series.items()):
            labels = [method, route, str(status)]
            requests.add_metric(labels, sum(s.duration_buckets))
            duration.add_metric(labels, _cumulative(DURATION_BUCKETS, s.duration_buckets), s.duration_sum)
            size.add_metric(labels, _cumulative(SIZE_BUCKETS, s.size_buckets), s.size_sum)
        yield requests
        yield duration
        yield size
        in_progress = GaugeMetricFamily(f"{p}http_requests_in_progress", "HTTP requests being served now.")
        in_progress.add_metric([], self.in_progress)
        yield in_progress


class _BuildInfo(Collector):
    def __init__(self, prefix: str, version: str) -> None:
        self._family = GaugeMetricFamily(
            f"{prefix}build_info", "Build information; always 1.", labels=("version", "python_version")
        )
        self._family.add_metric([version, platform.python_version()], 1)

    def collect(self) -> Iterator[Metric]:
        yield self._family


# Label values (one per label name) to a count; a TypeVar so a caller's own tuple type is accepted.
Labels = TypeVar("Labels", bound=tuple[str, ...])
Values = Callable[[], Mapping[Any, float]]


class _ValuesCounter(Collector):
    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], values: Values) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values = values

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values().items()):
            family.add_metric(list(labels), value)
        yield family


class Metrics:
    """One registry per app, so tests and apps never share counters.

    Projects register their own metrics through `counter`, `gauge` and `histogram`; names get
    the service prefix, so a project cannot collide with another service's metrics.
    """

    def __init__(self, version: str, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self.http = HttpMetrics(prefix)
        self.registry.register(self.http)
        self.registry.register(_BuildInfo(prefix, version))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return Counter(self.prefix + name, documentation, labelnames, registry=self.registry)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return Gauge(self.prefix + name, documentation, labelnames, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> Histogram:
        return Histogram(self.prefix + name, documentation, labelnames, registry=self.registry, buckets=buckets)

    def counter_from(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        values: Callable[[], Mapping[Labels, float]],
    ) -> None:
        """A counter the caller keeps as plain numbers and `values` hands over at scrape time.

        For counts on a hot path of the event loop: no lock and no label lookup per increment,
        as the request metrics. The caller owns the label values, so it keeps them bounded.
        """
        self.registry.register(_ValuesCounter(self.prefix + name, documentation, tuple(labelnames), values))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
