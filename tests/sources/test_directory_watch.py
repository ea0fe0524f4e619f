"""The watched directory with a real observer: events wake the loop, `sync` applies.

SQLite only (the database side is covered on both in test_directory_sync.py); each
wait polls with a short timeout instead of sleeping.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.loop import ReconcileLoop
from controller.reconcile import Reconciler
from controller.sources.directory import DirectorySource

from .conftest import NOW, Farm, SourceFactory, docs, job, scenario, write

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class Driver:
    """Plays the reconcile loop: a sync each time the source wakes it."""

    def __init__(self, source: DirectorySource) -> None:
        self.source = source
        self.woken = threading.Event()
        self.wakes = 0
        source.on_change = self._wake

    def _wake(self) -> None:
        self.wakes += 1
        self.woken.set()

    def start(self) -> None:
        self.source.start()
        self.source.sync(NOW)  # the first, full sync

    def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        """Sync on every wake until `check()` holds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError("the directory's change never reached the database")
            if self.woken.wait(0.02):
                self.woken.clear()
                self.source.sync(NOW)


def test_create_modify_rename_delete(tmp_path: Path, make_source: SourceFactory, farm: Farm) -> None:
    root = tmp_path / "m"
    write(root / "s.yaml", scenario())
    driver = Driver(make_source(root))
    driver.start()
    assert driver.source.watching

    write(root / "a.yaml", job("a1"))
    driver.until(lambda: "a1" in farm.jobs())
    assert driver.wakes >= 1

    write(root / "a.yaml", job("a1", priority="batch"))
    driver.until(lambda: farm.jobs()["a1"].priority == 0)

    os.rename(root / "a.yaml", root / "renamed.yaml")
    driver.until(lambda: farm.jobs()["a1"].source_path == "renamed.yaml")

    (root / "renamed.yaml").unlink()
    driver.until(lambda: "a1" not in farm.jobs())
    assert farm.audit("manifest.pruned")[-1].entity_id == "a1"


def test_many_files_at_once_and_a_new_folder(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    root = tmp_path / "m"
    write(root / "s.yaml", scenario())
    driver = Driver(make_source(root))
    driver.start()
    for i in range(40):
        write(root / f"team-{i % 4}" / f"jobs-{i:02d}.yaml", docs(job(f"j{i}-a"), job(f"j{i}-b")))
    driver.until(lambda: len(farm.jobs()) == 80)
    assert len(farm.files()) == 41
    # Debounced: a burst of 40 files wakes the loop a few times, not once per event.
    assert driver.wakes < 20


def test_file_written_in_two_halves(tmp_path: Path, make_source: SourceFactory, farm: Farm) -> None:
    root = tmp_path / "m"
    write(root / "s.yaml", scenario())
    driver = Driver(make_source(root))
    driver.start()
    text = docs(job("h1"), job("h2"))
    with open(root / "h.yaml", "w") as stream:
        stream.write(text[: len(text) // 2 + 5])
        stream.flush()
        driver.until(lambda: "h.yaml" in farm.files())
        assert farm.files()["h.yaml"].status == "invalid"
        stream.write(text[len(text) // 2 + 5:])
    driver.until(lambda: farm.files()["h.yaml"].status == "ok")
    assert {"h1", "h2"} <= set(farm.jobs())


def test_editor_save_writes_a_temporary_file_and_renames_it_over(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", docs(scenario(), job("e1")))
    driver = Driver(make_source(root))
    driver.start()
    swap = write(root / ".a.yaml.swp", docs(scenario(), job("e1", priority="live")))
    write(root / "a.yaml~", "garbage: [")
    os.replace(swap, root / "a.yaml")
    driver.until(lambda: farm.jobs()["e1"].priority == 4)
    assert set(farm.files()) == {"a.yaml"}


def test_git_sync_swap_is_followed_by_the_observer(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    base = tmp_path / "sync"
    write(base / ".rev-abc" / "shared.yaml", docs(scenario(), job("shared")))
    write(base / ".rev-abc" / "old.yaml", job("only-old"))
    link = base / "manifests"
    link.symlink_to(".rev-abc")
    driver = Driver(make_source(link))
    driver.start()
    assert set(farm.jobs()) == {"shared", "only-old"}
    audit = farm.audit_count()

    write(base / ".rev-def" / "shared.yaml", docs(scenario(), job("shared")))
    write(base / ".rev-def" / "new.yaml", job("only-new"))
    (base / "manifests.tmp").symlink_to(".rev-def")
    os.replace(base / "manifests.tmp", link)
    driver.until(lambda: set(farm.jobs()) == {"shared", "only-new"})
    events = sorted(e.event_type for e in farm.audit()[audit:])
    assert events == ["job.created", "job.deleted", "job.transition", "manifest.applied", "manifest.pruned"]

    # The new target is watched: an edit in .rev-def is seen (git-sync never does this; we may).
    write(base / ".rev-def" / "new.yaml", job("only-new", priority="live"))
    driver.until(lambda: farm.jobs()["only-new"].priority == 4)


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env)
    return done.stdout.strip()


def test_git_checkout_moves_the_desired_state(
    tmp_path: Path, make_source: SourceFactory, farm: Farm
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo / "scenarios.yaml", scenario())
    write(repo / "jobs" / "a.yaml", docs(job("a1"), job("a2")))
    write(repo / "jobs" / "b.yaml", job("b1"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    v1 = git(repo, "rev-parse", "HEAD")
    write(repo / "jobs" / "a.yaml", docs(job("a1", priority="live"), job("a3")))
    (repo / "jobs" / "b.yaml").unlink()
    write(repo / "jobs" / "c.yaml", job("c1"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v2")

    driver = Driver(make_source(repo))
    driver.start()
    assert set(farm.jobs()) == {"a1", "a3", "c1"}
    assert farm.jobs()["a1"].priority == 4

    git(repo, "checkout", "-q", v1)
    driver.until(lambda: set(farm.jobs()) == {"a1", "a2", "b1"} and farm.jobs()["a1"].priority == 2)
    git(repo, "checkout", "-q", "main")
    driver.until(lambda: set(farm.jobs()) == {"a1", "a3", "c1"} and farm.jobs()["a1"].priority == 4)
    assert all(not f.startswith(".git") for f in farm.files())


def test_wired_to_the_reconcile_loop(tmp_path: Path, make_source: SourceFactory, farm: Farm) -> None:
    root = tmp_path / "m"
    write(root / "s.yaml", scenario())
    source = make_source(root)
    reconciler = Reconciler(source.store, source.config, started_at=datetime.now(UTC),
                            desired_state=source.sync)
    loop = ReconcileLoop(reconciler, interval_seconds=60)  # only wakes run passes
    source.on_change = loop.wake
    source.start()
    loop.start()
    try:
        write(root / "a.yaml", job("looped"))
        deadline = time.monotonic() + 5
        while "looped" not in farm.jobs():
            assert time.monotonic() < deadline, "the loop never applied the file"
            time.sleep(0.01)
        assert time.monotonic() - (deadline - 5) < 1.0  # visible within a second
    finally:
        loop.stop()
        source.stop()
