"""States, priorities, reasons and the allowed transitions of Jobs and Nodes."""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    """A job's priority class, most urgent first."""

    LIVE = "live"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    BATCH = "batch"

    @property
    def weight(self) -> int:
        """Base weight of the class in the queue order (SPEC section 5)."""
        return _WEIGHTS[self]

    @property
    def rank(self) -> int:
        """Stored integer: higher is more urgent, so `ORDER BY priority DESC` is class order."""
        return _RANKS[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        """The class stored as `rank`."""
        return _BY_RANK[rank]


_WEIGHTS = {
    Priority.LIVE: 10,
    Priority.HIGH: 3,
    Priority.MEDIUM: 2,
    Priority.LOW: 1,
    Priority.BATCH: 1,
}
_RANKS = {
    Priority.LIVE: 4,
    Priority.HIGH: 3,
    Priority.MEDIUM: 2,
    Priority.LOW: 1,
    Priority.BATCH: 0,
}
_BY_RANK = {rank: p for p, rank in _RANKS.items()}


class JobStatus(StrEnum):
    """Lifecycle of a job."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_JOB_STATUSES = frozenset({JobStatus.ASSIGNED, JobStatus.RUNNING})


class NodeStatus(StrEnum):
    """Liveness of a node."""

    UNKNOWN = "unknown"
    READY = "ready"
    DEAD = "dead"


class Reason(StrEnum):
    """Why a job or node is in its status (CamelCase, as in the API)."""

    SUBMITTED = "Submitted"
    SCHEDULED = "Scheduled"
    STARTED = "Started"
    SUCCEEDED = "Succeeded"
    NODE_LOST = "NodeLost"
    STALLED = "Stalled"
    ASSIGN_TIMEOUT = "AssignTimeout"
    EXIT_CODE = "ExitCode"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    MAX_RETRIES_EXCEEDED = "MaxRetriesExceeded"
    INVALID_PARAMETERS = "InvalidParameters"
    SCENARIO_NOT_FOUND = "ScenarioNotFound"
    NO_MATCHING_NODE = "NoMatchingNode"
    CANCELLED = "Cancelled"
    PRUNED = "Pruned"
    RELEASED = "Released"
    NODE_RESTARTED = "NodeRestarted"
    NODE_REMOVED = "NodeRemoved"
    MANUAL_RETRY = "ManualRetry"
    HEARTBEAT = "Heartbeat"
    HEARTBEAT_TIMEOUT = "HeartbeatTimeout"


JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.ASSIGNED, JobStatus.CANCELLED}),
    JobStatus.ASSIGNED: frozenset(
        {JobStatus.RUNNING, JobStatus.PENDING, JobStatus.CANCELLED, JobStatus.FAILED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PENDING, JobStatus.CANCELLED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.CANCELLED: frozenset({JobStatus.PENDING}),
}
"""Allowed job transitions (SPEC section 4). `assigned -> failed` is the retry rule
giving up on an attempt that never started (dead node, assign timeout). A final
report for an attempt still `assigned` passes through `running` first, so the audit
chain stays whole."""

NODE_TRANSITIONS: dict[NodeStatus, frozenset[NodeStatus]] = {
    NodeStatus.UNKNOWN: frozenset({NodeStatus.READY}),
    NodeStatus.READY: frozenset({NodeStatus.DEAD}),
    NodeStatus.DEAD: frozenset({NodeStatus.READY}),
}


class TransitionRefused(ValueError):
    """A status change that the state machine does not allow."""


def check_job_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise TransitionRefused unless `current -> target` is an allowed job transition."""
    if target not in JOB_TRANSITIONS[current]:
        raise TransitionRefused(f"job transition {current} -> {target} is not allowed")


def check_node_transition(current: NodeStatus, target: NodeStatus) -> None:
    """Raise TransitionRefused unless `current -> target` is an allowed node transition."""
    if target not in NODE_TRANSITIONS[current]:
        raise TransitionRefused(f"node transition {current} -> {target} is not allowed")
