"""Prepared statements read and write exactly what the ORM path does, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from controller.store import queries, views
from controller.store.engine import Store
from controller.store.prepared import Prepared
from controller.store.transitions import nodes_t

T0 = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def _node(store: Store, name: str, **values: object) -> None:
    row = {"name": name, "status": "ready", "slots": 2, "labels": {"zone": "a"},
           "reported_labels": {"ffmpeg": "true"}, "unschedulable": False, "declared": True,
           "last_heartbeat": T0, "status_changed_at": T0, "source": "api",
           "created_at": T0, "updated_at": T0, **values}
    with store.write() as session:
        session.execute(sa.insert(nodes_t).values(**row))


def test_rows_are_typed_as_the_models_read_them(store: Store) -> None:
    _node(store, "n1", unschedulable=True)
    with store.read() as session:
        orm = session.execute(sa.select(nodes_t).where(nodes_t.c.name == "n1")).one()
        prepared = queries.node_by_name(session, "n1")
    assert prepared is not None
    assert tuple(prepared) == tuple(orm)
    assert prepared.last_heartbeat == T0 and prepared.last_heartbeat.tzinfo is not None
    assert prepared.reported_labels == {"ffmpeg": "true"}
    assert prepared.unschedulable is True and prepared.declared is True
    with store.read() as session:
        assert queries.node_by_name(session, "nope") is None


def test_parameters_go_through_the_column_types(store: Store) -> None:
    _node(store, "n1")
    # An aware time in another zone is stored as the same instant in UTC.
    later = (T0 + timedelta(seconds=5)).astimezone(timezone(timedelta(hours=2)))
    touch = Prepared(lambda _: sa.update(nodes_t).where(nodes_t.c.name == sa.bindparam("name"))
                     .values(last_heartbeat=sa.bindparam("at", type_=nodes_t.c.last_heartbeat.type),
                             labels=sa.bindparam("labels", type_=nodes_t.c.labels.type)))
    with store.write() as session:
        assert touch.execute(session.connection(), name="n1", at=later, labels={"zone": "b"}) == 1
        assert touch.execute(session.connection(), name="nope", at=later, labels={}) == 0
    with store.read() as session:
        row = session.execute(sa.select(nodes_t).where(nodes_t.c.name == "n1")).one()
    assert row.last_heartbeat == T0 + timedelta(seconds=5)
    assert row.labels == {"zone": "b"}


def test_naive_times_are_refused(store: Store) -> None:
    _node(store, "n1")
    touch = Prepared(lambda _: sa.update(nodes_t).where(nodes_t.c.name == sa.bindparam("name"))
                     .values(last_heartbeat=sa.bindparam("at", type_=nodes_t.c.last_heartbeat.type)))
    with pytest.raises(ValueError, match="naive datetime"), store.write() as session:
        touch.execute(session.connection(), name="n1", at=datetime(2026, 1, 1))


def test_statements_whose_shape_depends_on_values_are_refused(store: Store) -> None:
    in_list = Prepared(lambda _: sa.select(nodes_t.c.id).where(nodes_t.c.name.in_(sa.bindparam("names",
                                                                                           expanding=True))))
    with pytest.raises(ValueError, match="IN lists"), store.read() as session:
        in_list.rows(session.connection(), names=["a"])


def test_a_missing_parameter_is_an_error_not_a_null(store: Store) -> None:
    with pytest.raises(KeyError), store.read() as session:
        Prepared(lambda _: sa.select(nodes_t.c.id).where(nodes_t.c.name == sa.bindparam("name"))).rows(
            session.connection())


def test_job_views_read_through_prepared_statements_match(store: Store) -> None:
    from controller.config import ControllerConfig
    from controller.farm import Farm
    from controller.manifests.validate import validate_texts
    from controller.sources.apply import Origin

    farm = Farm(store, ControllerConfig(), clock=lambda: T0)
    report = validate_texts({"m.yaml": (
        "apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: enc}\nspec: {command: [echo, '{x}']}\n"
        "---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: j1, labels: {team: a}}\n"
        "spec: {scenario: enc, priority: high, parameters: {x: 1}, nodeSelector: {zone: a}}\n")})
    assert not report.problems
    farm.apply([o.manifest for o in report.objects], Origin("api"), now=T0)
    with store.read() as session:
        view = views.get_job(session, "j1", ControllerConfig())
        missing = views.get_job(session, "j2", ControllerConfig())
    assert missing is None
    assert view is not None
    assert (view.name, view.priority, view.status, view.parameters, view.labels, view.node_selector) == (
        "j1", "high", "pending", {"x": 1}, {"team": "a"}, {"zone": "a"})
    assert view.created_at == T0 and view.node is None and view.attempts == []
    assert view.suspend is False
