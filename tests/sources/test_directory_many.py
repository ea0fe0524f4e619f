"""Many objects in one sync: every one applied and audited, errors at their lines, GC left as found."""

from __future__ import annotations

import gc
from pathlib import Path

from .conftest import NOW, Farm, SourceFactory, docs, job, scenario, write


def test_many_jobs_in_many_files_are_created_and_audited_once_each(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    root = tmp_path / "m"
    write(root / "scenarios.yaml", scenario())
    for f in range(12):
        write(root / f"team-{f % 3}" / f"jobs-{f:02d}.yaml",
              docs(*(job(f"j-{f:02d}-{j:03d}") for j in range(60))))
    source = make_source(root)

    result = source.sync(NOW)
    assert result.counts == {"created": 12 * 60 + 1}
    jobs = farm.jobs()
    assert len(jobs) == 720
    assert jobs["j-07-059"].source_path == "team-1/jobs-07.yaml"
    created = [e.entity_id for e in farm.audit("job.created")]
    assert sorted(created) == sorted(jobs) and len(created) == len(set(created))
    assert len(farm.audit("manifest.applied")) == 13
    assert farm.files()["team-1/jobs-07.yaml"].objects == [f"Job/j-07-{j:03d}" for j in range(60)]

    again = source.sync(NOW, force=True)
    assert again.read == 13 and again.counts == {}


def test_refused_job_in_a_plain_file_is_reported_at_its_line(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    # The Scenario is in another file, so the placeholder is judged when applying, and the
    # file's lines (deferred for a plain file) must still point at the right document.
    root = tmp_path / "m"
    write(root / "a-scenarios.yaml", scenario(defaults="{}"))
    write(root / "b-jobs.yaml", docs(
        job("ok-1", extra="  parameters: {res: 1080p}\n"),
        job("missing", extra="  parameters: {other: 1}\n"),
    ))
    source = make_source(root)
    source.sync(NOW)
    b = farm.files()["b-jobs.yaml"]
    assert b.status == "invalid"
    assert b.errors == [{
        "line": 17, "field": "spec.parameters",
        "message": "Job 'missing': no value for placeholder(s) {res} of scenario 'enc'",
    }]
    assert set(farm.jobs()) == {"ok-1"}


def test_sync_leaves_the_garbage_collector_as_it_found_it(
    tmp_path: Path, make_source: SourceFactory
) -> None:
    write(tmp_path / "m" / "a.yaml", docs(scenario(), job("a1"), job("a2")))
    source = make_source(tmp_path / "m")
    assert gc.get_freeze_count() == 0
    source.sync(NOW)
    assert gc.get_freeze_count() == 0 and gc.isenabled()

    # A process that freezes objects itself keeps them frozen.
    kept = [object() for _ in range(3)]
    gc.freeze()
    try:
        assert gc.get_freeze_count() > 0
        source.sync(NOW, force=True)
        assert gc.get_freeze_count() > 0  # not unfrozen by the sync
    finally:
        gc.unfreeze()
    assert kept
