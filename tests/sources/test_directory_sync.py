"""The watched directory through `DirectorySource.sync(now)`: deterministic, on both databases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.domain.states import JobStatus, Reason
from controller.farm import Farm as Operations
from controller.manifests.validate import validate_texts
from controller.observability.metrics import Metrics
from controller.reconcile import schedule
from controller.sources.apply import Origin, Outcome, apply_objects
from controller.store.engine import Store
from controller.store.manifest_files import delete_manifest_file

from .conftest import NOW, Farm, SourceFactory, docs, job, node, scenario, write


def test_create_modify_rename_delete(tmp_path: Path, make_source: SourceFactory, farm: Farm) -> None:
    root = tmp_path / "manifests"
    write(root / "scenarios.yaml", scenario())
    write(root / "jobs" / "a.yaml", docs(job("a1"), job("a2")))
    source = make_source(root)

    first = source.sync(NOW)
    assert first.full and first.counts == {"created": 3}
    assert set(farm.jobs()) == {"a1", "a2"}
    assert farm.jobs()["a1"].source_path == "jobs/a.yaml"
    assert farm.files()["jobs/a.yaml"].objects == ["Job/a1", "Job/a2"]

    write(root / "jobs" / "a.yaml", docs(job("a1", priority="live"), job("a2")))
    changed = source.sync(NOW)
    assert changed.counts == {"configured": 1, "unchanged": 1}
    assert farm.jobs()["a1"].priority == 4

    audit_before = farm.audit_count()
    os.rename(root / "jobs" / "a.yaml", root / "jobs" / "b.yaml")
    renamed = source.sync(NOW)
    assert renamed.removed == ["jobs/a.yaml"]
    assert renamed.counts == {"moved": 2, "unchanged": 2}  # moved, not pruned and recreated
    assert farm.jobs()["a1"].source_path == "jobs/b.yaml"
    assert set(farm.files()) == {"scenarios.yaml", "jobs/b.yaml"}
    assert [e.event_type for e in farm.audit()[audit_before:]] == ["manifest.applied"]

    (root / "jobs" / "b.yaml").unlink()
    deleted = source.sync(NOW)
    assert deleted.counts == {"pruned": 2}
    assert farm.jobs() == {}
    assert [e.entity_id for e in farm.audit("manifest.pruned")] == ["a1", "a2"]
    deleted_rows = farm.audit("job.deleted")
    assert [e.details["reason"] for e in deleted_rows] == ["Pruned", "Pruned"]


def test_nothing_changed_reads_nothing_and_writes_nothing(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    write(tmp_path / "m" / "a.yaml", docs(scenario(), job("a1")))
    source = make_source(tmp_path / "m")
    source.sync(NOW)
    audit = farm.audit_count()
    again = source.sync(NOW)  # no observer: every sync looks, by stat
    assert again.read == 0 and again.counts == {} and again.applied == []
    full = source.sync(NOW, force=True)  # a full resync reads and hashes every file
    assert full.read == 1 and full.counts == {}
    assert farm.audit_count() == audit


def test_invalid_file_is_quarantined_and_others_apply(
    tmp_path: Path, make_source: SourceFactory, farm: Farm, store: Store
) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", docs(scenario(), job("a1")))
    write(root / "b.yaml", job("b1"))
    metrics = Metrics()
    source = make_source(root, metrics=metrics)
    source.sync(NOW)
    assert set(farm.jobs()) == {"a1", "b1"}

    # b.yaml breaks (an unknown priority) while a.yaml changes: a.yaml applies, b1 stays as it was.
    write(root / "b.yaml", job("b1", priority="urgent"))
    write(root / "a.yaml", docs(scenario(), job("a1", priority="high"), job("a3")))
    result = source.sync(NOW)
    assert result.invalid == ["b.yaml"]
    jobs = farm.jobs()
    assert jobs["a1"].priority == 3 and "a3" in jobs
    assert jobs["b1"].priority == 2  # last good state
    status = farm.files()["b.yaml"]
    assert status.status == "invalid"
    assert status.objects == ["Job/b1"]
    assert status.errors == [{"line": 7, "field": "spec.priority",
                              "message": "must be one of live, high, medium, low, batch (got 'urgent')"}]
    assert metrics.manifest_errors._value.get() == 1
    invalid = farm.audit("manifest.invalid")
    assert len(invalid) == 1 and invalid[0].entity_id == "b.yaml"

    # The same error state again (a resync) is not audited twice.
    source.sync(NOW, force=True)
    assert len(farm.audit("manifest.invalid")) == 1

    # Fixed: it applies, the metric drops.
    write(root / "b.yaml", job("b1", priority="low"))
    source.sync(NOW)
    assert farm.jobs()["b1"].priority == 1
    assert farm.files()["b.yaml"].status == "ok" and farm.files()["b.yaml"].errors == []
    assert metrics.manifest_errors._value.get() == 0


def test_half_written_file_is_invalid_until_whole(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    root = tmp_path / "m"
    text = docs(scenario(), job("h1"), job("h2"))
    write(root / "h.yaml", text[: len(text) // 2 + 3])
    source = make_source(root)
    source.sync(NOW)
    assert farm.files()["h.yaml"].status == "invalid"
    assert farm.files()["h.yaml"].errors[0]["line"] >= 1
    write(root / "h.yaml", text)
    source.sync(NOW)
    assert farm.files()["h.yaml"].status == "ok"
    assert set(farm.jobs()) == {"h1", "h2"}


def test_same_name_in_two_files_first_by_path_order_keeps_it(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    root = tmp_path / "m"
    write(root / "b.yaml", docs(scenario(), job("shared", priority="low"), job("b-only")))
    source = make_source(root)
    source.sync(NOW)
    assert farm.jobs()["shared"].source_path == "b.yaml"

    # a.yaml comes first by path order: it takes the name over; b.yaml reports the conflict.
    write(root / "a.yaml", job("shared", priority="high"))
    source.sync(NOW)
    shared = farm.jobs()["shared"]
    assert shared.source_path == "a.yaml" and shared.priority == 3
    b = farm.files()["b.yaml"]
    assert b.status == "conflict"
    assert b.objects == ["Scenario/enc", "Job/b-only"]
    assert b.errors == [{"line": 12, "field": "metadata.name", "message":
                         "Job 'shared' is already declared in a.yaml (the first file by path order keeps it)"}]
    assert "b-only" in farm.jobs()

    # a.yaml gone: b.yaml owns the name again (configured back, not pruned).
    (root / "a.yaml").unlink()
    result = source.sync(NOW)
    assert result.counts.get("pruned", 0) == 0
    shared = farm.jobs()["shared"]
    assert shared.source_path == "b.yaml" and shared.priority == 1
    assert farm.files()["b.yaml"].status == "ok"


def test_file_owned_job_refuses_api_changes_and_api_job_is_adopted(
    tmp_path: Path, make_source: SourceFactory, farm: Farm, store: Store
) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", docs(scenario(), job("owned")))
    source = make_source(root)
    source.sync(NOW)
    api_objects = validate_texts({"<api>": docs(job("owned", priority="live"), job("from-api"))}).objects
    with store.write() as session:
        owned, from_api = apply_objects(session, [o.manifest for o in api_objects],
                                        Origin("api", None, "alice"), NOW, source.config)
    assert owned.result is Outcome.ERROR and owned.conflict
    assert owned.error == "owned by file a.yaml: change it there"
    assert from_api.result is Outcome.CREATED
    assert farm.jobs()["owned"].priority == 2

    # A file that declares the API's job adopts it (audited as an update).
    write(root / "a.yaml", docs(scenario(), job("owned"), job("from-api")))
    result = source.sync(NOW)
    assert result.counts == {"configured": 1, "unchanged": 2}
    adopted = farm.jobs()["from-api"]
    assert (adopted.source, adopted.source_path) == ("file", "a.yaml")
    update = farm.audit("job.updated")[-1]
    assert update.entity_id == "from-api" and update.details["adoptedFrom"] == "api"


def test_immutable_change_after_pending_is_refused_for_that_object(
    tmp_path: Path, make_source: SourceFactory, farm: Farm, store: Store
) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", docs(scenario(), scenario("other"), job("j1"), job("j2")))
    source = make_source(root)
    source.sync(NOW)
    Operations(store, source.config).cancel("j1", now=NOW)  # j1 leaves pending
    write(root / "a.yaml", docs(scenario(), scenario("other"), job("j1", scenario="other"),
                                job("j2", priority="live")))
    source.sync(NOW)
    jobs = farm.jobs()
    assert jobs["j1"].scenario_name == "enc" and jobs["j1"].status == JobStatus.CANCELLED
    assert jobs["j2"].priority == 4  # the rest of the file applied
    status = farm.files()["a.yaml"]
    assert status.status == "invalid"
    assert status.errors == [{
        "line": 22, "field": "spec.scenario",
        "message": "Job 'j1': spec.scenario cannot change once the job has left pending "
                   "(status cancelled, attempt 0)",
    }]


@pytest.mark.parametrize("prune", [True, False])
def test_prune_on_and_off(
    prune: bool, tmp_path: Path, make_source: SourceFactory, farm: Farm, store: Store
) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", docs(scenario(), node("w1", slots=2), job("keep"), job("gone")))
    source = make_source(root, prune=prune)
    source.sync(NOW)
    ops = Operations(store, source.config)
    ops.heartbeat("w1", now=NOW)
    with store.write() as session:
        schedule(session, NOW, source.config)
    assert {j.status for j in farm.jobs().values()} == {JobStatus.ASSIGNED}

    write(root / "a.yaml", docs(scenario(), job("keep")))
    result = source.sync(NOW)
    jobs, nodes = farm.jobs(), farm.nodes()
    if prune:
        assert result.counts["pruned"] == 2
        assert set(jobs) == {"keep"} and "w1" not in nodes
        # The node's job was requeued as if it died, then kept (it is still declared).
        assert jobs["keep"].status == JobStatus.PENDING and jobs["keep"].reason == Reason.NODE_LOST
        cancelled = [e for e in farm.audit("job.transition") if e.entity_id == "gone"]
        assert cancelled[-1].details["to"] == "cancelled" and cancelled[-1].details["reason"] == "Pruned"
        assert {e.entity_id for e in farm.audit("manifest.pruned")} == {"gone", "w1"}
    else:
        assert result.counts["released"] == 2
        assert set(jobs) == {"keep", "gone"} and "w1" in nodes
        assert (jobs["gone"].source, jobs["gone"].source_path) == ("api", None)
        assert jobs["gone"].status == JobStatus.ASSIGNED  # untouched
        assert farm.audit("manifest.pruned") == []
        # Released objects are the API's now: deleting through it works.
        ops.delete_job("gone", now=NOW)
        assert "gone" not in farm.jobs()


def test_start_up_sweep_drops_objects_of_files_it_does_not_know(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    # Another directory owned "old.yaml" objects (or the status table was lost).
    write(tmp_path / "first" / "old.yaml", docs(scenario(), job("old")))
    make_source(tmp_path / "first").sync(NOW)
    write(tmp_path / "second" / "new.yaml", docs(scenario(), job("new")))
    with farm.store.write() as session:
        delete_manifest_file(session, "old.yaml")
    result = make_source(tmp_path / "second").sync(NOW)
    assert set(farm.jobs()) == {"new"}
    assert result.counts["pruned"] == 1  # the Scenario moved to new.yaml, the job went


def test_hidden_paths_and_editor_leftovers_are_ignored(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", docs(scenario(), job("real")))
    for leftover in (".a.yaml.swp", "a.yaml~", ".#a.yaml", ".hidden.yaml", ".git/x.yaml", "a.yaml.swp",
                     "notes.txt"):
        write(root / leftover, job("ghost"))
    make_source(root).sync(NOW)
    assert set(farm.jobs()) == {"real"}
    assert set(farm.files()) == {"a.yaml"}


def test_missing_root_applies_and_prunes_nothing(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", docs(scenario(), job("a1")))
    source = make_source(root)
    source.sync(NOW)
    (root / "a.yaml").rename(tmp_path / "a.yaml")
    root.rmdir()
    assert source.sync(NOW).counts == {}
    assert set(farm.jobs()) == {"a1"}


def test_git_sync_swap_of_a_symlinked_root(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    base = tmp_path / "git"
    write(base / ".rev-abc" / "shared.yaml", docs(scenario(), job("shared")))
    write(base / ".rev-abc" / "old.yaml", job("only-old"))
    write(base / ".rev-def" / "shared.yaml", docs(scenario(), job("shared")))
    write(base / ".rev-def" / "new.yaml", job("only-new"))
    link = base / "manifests"
    link.symlink_to(".rev-abc")
    source = make_source(link)
    source.sync(NOW)
    assert set(farm.jobs()) == {"shared", "only-old"}
    before = farm.audit_count()

    temporary = base / "manifests.tmp"
    temporary.symlink_to(".rev-def")
    os.replace(temporary, link)  # git-sync's atomic swap
    result = source.sync(NOW)
    assert set(farm.jobs()) == {"shared", "only-new"}
    assert result.counts == {"created": 1, "pruned": 1}
    events = [(e.event_type, e.entity_id) for e in farm.audit()[before:]]
    assert sorted(events) == sorted([
        ("job.created", "only-new"), ("manifest.applied", "new.yaml"),
        ("job.transition", "only-old"), ("job.deleted", "only-old"), ("manifest.pruned", "only-old"),
    ])
