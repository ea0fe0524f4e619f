"""Roles, what each may do, and the authenticated principal (SPEC section 7)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from controller.auth.errors import PermissionDenied


class Role(StrEnum):
    """What a token may do, as a named bundle of permissions."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    WORKER = "worker"


class Permission(StrEnum):
    """One kind of action the API guards."""

    READ = "read"
    """GET routes: jobs, nodes, manifests, queue stats, audit, metrics, docs."""
    WRITE_JOBS = "write_jobs"
    """Submit, patch, cancel, retry and delete jobs."""
    WRITE_NODES = "write_nodes"
    """Delete nodes (cordon and labels go through manifests)."""
    APPLY_MANIFESTS = "apply_manifests"
    """`POST /apply` (dry runs included)."""
    MANAGE_TOKENS = "manage_tokens"
    """Create, list and revoke tokens."""
    WORKER_REPORT = "worker_report"
    """Heartbeat as a node and report its attempts."""


ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {Permission.READ, Permission.WRITE_JOBS, Permission.WRITE_NODES, Permission.APPLY_MANIFESTS}
    ),
    Role.VIEWER: frozenset({Permission.READ}),
    # A worker needs nothing but its own heartbeat and reports: a stolen worker
    # token can neither read the farm's jobs nor speak for another node.
    Role.WORKER: frozenset({Permission.WORKER_REPORT}),
}


def role_allows(role: Role | str, permission: Permission) -> bool:
    """True when `role` grants `permission` (an unknown role grants nothing)."""
    try:
        known = Role(role)
    except ValueError:
        return False
    return permission in ROLE_PERMISSIONS[known]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's client, role, bound node (workers) and token id."""

    client_id: str
    role: Role
    node: str | None
    token_id: str | None

    def allows(self, permission: Permission, node: str | None = None) -> bool:
        """True when this principal may do `permission` (on `node`, for worker reports)."""
        if not role_allows(self.role, permission):
            return False
        if permission is Permission.WORKER_REPORT and self.role is Role.WORKER:
            # A worker token speaks for its own node only.
            return node is not None and node == self.node
        return True

    def require(self, permission: Permission, node: str | None = None) -> None:
        """Raise `PermissionDenied` unless `allows(permission, node)`."""
        if not self.allows(permission, node):
            target = f" for node {node!r}" if node is not None else ""
            raise PermissionDenied(
                f"role {self.role.value!r} of client {self.client_id!r} may not "
                f"{permission.value}{target}"
            )


AUTH_DISABLED = Principal(client_id="anonymous", role=Role.ADMIN, node=None, token_id=None)
"""The principal of every request when `auth.enabled` is false: everything is allowed."""
