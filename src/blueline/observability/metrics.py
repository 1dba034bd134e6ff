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
