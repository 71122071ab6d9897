"""Prometheus metrics at ``/metrics``.

Counters and histograms live in this process (prometheus-client's default registry); with several
worker processes ``openclore serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` and each worker writes its
values to files there, which a scrape of any worker adds up (``MultiProcessCollector``). The
market's own figures (orders by state, balances per currency) are read from the database at
scrape time, so every worker and replica reports the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openclore.market.stats import MarketFigures

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "openclore_http_requests",
    "HTTP requests answered, by endpoint, HTTP status and Clore code",
    ["endpoint", "method", "status", "code"],
)
LATENCY = Histogram(
    "openclore_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter(
    "openclore_rate_limit_refusals", "Requests refused by the rate limits (code 5)", ["endpoint"]
)
TICK_SECONDS = Histogram(
    "openclore_tick_duration_seconds",
    "Duration of one engine tick (liveness, expiry, billing)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TICK_FAILURES = Counter("openclore_tick_failures", "Engine ticks that failed")
ORDERS_SETTLED = Counter("openclore_orders_settled", "Running orders billed by engine ticks")
AGENTS = Gauge(
    "openclore_agents_connected",
    "Host agents connected over their WebSocket channel",
    multiprocess_mode="livesum",
)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def process_exit() -> None:
    """A worker ends: its live gauges (agents connected) stop counting."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class MarketCollector(Collector):
    """Reads the market's figures from the database at scrape time."""

    def __init__(self, read: Callable[[], MarketFigures]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self.read()
        by_state = GaugeMetricFamily(
            "openclore_orders", "Orders by state and kind", labels=["state", "kind"]
        )
        for (state, kind), count in sorted(figures.orders.items()):
            by_state.add_metric([state, kind], count)
        yield by_state
        balances = GaugeMetricFamily(
            "openclore_ledger_balance_units",
            "Sum of account balances per currency and account kind, in smallest units "
            "(every currency's kinds sum to zero)",
            labels=["currency", "kind"],
        )
        for (currency, kind), total in sorted(figures.balances.items()):
            balances.add_metric([currency, kind], total)
        yield balances


def render(market: Callable[[], MarketFigures]) -> tuple[bytes, str]:
    """The exposition text: this process's (or all workers') metrics and the market's figures."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        own = generate_latest(registry)
    else:
        own = generate_latest(REGISTRY)
    figures = CollectorRegistry(auto_describe=False)
    figures.register(MarketCollector(market))
    return own + generate_latest(figures), CONTENT_TYPE_LATEST


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"  # unknown paths share one label


class Metrics:
    """Count and time every HTTP request (by route, so the label set stays small)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            endpoint = _endpoint(scope)
            code = scope.get("state", {}).get("clore_code")
            REQUESTS.labels(
                endpoint, scope.get("method", ""), str(status), "" if code is None else str(code)
            ).inc()
            LATENCY.labels(endpoint).observe(time.perf_counter() - started)
