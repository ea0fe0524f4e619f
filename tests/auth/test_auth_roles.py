"""The permission table of SPEC section 7, cell by cell."""

from __future__ import annotations

import pytest

from controller.auth import (
    AUTH_DISABLED,
    Permission,
    PermissionDenied,
    Principal,
    Role,
    role_allows,
)

P = Permission
EXPECTED = {
    Role.ADMIN: set(Permission),
    Role.OPERATOR: {P.READ, P.WRITE_JOBS, P.WRITE_NODES, P.APPLY_MANIFESTS},
    Role.VIEWER: {P.READ},
    Role.WORKER: {P.WORKER_REPORT},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_role_permission_table(role: Role, permission: Permission) -> None:
    assert role_allows(role, permission) is (permission in EXPECTED[role])
    assert role_allows(role.value, permission) is (permission in EXPECTED[role])


def test_unknown_role_allows_nothing() -> None:
    assert not any(role_allows("root", p) for p in Permission)


def test_worker_reports_only_for_its_own_node() -> None:
    worker = Principal("w", Role.WORKER, "worker-01", "tok_1")
    assert worker.allows(P.WORKER_REPORT, node="worker-01")
    assert not worker.allows(P.WORKER_REPORT, node="worker-02")
    assert not worker.allows(P.WORKER_REPORT)
    assert not worker.allows(P.READ)
    with pytest.raises(PermissionDenied, match="worker-02"):
        worker.require(P.WORKER_REPORT, node="worker-02")
    worker.require(P.WORKER_REPORT, node="worker-01")


def test_admin_may_report_for_any_node_and_operator_may_not() -> None:
    admin = Principal("a", Role.ADMIN, None, "tok_1")
    operator = Principal("o", Role.OPERATOR, None, "tok_2")
    assert admin.allows(P.WORKER_REPORT, node="worker-07")
    assert not operator.allows(P.WORKER_REPORT, node="worker-07")
    with pytest.raises(PermissionDenied):
        operator.require(P.MANAGE_TOKENS)


def test_auth_disabled_principal_may_do_everything() -> None:
    assert all(AUTH_DISABLED.allows(p, node="any") for p in Permission)
