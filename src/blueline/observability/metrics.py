"""Prometheus metrics. One set per process, registered on first use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    graphql_requests: Counter
    graphql_seconds: Histogram
    webhook_deliveries: Counter
    provider_calls: Counter
    provider_seconds: Histogram
    outbox_published: Counter
    outbox_publish_delay: Histogram
    outbox_pending: Gauge
    subscribers: Gauge


@cache
def metrics() -> Metrics:
    registry = REGISTRY
    return Metrics(
        registry=registry,
        graphql_requests=Counter(
            "blueline_graphql_requests_total",
            "GraphQL operations by operation name and outcome",
            ["operation", "outcome"],
            registry=registry,
        ),
        graphql_seconds=Histogram(
            "blueline_graphql_request_seconds",
            "GraphQL operation duration",
            ["operation"],
            registry=registry,
        ),
        webhook_deliveries=Counter(
            "blueline_webhook_deliveries_total",
            "Webhook deliveries by outcome",
            ["outcome"],
            registry=registry,
        ),
        provider_calls=Counter(
            "blueline_provider_calls_total",
            "Provider call attempts by operation and outcome",
            ["operation", "outcome"],
            registry=registry,
        ),
        provider_seconds=Histogram(
            "blueline_provider_call_seconds",
            "Provider call attempt latency",
            ["operation"],
            registry=registry,
        ),
        outbox_published=Counter(
            "blueline_outbox_published_total", "Events published by the relay", registry=registry
        ),
        outbox_publish_delay=Histogram(
            "blueline_outbox_publish_delay_seconds",
            "Time from an event's commit to its publication",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        ),
        outbox_pending=Gauge(
            "blueline_outbox_pending_events",
            "Committed events not yet published (seen by the last relay pass)",
            registry=registry,
        ),
        subscribers=Gauge(
            "blueline_subscribers", "Connected subscription streams", registry=registry
        ),
    )


def observe_provider_call(operation: str, outcome: str, seconds: float) -> None:
    m = metrics()
    m.provider_calls.labels(operation, outcome).inc()
    m.provider_seconds.labels(operation).observe(seconds)


# Operation names come from clients: each API key may name at most this many distinct
# labels (then its others count as "other"), and the process keeps at most _MAX_LABELS,
# so no caller can grow the metrics or push another caller's names out.
_PER_KEY_LABELS = 20
_MAX_LABELS = 1000
_labels_by_key: dict[str, set[str]] = {}
_all_labels: set[str] = set()


def operation_label(key_id: str, name: str | None) -> str:
    label = (name or "anonymous")[:64]
    mine = _labels_by_key.setdefault(key_id, set())
    if label in mine:
        return label
    if len(mine) >= _PER_KEY_LABELS or (
        label not in _all_labels and len(_all_labels) >= _MAX_LABELS
    ):
        return "other"
    mine.add(label)
    _all_labels.add(label)
    if len(_labels_by_key) > 10_000:
        _labels_by_key.clear()
    return label


_counters: dict[tuple[str, str], Counter] = {}


def record_operation(key_id: str, name: str | None, outcome: str) -> None:
    # Each labelled child is looked up once (labels are bounded above): labels() takes
    # a lock and builds its key on every call.
    key = (operation_label(key_id, name), outcome)
    counter = _counters.get(key)
    if counter is None:
        counter = _counters[key] = metrics().graphql_requests.labels(*key)
    counter.inc()
