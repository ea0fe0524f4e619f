"""Controller configuration: the `ControllerConfig` file, environment and flags (SPEC section 6)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

ENV_PREFIX = "FFRTMP_"
API_VERSION: Literal["ffrtmp.io/v1"] = "ffrtmp.io/v1"


class ConfigError(ValueError):
    """The configuration could not be loaded; the message names the key and the source."""


class _Section(BaseModel):
    """A config section: camelCase keys in files, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
    )


class DatabaseConfig(_Section):
    """Where state lives."""

    url: str = "sqlite:///ffrtmp.db"
    sqlite_synchronous: Literal["off", "normal", "full", "extra"] = "normal"
    """SQLite `PRAGMA synchronous` under WAL: `normal` survives a crash of the
    process (every committed transaction is kept) but may lose the last commits on
    power loss; `full` syncs every commit to disk."""
    sqlite_busy_timeout_seconds: float = Field(default=30.0, ge=0)
    sqlite_cache_mib: int = Field(default=64, ge=0)
    """SQLite page cache per connection, in MiB (`PRAGMA cache_size`); filled only as
    pages are read. 0 keeps SQLite's default (2 MiB)."""
    sqlite_checkpoint_seconds: float = Field(default=1.0, ge=0)
    """The controller copies the WAL into the database file from a thread of its own
    this often, instead of inside the commit that crosses 1,000 pages. 0: SQLite's
    automatic checkpoint at commit."""
    postgres_writers: int = Field(default=2, ge=1, le=32)
    """On PostgreSQL, how many threads write the worker protocol's batched writes
    (heartbeats, reports, submissions) side by side: a commit there waits on round trips
    and the WAL flush, time another batch can use. SQLite writes with one."""


class FaultToleranceConfig(_Section):
    """Liveness, retry and stall-detection settings (SPEC section 5)."""

    node_timeout_seconds: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    check_interval_seconds: float = Field(default=10.0, gt=0)
    retry_backoff: Literal["constant", "exponential"] = "constant"
    max_retry_delay_seconds: float = Field(default=300.0, ge=0)
    stalled_factor: float = Field(default=2.0, gt=0)
    stalled_grace_seconds: float = Field(default=300.0, ge=0)
    assign_timeout_seconds: float | None = Field(default=None, gt=0)
    """None follows `node_timeout_seconds`; read it through `assign_timeout`."""
    mass_failure_threshold: float = Field(default=0.55, ge=0, le=1)
    mass_failure_min_nodes: int = Field(default=3, ge=1)
    mass_failure_hold_seconds: float = Field(default=120.0, ge=0)

    @property
    def assign_timeout(self) -> float:
        """Seconds an assigned job may wait for its worker to start it."""
        if self.assign_timeout_seconds is None:
            return self.node_timeout_seconds
        return self.assign_timeout_seconds


class QueueConfig(_Section):
    """Priority queue aging (SPEC section 5)."""

    aging_interval_seconds: float = Field(default=300.0, ge=0)
    aging_cap: int = Field(default=9, ge=1)


class AuthConfig(_Section):
    """API authentication and rate limiting (SPEC section 7)."""

    enabled: bool = True
    token_expiry_minutes: float = Field(default=60.0, gt=0)
    rate_limit_per_minute: int = Field(default=100, ge=1)
    failed_auth_per_minute: int = Field(default=20, ge=1)


class ManifestsConfig(_Section):
    """The watched manifests directory (SPEC section 3)."""

    dir: str = "manifests"
    resync_seconds: float = Field(default=30.0, gt=0)
    prune: bool = True


class NodesConfig(_Section):
    """Worker registration and heartbeat cadence."""

    auto_register: bool = True
    heartbeat_interval_seconds: float = Field(default=10.0, gt=0)


