"""The exposed metric names are exactly the spec's (SPEC section 11)."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from controller.observability.metrics import LATENCY_BUCKETS, Metrics

SPEC_SAMPLES = {
    "ffrtmp_master_dead_nodes_total",
    "ffrtmp_master_reassigned_jobs_total",
    "ffrtmp_master_failed_jobs_total",
    "ffrtmp_master_queue_depth_total",
    "ffrtmp_master_auth_tokens_total",
    "ffrtmp_master_rate_limit_exceeded_total",
    "ffrtmp_master_invalid_tokens_total",
    "ffrtmp_master_heartbeats_total",
    "ffrtmp_master_manifest_errors",
    "ffrtmp_master_leader",
    "ffrtmp_master_reconcile_duration_seconds_bucket",
    "ffrtmp_master_submit_to_start_seconds_bucket",
}


def _sample_names(text: str) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_exposed_names_are_the_specs() -> None:
    text = Metrics().exposition().decode()
    names = _sample_names(text)
    assert names >= SPEC_SAMPLES
    # No doubled suffix from prometheus-client appending `_total` itself.
    assert "_total_total" not in text
    lines = text.splitlines()
    for name in sorted(SPEC_SAMPLES - {n for n in SPEC_SAMPLES if n.endswith("_bucket")}):
        assert any(line.startswith(f"{name} ") for line in lines), name


def test_pending_jobs_has_every_priority_from_the_start() -> None:
    m = Metrics()
    text = m.exposition().decode()
    for priority in ("live", "high", "medium", "low", "batch"):
        assert f'ffrtmp_master_pending_jobs{{priority="{priority}"}} 0.0' in text
    m.set_pending({"live": 2, "batch": 5})
    assert m.registry.get_sample_value("ffrtmp_master_pending_jobs", {"priority": "live"}) == 2
    assert m.registry.get_sample_value("ffrtmp_master_pending_jobs", {"priority": "high"}) == 0
    assert m.registry.get_sample_value("ffrtmp_master_queue_depth_total") == 7


def test_counters_count_and_histograms_span_1ms_to_60s() -> None:
    m = Metrics()
    m.dead_nodes.inc()
    m.dead_nodes.inc()
    m.reconcile_duration.observe(0.0004)
    m.submit_to_start.observe(45)
    get = m.registry.get_sample_value
    assert get("ffrtmp_master_dead_nodes_total") == 2
    assert get("ffrtmp_master_reconcile_duration_seconds_bucket", {"le": "0.001"}) == 1
    assert get("ffrtmp_master_submit_to_start_seconds_bucket", {"le": "30.0"}) == 0
    assert get("ffrtmp_master_submit_to_start_seconds_bucket", {"le": "60.0"}) == 1
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60.0


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # no "Duplicated timeseries" error
    a.leader.set(1)
    assert a.registry.get_sample_value("ffrtmp_master_leader") == 1
    assert b.registry.get_sample_value("ffrtmp_master_leader") == 0
    assert REGISTRY.get_sample_value("ffrtmp_master_leader") is None
