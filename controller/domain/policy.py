"""Fault-tolerance decisions as pure functions of observed state, config and `now`.

Nothing here reads a clock or a database: the reconcile pass hands in what it
observed and writes back what these functions decide. Every timeout fires when
the elapsed time is strictly greater than its limit (SPEC section 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from controller.config import FaultToleranceConfig
from controller.domain.states import JobStatus, Reason


def retry_delay(retry_count: int, config: FaultToleranceConfig) -> float:
    """Seconds to wait before attempt `retry_count` (counted after its increment) may start."""
    base = config.retry_delay_seconds
    if config.retry_backoff == "constant":
        return base
    exponent = max(retry_count - 1, 0)
    # Cap the exponent as well: 2**huge overflows a float long after it passed any cap.
    delay = base * (2.0 ** min(exponent, 64))
    return min(delay, config.max_retry_delay_seconds)


class RetryOutcome(NamedTuple):
    """What happens to an attempt that ended without success (a value, one per lost attempt)."""

    status: JobStatus
    reason: Reason
    retry_count: int
    not_before: datetime | None
    message: str


def retry_or_fail(
    retry_count: int,
    max_retries: int,
    cause: Reason,
    now: datetime,
    config: FaultToleranceConfig,
    detail: str | None = None,
) -> RetryOutcome:
    """The retry rule: back to `pending` while retries remain, else `failed` (MaxRetriesExceeded)."""
    described = f"{cause}: {detail}" if detail else str(cause)
    if retry_count < max_retries:
        new_count = retry_count + 1
        delay = retry_delay(new_count, config)
        return RetryOutcome(
            status=JobStatus.PENDING,
            reason=cause,
            retry_count=new_count,
            not_before=now + timedelta(seconds=delay),
            message=f"{described}; retry {new_count}/{max_retries} in {delay:g}s",
        )
    return RetryOutcome(
        status=JobStatus.FAILED,
        reason=Reason.MAX_RETRIES_EXCEEDED,
        retry_count=retry_count,
        not_before=None,
        message=f"max retries exceeded ({retry_count}/{max_retries}); last cause: {described}",
    )


def stall_limit_seconds(expected: float | None, config: FaultToleranceConfig) -> float | None:
    """How long a running attempt may take before it is stalled; None: never stalled."""
    if expected is None:
        return None
    return config.stalled_factor * expected + config.stalled_grace_seconds


def running_timeout_at(
    started_at: datetime, expected: float | None, config: FaultToleranceConfig
) -> datetime | None:
    """The instant after which a running attempt counts as stalled."""
    limit = stall_limit_seconds(expected, config)
    return None if limit is None else started_at + timedelta(seconds=limit)


def assigned_timeout_at(assigned_at: datetime, config: FaultToleranceConfig) -> datetime:
    """The instant after which an assigned attempt that never started times out."""
    return assigned_at + timedelta(seconds=config.assign_timeout)


def timed_out(timeout_at: datetime | None, now: datetime) -> bool:
    """Strictly past the limit (elapsed > limit)."""
    return timeout_at is not None and now > timeout_at


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """What liveness needs to know of a ready node."""

    name: str
    last_heartbeat: datetime | None


@dataclass(frozen=True, slots=True)
class LivenessDecision:
    """Nodes to declare dead in this pass, and the state of the mass-failure guard."""

    dead: tuple[str, ...]
    held_back: tuple[str, ...]
    episode_started_at: datetime | None
    episode_began: bool
    """True on the pass that opened a mass-failure episode (audit and warn once)."""


def overdue(
    node: NodeBeat, now: datetime, started_at: datetime, config: FaultToleranceConfig
) -> bool:
    """True when the node's last sign of life is older than the node timeout.

    The controller's own start counts as a sign of life: heartbeats sent while it was
    down (or failing over) could not be received, so they never count against a node.
    """
    last_seen = started_at if node.last_heartbeat is None else max(node.last_heartbeat, started_at)
    return (now - last_seen).total_seconds() > config.node_timeout_seconds


def decide_liveness(
    ready: Sequence[NodeBeat],
    now: datetime,
    started_at: datetime,
    config: FaultToleranceConfig,
    episode_started_at: datetime | None,
    ready_count: int | None = None,
) -> LivenessDecision:
    """Which ready nodes die in this pass, with the mass-failure guard applied.

    `ready` may be only the candidates (nodes silent long enough to be overdue);
    `ready_count` is then the number of ready nodes before the pass.
    """
    late = tuple(sorted(n.name for n in ready if overdue(n, now, started_at, config)))
    if not late:
        return LivenessDecision((), (), None, False)
    ratio = len(late) / (ready_count if ready_count is not None else len(ready))
    suspicious = ratio > config.mass_failure_threshold and len(late) >= config.mass_failure_min_nodes
    if not suspicious:
        return LivenessDecision(late, (), None, False)
    if episode_started_at is None:
        return LivenessDecision((), late, now, True)
    held_for = (now - episode_started_at).total_seconds()
    if held_for > config.mass_failure_hold_seconds:
        return LivenessDecision(late, (), None, False)
    return LivenessDecision((), late, episode_started_at, False)