class ServerConfig(_Section):
    """The HTTP listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)


class MetricsConfig(_Section):
    """Prometheus exposition."""

    public: bool = False


class LeaderElectionConfig(_Section):
    """The leader lease of several controller replicas on one database (docs/scale-out.md).

    Every replica serves the API; only the holder of the lease runs the reconcile
    pass and the watched directory. The defaults are Kubernetes' (15 s / 10 s / 2 s).
    """

    lease_duration_seconds: float = Field(default=15.0, gt=0)
    """Others take the lease over once it was not renewed for this long."""
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    """The leader stops leading when it could not renew for this long."""
    retry_period_seconds: float = Field(default=2.0, gt=0)
    """How often the leader renews and the others try to acquire."""
    identity: str | None = Field(default=None, min_length=1, max_length=255)
    """This replica's name in the lease (default: host name, process id and a random suffix).
    A stable identity (the pod name) lets a restarted replica take its own lease back at once."""

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionConfig:
        if not self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "need retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds"
            )
        return self


class ControllerConfig(_Section):
    """The whole controller configuration, with the spec's defaults."""

    api_version: Literal["ffrtmp.io/v1"] = API_VERSION
    kind: Literal["ControllerConfig"] = "ControllerConfig"
    database: DatabaseConfig = DatabaseConfig()
    fault_tolerance: FaultToleranceConfig = FaultToleranceConfig()
    queue: QueueConfig = QueueConfig()
    auth: AuthConfig = AuthConfig()
    manifests: ManifestsConfig = ManifestsConfig()
    nodes: NodesConfig = NodesConfig()
    server: ServerConfig = ServerConfig()
    metrics: MetricsConfig = MetricsConfig()
    leader_election: LeaderElectionConfig = LeaderElectionConfig()


def merge_settings(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` over `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Map `FFRTMP_<SECTION>__<KEY>` variables onto the file's camelCase shape.

    `FFRTMP_FAULT_TOLERANCE__NODE_TIMEOUT_SECONDS=30` gives
    {"faultTolerance": {"nodeTimeoutSeconds": 30}}.
    """
    out: dict[str, Any] = {}
    sections = dict(ControllerConfig.model_fields)
    for raw_key, value in env.items():
        if not raw_key.startswith(ENV_PREFIX) or "__" not in raw_key:
            continue
        section_key, _, field_key = raw_key[len(ENV_PREFIX):].lower().partition("__")
        if section_key not in sections or section_key in ("api_version", "kind"):
            raise ConfigError(f"{raw_key}: unknown configuration section {section_key!r}")
        section_model = sections[section_key].annotation
        assert isinstance(section_model, type) and issubclass(section_model, _Section)
        if field_key not in section_model.model_fields:
            raise ConfigError(f"{raw_key}: unknown key {to_camel(field_key)!r} in {to_camel(section_key)}")
        out.setdefault(to_camel(section_key), {})[to_camel(field_key)] = _env_value(value)
    return out


def _env_value(value: str) -> Any:
    """Environment values are strings; YAML scalars give `30` -> 30 and `true` -> True."""
    if value == "":
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    extra = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: {path}: {message}{extra}"


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ControllerConfig:
    """Build the config: defaults, then the file, then `FFRTMP_*` variables, then flags.

    `overrides` uses the file's camelCase shape, e.g. {"database": {"url": ...}}.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a ControllerConfig must be a mapping")
        data = loaded
    environ = os.environ if env is None else env
    env_data = _env_overrides(environ)
    if env_data:
        data = merge_settings(data, env_data)
        source += " + environment"
    if overrides:
        data = merge_settings(data, overrides)
        source += " + flags"
    try:
        return ControllerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc


def config_to_dict(config: ControllerConfig) -> dict[str, Any]:
    """The config as the file's camelCase mapping."""
    return config.model_dump(by_alias=True, mode="json")


_SQLITE_MEMORY = re.compile(r"^sqlite(\+\w+)?://(/(:memory:)?)?$")


def is_memory_sqlite(url: str) -> bool:
    """True for an in-memory SQLite URL."""
    return bool(_SQLITE_MEMORY.match(url))
