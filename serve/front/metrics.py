"""The front's own Prometheus metrics, counted off the request path, and GET /metrics.

Triton exports its metrics itself; these are what only the front sees:
requests, status codes and latency per route and content type, model loads
and unloads, and the environment cache's work. nginx's access log carries the
requests (serve/front/access_log.py has how it is written and followed); totals are
kept here and turned into metric families only when Prometheus scrapes.

`PublicMetrics` answers GET /metrics on the public port (SageMaker's detailed
observability scrapes it): Triton's metrics, read from loopback with stable
labels (serve/triton/metrics.py), and the front's, in one exposition.

Figures lag requests by up to about a second (nginx's flush interval plus
one poll). nginx measures request time in milliseconds, so the smallest
latency bucket is 1 ms.

Names follow Prometheus' conventions as prometheus_client writes them:
`serve_` prefix, base units (seconds, bytes), `_total` on counters.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from serve.errors import ConfigError
from serve.front.access_log import (
    KNOWN_METHODS,
    AccessLogFollower,
    content_type_of,
    load_outcome,
    nginx_reopener,
    route_of,
    unload_outcome,
)
from serve.triton.metrics import EXPOSITION_TYPE, TritonMetrics

log = logging.getLogger(__name__)

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

_CACHE_LIMIT = 4096


class EnvironmentCounters(Protocol):
    """What is read from an environment cache (serve.artifacts.environments.EnvironmentCache)."""

    hits: int
    misses: int
    bytes_extracted: int


class _Histogram:
    """Bucket counts (not cumulative) and a sum; cumulated when scraped."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))
        return cumulative


