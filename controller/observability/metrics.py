"""The controller's Prometheus metrics (SPEC section 11), on a registry of their own.

Each `Metrics` owns a `CollectorRegistry` rather than using prometheus-client's
global one, so a process (or a test) can build several without "duplicated
timeseries" errors, and `/metrics` exposes exactly these series.

prometheus-client appends `_total` to counter names itself; counters are declared
here without the suffix so the exposed names are exactly the spec's
(`ffrtmp_master_dead_nodes_total`, ...). Gauges keep the names the spec gives them,
`_total` included (`ffrtmp_master_queue_depth_total`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "ffrtmp_master_"
PRIORITIES = ("live", "high", "medium", "low", "batch")

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
"""Seconds, from 1 ms (a quick reconcile pass) to 60 s (a job waiting for a slot)."""

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The `Content-Type` of `Metrics.exposition()`."""


class Metrics:
    """Every controller metric, one attribute each, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # Fault tolerance (reconcile steps 2-4).
        self.dead_nodes = Counter(
            PREFIX + "dead_nodes", "Nodes declared dead.", registry=r
        )
        self.reassigned_jobs = Counter(
            PREFIX + "reassigned_jobs", "Jobs requeued after their node died or stalled.", registry=r
        )
        self.failed_jobs = Counter(
            PREFIX + "failed_jobs", "Jobs that ended failed.", registry=r
        )
        self.heartbeats = Counter(
            PREFIX + "heartbeats", "Heartbeats received from workers.", registry=r
        )

        # The queue.
        self.pending_jobs = Gauge(
            PREFIX + "pending_jobs", "Pending jobs by priority class.", ["priority"], registry=r
        )
        for priority in PRIORITIES:
            # Every class is exposed from the start, at 0, so dashboards never miss a series.
            self.pending_jobs.labels(priority=priority)
        self.queue_depth = Gauge(
            PREFIX + "queue_depth_total", "Pending jobs, all classes.", registry=r
        )

        # Auth.
        self.auth_tokens = Gauge(
            PREFIX + "auth_tokens_total", "Active (unexpired, unrevoked) API tokens.", registry=r
        )
        self.rate_limit_exceeded = Counter(
            PREFIX + "rate_limit_exceeded",
            "Requests refused with 429 (client rate limit or failed-auth limit).",
            registry=r,
        )
        self.invalid_tokens = Counter(
            PREFIX + "invalid_tokens",
            "Authentications refused: unknown, malformed, expired or revoked tokens.",
            registry=r,
        )

        # Latencies.
        self.reconcile_duration = Histogram(
            PREFIX + "reconcile_duration_seconds",
            "Duration of one reconcile pass.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.submit_to_start = Histogram(
            PREFIX + "submit_to_start_seconds",
            "Time from a job's creation to its first attempt running.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # Manifests and leadership.
        self.manifest_errors = Gauge(
            PREFIX + "manifest_errors", "Watched manifest files that are invalid.", registry=r
        )
        self.leader = Gauge(
            PREFIX + "leader", "1 while this controller holds the leader lease, else 0.", registry=r
        )

    def set_pending(self, by_priority: dict[str, int]) -> None:
        """Set the pending gauges from counts by priority class (missing classes are 0)."""
        for priority in PRIORITIES:
            self.pending_jobs.labels(priority=priority).set(by_priority.get(priority, 0))
        self.queue_depth.set(sum(by_priority.get(p, 0) for p in PRIORITIES))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (the body of `GET /metrics`)."""
        return generate_latest(self.registry)
