"""ControllerConfig: spec defaults, file, environment and flags, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ConfigError, ControllerConfig, FaultToleranceConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_spec_defaults() -> None:
    c = load_config(env={})
    assert c.database.url == "sqlite:///ffrtmp.db"
    ft = c.fault_tolerance
    assert (ft.node_timeout_seconds, ft.max_retries, ft.retry_delay_seconds) == (60, 3, 5)
    assert (ft.check_interval_seconds, ft.retry_backoff, ft.max_retry_delay_seconds) == (10, "constant", 300)
    assert (ft.stalled_factor, ft.stalled_grace_seconds) == (2, 300)
    assert ft.assign_timeout == 60
    assert (ft.mass_failure_threshold, ft.mass_failure_min_nodes, ft.mass_failure_hold_seconds) == (0.55, 3, 120)
    assert (c.queue.aging_interval_seconds, c.queue.aging_cap) == (300, 9)
    assert (c.auth.enabled, c.auth.token_expiry_minutes, c.auth.rate_limit_per_minute) == (True, 60, 100)
    assert c.auth.failed_auth_per_minute == 20
    assert (c.manifests.dir, c.manifests.resync_seconds, c.manifests.prune) == ("manifests", 30, True)
    assert (c.nodes.auto_register, c.nodes.heartbeat_interval_seconds) == (True, 10)
    assert (c.server.host, c.server.port, c.server.max_body_bytes) == ("127.0.0.1", 8080, 10485760)
    assert c.metrics.public is False


def test_assign_timeout_follows_node_timeout_unless_set() -> None:
    assert FaultToleranceConfig(node_timeout_seconds=30).assign_timeout == 30
    assert FaultToleranceConfig(node_timeout_seconds=30, assign_timeout_seconds=5).assign_timeout == 5


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "apiVersion: ffrtmp.io/v1\nkind: ControllerConfig\n"
        "faultTolerance: {nodeTimeoutSeconds: 30, maxRetries: 7}\nqueue: {agingCap: 5}\n"
    )
    env = {"FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS": "45.5", "FFRTMP_QUEUE__AGING_CAP": "6"}
    c = load_config(path, env=env, overrides={"queue": {"agingCap": 8}})
    assert c.fault_tolerance.node_timeout_seconds == 45.5  # environment over file, fractional
    assert c.fault_tolerance.max_retries == 7  # file kept where nothing overrides it
    assert c.queue.aging_cap == 8  # flags over environment


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("faultTolerance: {nodeTimeout: 3}\n", "faultTolerance.nodeTimeout: unknown key"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("faultTolerance: {retryBackoff: linear}\n", "faultTolerance.retryBackoff"),
        ("faultTolerance: {nodeTimeoutSeconds: -1}\n", "faultTolerance.nodeTimeoutSeconds"),
        ("kind: Job\n", "kind"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_bad_files_are_refused_with_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_environment_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="FFRTMP_QUEUE__AGEING_CAP: unknown key 'ageingCap' in queue"):
        load_config(env={"FFRTMP_QUEUE__AGEING_CAP": "3"})
    with pytest.raises(ConfigError, match="unknown configuration section 'nope'"):
        load_config(env={"FFRTMP_NOPE__X": "3"})


def test_unrelated_environment_is_ignored() -> None:
    assert load_config(env={"FFRTMP_SERVER": "http://x", "FFRTMP_TOKEN": "t"}) == ControllerConfig()


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


def test_deploy_profiles_load_with_the_seed_values() -> None:
    dev = load_config(ROOT / "deploy/profiles/development.yaml", env={})
    assert (dev.fault_tolerance.node_timeout_seconds, dev.fault_tolerance.max_retries) == (120, 5)
    assert dev.fault_tolerance.check_interval_seconds == 30
    assert dev.auth.enabled is False
    prod = load_config(ROOT / "deploy/profiles/production.yaml", env={})
    assert (prod.fault_tolerance.node_timeout_seconds, prod.fault_tolerance.max_retries) == (60, 3)
    assert prod.fault_tolerance.check_interval_seconds == 10
    assert (prod.auth.enabled, prod.auth.token_expiry_minutes, prod.auth.rate_limit_per_minute) == (True, 30, 100)


def test_the_documented_configuration_file_loads_as_written(tmp_path: Path) -> None:
    # The full example of docs/configuration.md: every key it names must be a real one.
    text = (ROOT / "docs" / "configuration.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "kind: ControllerConfig" in block and "sqliteCacheMib" in block
    path = tmp_path / "documented.yaml"
    path.write_text(block)
    c = load_config(path, env={})
    assert c.database.sqlite_cache_mib == 64 and c.database.sqlite_checkpoint_seconds == 1