class FrontMetrics(Collector):
    """Totals from nginx's access log and from serve's own events, exported on scrape.

    `observe_lines` is called by the log follower with raw lines; the
    `record_*` methods by `serve` itself. Everything is guarded by one lock,
    held once per batch of lines.
    """

    def __init__(self, metrics_path: str | None = None) -> None:
        self._metrics_path = metrics_path
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._received: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        # Outcomes that always exist, so dashboards show 0 rather than nothing.
        self._loads: dict[str, int] = {"success": 0, "failure": 0}
        self._unloads: dict[str, int] = {"success": 0, "failure": 0}
        self._load_durations = _Histogram(LOAD_BUCKETS)
        self._malformed = 0
        self._environment_caches: list[EnvironmentCounters] = []
        self._routes: dict[str, str] = {}
        self._content_types: dict[str, str] = {}

    def watch_environment_cache(self, cache: EnvironmentCounters) -> None:
        """Export `cache`'s hits, misses and unpacked bytes (read when scraped)."""
        with self._lock:
            self._environment_caches.append(cache)

    def record_model_loads(self, count: int, seconds: float, outcome: str = "success") -> None:
        """Loads that did not come through POST /models (a single-model endpoint's start)."""
        with self._lock:
            self._loads[outcome] = self._loads.get(outcome, 0) + count
            if outcome == "success":
                for _ in range(count):
                    self._load_durations.observe(seconds)

    def observe_lines(self, lines: Iterable[bytes]) -> None:
        """Add access-log lines (ACCESS_LOG_FIELDS, tab-separated) to the totals."""
        with self._lock:
            for raw in lines:
                fields = raw.decode("utf-8", errors="replace").split("\t")
                try:
                    self._observe(fields)
                except (ValueError, IndexError):
                    self._malformed += 1

    def _observe(self, fields: list[str]) -> None:
        status, request_time, method, uri, content_type, received, sent = fields
        if len(status) != 3 or not status.isdigit():
            raise ValueError(status)
        seconds = float(request_time)
        route = self._routes.get(uri)
        if route is None:
            if len(self._routes) > _CACHE_LIMIT:
                self._routes.clear()
            route = self._routes[uri] = route_of(uri, self._metrics_path)
        media = self._content_types.get(content_type)
        if media is None:
            if len(self._content_types) > _CACHE_LIMIT:
                self._content_types.clear()
            media = self._content_types[content_type] = content_type_of(content_type)
        if method not in KNOWN_METHODS:
            method = "other"
        key = (route, method, media, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._durations.get((route, media))
        if histogram is None:
            histogram = self._durations[route, media] = _Histogram(REQUEST_BUCKETS)
        histogram.observe(seconds)
        self._received[route] = self._received.get(route, 0) + int(received)
        self._sent[route] = self._sent.get(route, 0) + int(sent)
        if route == "/models" and method == "POST":
            outcome = load_outcome(status)
            self._loads[outcome] = self._loads.get(outcome, 0) + 1
            if outcome == "success":
                self._load_durations.observe(seconds)
        elif route == "/models/{name}" and method == "DELETE":
            outcome = unload_outcome(status)
            self._unloads[outcome] = self._unloads.get(outcome, 0) + 1

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = CounterMetricFamily(
                "serve_requests",
                "Requests the front answered, by route, method, request content type and "
                "status code.",
                labels=["route", "method", "content_type", "code"],
            )
            for labels, value in self._requests.items():
                requests.add_metric(list(labels), value)
            durations = HistogramMetricFamily(
                "serve_request_duration_seconds",
                "Time from the request's first byte to the response's last, as nginx "
                "measures it (1 ms resolution), by route and request content type.",
                labels=["route", "content_type"],
            )
            for route_type, histogram in self._durations.items():
                durations.add_metric(list(route_type), histogram.buckets(), histogram.total)
            received = CounterMetricFamily(
                "serve_request_received_bytes",
                "Bytes received in requests (line, headers and body), by route.",
                labels=["route"],
            )
            sent = CounterMetricFamily(
                "serve_response_sent_bytes",
                "Bytes sent in responses (headers and body), by route.",
                labels=["route"],
            )
            for route, value in self._received.items():
                received.add_metric([route], value)
            for route, value in self._sent.items():
                sent.add_metric([route], value)
            loads = CounterMetricFamily(
                "serve_model_loads",
                "Model loads: at start on a single-model endpoint, POST /models on a "
                "multi-model one; by outcome (success, already_loaded, insufficient_memory, "
                "failure).",
                labels=["outcome"],
            )
            for outcome, value in self._loads.items():
                loads.add_metric([outcome], value)
            unloads = CounterMetricFamily(
                "serve_model_unloads",
                "Model unloads (DELETE /models/NAME), by outcome (success, not_loaded, failure).",
                labels=["outcome"],
            )
            for outcome, value in self._unloads.items():
                unloads.add_metric([outcome], value)
            load_durations = HistogramMetricFamily(
                "serve_model_load_duration_seconds",
                "Time successful model loads took, preparation included.",
            )
            load_durations.add_metric(
                [], self._load_durations.buckets(), self._load_durations.total
            )
            malformed = CounterMetricFamily(
                "serve_access_log_malformed_lines",
                "nginx access-log lines the metrics could not read (a bug if not 0).",
                value=self._malformed,
            )
            caches = list(self._environment_caches)
        yield from (requests, durations, received, sent, loads, unloads, load_durations, malformed)
        yield from _environment_cache_families(caches)


def _environment_cache_families(caches: Sequence[EnvironmentCounters]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "serve_environment_cache_hits",
        "EXECUTION_ENV_PATH archives found already unpacked in the environment cache.",
        value=sum(cache.hits for cache in caches),
    )
    yield CounterMetricFamily(
        "serve_environment_cache_misses",
        "EXECUTION_ENV_PATH archives unpacked into the environment cache.",
        value=sum(cache.misses for cache in caches),
    )
    yield CounterMetricFamily(
        "serve_environment_cache_extracted_bytes",
        "Bytes unpacked into the environment cache.",
        value=sum(cache.bytes_extracted for cache in caches),
    )


class PublicMetrics:
    """GET /metrics on the public port: Triton's metrics and the front's, one exposition.

    Triton's come first, read at each scrape with stable labels
    (serve/triton/metrics.py); `serve_triton_metrics_up` says whether they are there.
    """

    def __init__(self, registry: CollectorRegistry, triton: TritonMetrics):
        self._registry = registry
        self._triton = triton

    def exposition(self) -> tuple[bytes, str]:
        """The scrape's body and its content type."""
        triton = self._triton.text()
        up = GaugeMetricFamily(
            "serve_triton_metrics_up",
            "Whether Triton's metrics could be read for this scrape (1) or not (0).",
            value=int(triton is not None),
        )
        front = generate_latest(_Scrape(self._registry, up))
        return (triton or b"") + front, EXPOSITION_TYPE


class _Scrape(Collector):
    """A registry's families and some of one scrape's own, for generate_latest."""

    def __init__(self, registry: CollectorRegistry, *families: Metric):
        self._registry = registry
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
        yield from self._registry.collect()


class MetricsEndpoint:
    """The front's metrics, on their own port (Prometheus text on any path) when one is set.

    Also exports `serve`'s own process metrics (process_*: CPU, memory, file
    descriptors). `startup_models` are the models a single-model endpoint
    loads at start; `models_loaded_at_start` counts them once Triton is ready.
    `port` None: no listener of their own (GET /metrics on the public port
    serves them through `public`). `metrics_path` labels the scrapes' requests.
    """

    def __init__(
        self,
        port: int | None,
        access_log: Path,
        nginx_pid_file: Path,
        startup_models: int = 0,
        address: str = "0.0.0.0",
        metrics_path: str | None = None,
    ):
        self.port = port
        self.address = address
        self.metrics = FrontMetrics(metrics_path)
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        ProcessCollector(registry=self.registry)
        self.follower = AccessLogFollower(
            access_log, self.metrics.observe_lines, nginx_reopener(nginx_pid_file)
        )
        self._startup_models = startup_models
        self._server: WSGIServer | None = None

    def public(self, triton: TritonMetrics) -> PublicMetrics:
        """What GET /metrics answers: Triton's and these, one exposition."""
        return PublicMetrics(self.registry, triton)

    def start(self) -> None:
        if self.port is not None:
            try:
                self._server, _ = start_http_server(self.port, self.address, registry=self.registry)
            except OSError as exc:
                raise ConfigError(
                    f"the front's metrics cannot listen on port {self.port} ({exc}); set "
                    "SERVE_METRICS_PORT to a free port, or SERVE_METRICS_PORT=off"
                ) from exc
            log.info("the front's metrics are on port %d", self.port)
        self.follower.start()

    def models_loaded_at_start(self, seconds: float) -> None:
        if self._startup_models:
            self.metrics.record_model_loads(self._startup_models, seconds)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.follower.stop()
