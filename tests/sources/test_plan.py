"""The sync plan is a pure function of the files present, the stored state and the parsed files."""

from __future__ import annotations

from controller.manifests.loader import Problem
from controller.manifests.validate import validate_texts
from controller.sources.directory import ParsedFile, plan_sync
from controller.store.manifest_files import StoredFile

from .conftest import docs, job


def parsed(path: str, text: str) -> ParsedFile:
    report = validate_texts({path: text})
    return ParsedFile(path, "h-" + path, report.objects, report.problems)


def stored(path: str, *objects: str, status: str = "ok") -> StoredFile:
    return StoredFile(path, "old", status, [], list(objects), None)


def test_first_file_by_path_order_owns_a_name() -> None:
    plan = plan_sync(["a.yaml", "b.yaml"], {},
                     {"b.yaml": parsed("b.yaml", docs(job("x"), job("y"))), "a.yaml": parsed("a.yaml", job("x"))})
    a, b = plan.files
    assert [o.name for o in a.owned] == ["x"] and a.conflicts == ()
    assert [o.name for o in b.owned] == ["y"] and [(o.name, owner) for o, owner in b.conflicts] == [("x", "a.yaml")]
    assert b.keeps == ("Job/y",)


def test_invalid_file_keeps_its_last_good_objects_and_prunes_nothing() -> None:
    broken = ParsedFile("a.yaml", "h", problems=(Problem("a.yaml", 3, "spec", "bad"),))
    plan = plan_sync(["a.yaml"], {"a.yaml": stored("a.yaml", "Job/x", "Job/y")}, {"a.yaml": broken})
    (a,) = plan.files
    assert a.owned == () and a.keeps == ("Job/x", "Job/y") and a.drops == ()


def test_names_nobody_declares_are_dropped_and_moved_names_are_not() -> None:
    files = {"a.yaml": stored("a.yaml", "Job/x", "Job/y"), "gone.yaml": stored("gone.yaml", "Job/z", "Job/w")}
    plan = plan_sync(["a.yaml", "b.yaml"], files,
                     {"a.yaml": parsed("a.yaml", job("x")), "b.yaml": parsed("b.yaml", job("w"))})
    by_path = {f.path: f for f in plan.files}
    assert by_path["a.yaml"].drops == ("Job/y",)
    assert by_path["gone.yaml"].parsed is None and by_path["gone.yaml"].drops == ("Job/z",)
    assert [o.name for o in by_path["b.yaml"].owned] == ["w"]  # taken over from the gone file


def test_an_unchanged_file_that_loses_a_name_must_be_parsed() -> None:
    plan = plan_sync(["a.yaml", "b.yaml"], {"b.yaml": stored("b.yaml", "Job/x")},
                     {"a.yaml": parsed("a.yaml", job("x"))})
    assert plan.unparsed_losers == ("b.yaml",) and plan.files == ()
