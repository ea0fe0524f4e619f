"""Fault-tolerance policy as pure functions: no database, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.config import FaultToleranceConfig
from controller.domain.policy import (
    NodeBeat,
    decide_liveness,
    overdue,
    retry_delay,
    retry_or_fail,
    running_timeout_at,
    stall_limit_seconds,
    timed_out,
)
from controller.domain.states import (
    JOB_TRANSITIONS,
    JobStatus,
    NodeStatus,
    Reason,
    TransitionRefused,
    check_job_transition,
    check_node_transition,
)

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
FT = FaultToleranceConfig()


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# --- retry delay -------------------------------------------------------------------------------


def test_constant_backoff_is_the_retry_delay() -> None:
    assert [retry_delay(n, FT) for n in (1, 2, 5)] == [5, 5, 5]


def test_exponential_backoff_doubles_from_the_delay() -> None:
    ft = FaultToleranceConfig(retry_backoff="exponential")
    assert [retry_delay(n, ft) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]


def test_exponential_backoff_is_capped() -> None:
    ft = FaultToleranceConfig(retry_backoff="exponential", max_retry_delay_seconds=30)
    assert [retry_delay(n, ft) for n in (3, 4, 5)] == [20, 30, 30]
    assert retry_delay(10_000, ft) == 30  # no overflow


# --- the retry rule ----------------------------------------------------------------------------


def test_retry_under_the_limit_requeues_with_delay() -> None:
    out = retry_or_fail(0, 3, Reason.NODE_LOST, T0, FT)
    assert out.status is JobStatus.PENDING
    assert out.reason is Reason.NODE_LOST
    assert out.retry_count == 1
    assert out.not_before == T0 + s(5)
    assert "retry 1/3" in out.message


def test_retry_at_the_limit_fails_naming_the_last_cause() -> None:
    out = retry_or_fail(3, 3, Reason.EXIT_CODE, T0, FT, "exit code 1")
    assert out.status is JobStatus.FAILED
    assert out.reason is Reason.MAX_RETRIES_EXCEEDED
    assert out.retry_count == 3
    assert out.not_before is None
    assert "last cause: ExitCode: exit code 1" in out.message


def test_zero_max_retries_fails_at_once() -> None:
    assert retry_or_fail(0, 0, Reason.STALLED, T0, FT).status is JobStatus.FAILED


def test_exponential_not_before_uses_the_incremented_count() -> None:
    ft = FaultToleranceConfig(retry_backoff="exponential")
    assert retry_or_fail(2, 5, Reason.NODE_LOST, T0, ft).not_before == T0 + s(20)


# --- stall limits ------------------------------------------------------------------------------


def test_stall_limit_is_factor_times_expected_plus_grace() -> None:
    assert stall_limit_seconds(60, FT) == 2 * 60 + 300
    assert stall_limit_seconds(None, FT) is None
    assert running_timeout_at(T0, None, FT) is None


def test_timeouts_fire_strictly_after_the_limit() -> None:
    deadline = running_timeout_at(T0, 10, FT)
    assert deadline == T0 + s(320)
    assert not timed_out(deadline, T0 + s(320))
    assert timed_out(deadline, T0 + s(320.001))


# --- liveness ----------------------------------------------------------------------------------


def test_node_is_overdue_strictly_after_the_timeout() -> None:
    beat = NodeBeat("w", T0)
    assert not overdue(beat, T0 + s(60), T0 - s(1000), FT)
    assert overdue(beat, T0 + s(60.5), T0 - s(1000), FT)


def test_controller_start_counts_as_a_sign_of_life() -> None:
    beat = NodeBeat("w", T0 - s(3600))
    started = T0
    assert not overdue(beat, T0 + s(60), started, FT)
    assert overdue(beat, T0 + s(61), started, FT)
    assert not overdue(NodeBeat("never", None), T0 + s(30), started, FT)


def _ready(n: int, late: int, now: datetime = T0) -> list[NodeBeat]:
    """`n` ready nodes, the first `late` of them silent for two minutes before `now`."""
    return [NodeBeat(f"w{i:02d}", now - s(120) if i < late else now) for i in range(n)]


def test_ordinary_deaths_pass_through_the_guard() -> None:
    d = decide_liveness(_ready(10, 2), T0 + s(1), T0 - s(3600), FT, None)
    assert d.dead == ("w00", "w01")
    assert d.held_back == ()
    assert not d.episode_began


def test_mass_failure_holds_deaths_back_and_opens_an_episode() -> None:
    d = decide_liveness(_ready(10, 6), T0 + s(1), T0 - s(3600), FT, None)
    assert d.dead == ()
    assert len(d.held_back) == 6
    assert d.episode_began
    assert d.episode_started_at == T0 + s(1)


def test_ratio_exactly_at_threshold_is_not_mass_failure() -> None:
    ft = FaultToleranceConfig(mass_failure_threshold=0.5)
    d = decide_liveness(_ready(10, 5), T0 + s(1), T0 - s(3600), ft, None)
    assert len(d.dead) == 5


def test_few_nodes_never_trigger_the_guard() -> None:
    d = decide_liveness(_ready(2, 2), T0 + s(1), T0 - s(3600), FT, None)
    assert d.dead == ("w00", "w01")
    d3 = decide_liveness(_ready(3, 3), T0 + s(1), T0 - s(3600), FT, None)
    assert d3.dead == () and d3.episode_began


def test_episode_holds_until_strictly_past_the_hold_time() -> None:
    opened = T0
    held = decide_liveness(_ready(10, 8, T0 + s(120)), T0 + s(120), T0 - s(3600), FT, opened)
    assert held.dead == () and not held.episode_began and held.episode_started_at == opened
    released = decide_liveness(_ready(10, 8, T0 + s(120.5)), T0 + s(120.5), T0 - s(3600), FT, opened)
    assert len(released.dead) == 8
    assert released.episode_started_at is None


def test_episode_ends_when_nodes_recover() -> None:
    d = decide_liveness(_ready(10, 0), T0 + s(1), T0 - s(3600), FT, T0)
    assert d.dead == () and d.episode_started_at is None


# --- the state machine -------------------------------------------------------------------------


@pytest.mark.parametrize("source", list(JobStatus))
@pytest.mark.parametrize("target", list(JobStatus))
def test_job_transition_table_is_the_spec(source: JobStatus, target: JobStatus) -> None:
    allowed = {
        (JobStatus.PENDING, JobStatus.ASSIGNED),
        (JobStatus.ASSIGNED, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.COMPLETED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.ASSIGNED, JobStatus.FAILED),
        (JobStatus.ASSIGNED, JobStatus.PENDING),
        (JobStatus.RUNNING, JobStatus.PENDING),
        (JobStatus.PENDING, JobStatus.CANCELLED),
        (JobStatus.ASSIGNED, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.CANCELLED),
        (JobStatus.FAILED, JobStatus.PENDING),
        (JobStatus.CANCELLED, JobStatus.PENDING),
    }
    if (source, target) in allowed:
        check_job_transition(source, target)
        assert target in JOB_TRANSITIONS[source]
    else:
        with pytest.raises(TransitionRefused):
            check_job_transition(source, target)


def test_node_transitions() -> None:
    check_node_transition(NodeStatus.UNKNOWN, NodeStatus.READY)
    check_node_transition(NodeStatus.READY, NodeStatus.DEAD)
    check_node_transition(NodeStatus.DEAD, NodeStatus.READY)
    for bad in [(NodeStatus.UNKNOWN, NodeStatus.DEAD), (NodeStatus.DEAD, NodeStatus.UNKNOWN),
                (NodeStatus.READY, NodeStatus.UNKNOWN)]:
        with pytest.raises(TransitionRefused):
            check_node_transition(*bad)
