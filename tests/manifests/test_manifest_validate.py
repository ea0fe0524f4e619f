"""Judging files together: directories, cross-file names and placeholders, the examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.manifests.validate import (
    is_manifest_name,
    manifest_files,
    validate_paths,
    validate_texts,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests"
GOOD = Path(__file__).parent / "good"

SCENARIO = (
    "apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata:\n  name: sleep\n"
    "spec:\n  command: [sleep, '{seconds}']\n"
)


def job(name: str, scenario: str = "sleep", parameters: str = "") -> str:
    text = f"apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  scenario: {scenario}\n"
    return text + (f"  parameters: {parameters}\n" if parameters else "")


def test_every_example_validates() -> None:
    files = manifest_files(EXAMPLES)
    assert len(files) >= 3
    report = validate_paths([EXAMPLES])
    assert [str(p) for p in report.problems] == []
    kinds = {o.kind for o in report.objects}
    assert kinds == {"Job", "Scenario"}  # local demo workers register themselves


def test_examples_are_portable_or_ask_for_ffmpeg() -> None:
    report = validate_paths([EXAMPLES])
    scenarios = [o.manifest for o in report.objects if o.kind == "Scenario"]
    for scenario in scenarios:
        command = scenario.spec.command  # type: ignore[union-attr]
        assert command[0] not in ("sh", "bash", "python3", "python")
        if command[0] == "ffmpeg":
            assert scenario.spec.requires == {"ffmpeg": "true"}  # type: ignore[union-attr]
    assert any(s.spec.command[0] != "ffmpeg" for s in scenarios)  # type: ignore[union-attr]


def test_good_examples_validate() -> None:
    report = validate_paths([GOOD])
    assert report.problems == ()
    assert {o.kind for o in report.objects} == {"Job", "Node", "Scenario"}


def test_directories_skip_hidden_paths_and_editor_leftovers(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "a.yaml").write_text(SCENARIO)
    (tmp_path / "sub" / "b.yml").write_text(job("b", parameters="{seconds: 1}"))
    (tmp_path / "sub" / "deeper" / "c.yaml").write_text(job("c", parameters="{seconds: 1}"))
    for junk in (".hidden.yaml", "a.yaml~", ".a.yaml.swp", "x.yaml.swp", ".#a.yaml", "notes.txt"):
        (tmp_path / junk).write_text("not: [valid")
    (tmp_path / ".git" / "d.yaml").write_text("not: [valid")
    files = [p.relative_to(tmp_path).as_posix() for p in manifest_files(tmp_path)]
    assert files == ["a.yaml", "sub/b.yml", "sub/deeper/c.yaml"]
    report = validate_paths([tmp_path])
    assert report.ok
    assert [o.name for o in report.objects] == ["sleep", "b", "c"]


def test_manifest_names() -> None:
    assert is_manifest_name("jobs.yaml") and is_manifest_name("jobs.yml")
    for name in ("jobs.json", "jobs.yaml~", "jobs.yaml.swp", ".#jobs.yaml", ".jobs.yaml"):
        assert not is_manifest_name(name)


def test_duplicate_names_across_files_name_the_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(job("news", parameters="{seconds: 1}"))
    (tmp_path / "b.yaml").write_text("# second\n" + job("news", parameters="{seconds: 2}"))
    (tmp_path / "c.yaml").write_text(SCENARIO.replace("name: sleep", "name: news"))
    report = validate_paths([tmp_path / "b.yaml", tmp_path / "a.yaml", tmp_path / "c.yaml"])
    first = tmp_path / "a.yaml"
    assert [str(p) for p in report.problems] == [
        f"{tmp_path / 'b.yaml'}:5: metadata.name: duplicate Job name 'news' (first declared at {first}:4)"
    ]
    # Names are unique per kind: a Scenario may share a Job's name.
    assert sorted((o.kind, o.name, Path(o.path).name) for o in report.objects) == [
        ("Job", "news", "a.yaml"),
        ("Scenario", "news", "c.yaml"),
    ]


def test_placeholders_are_checked_against_a_scenario_in_another_file(tmp_path: Path) -> None:
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    (tmp_path / "job.yaml").write_text(job("a", parameters="{other: 1}"))
    report = validate_paths([tmp_path])
    assert [str(p) for p in report.problems] == [
        f"{tmp_path / 'job.yaml'}:7: spec.parameters: missing value for placeholder {{seconds}} "
        "of scenario 'sleep'"
    ]
    assert [o.name for o in report.objects] == ["sleep"]


def test_a_job_whose_scenario_is_elsewhere_is_valid(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(job("a", scenario="not-here"))
    report = validate_paths([tmp_path / "job.yaml"])
    assert report.ok and [o.name for o in report.objects] == ["a"]


def test_problems_are_ordered_by_path_then_line(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(job("b") + "  priority: urgent\n  bogus: 1\n")
    (tmp_path / "a.yaml").write_text("x: [\n")
    report = validate_paths([tmp_path])
    assert [(Path(p.path).name, p.line) for p in report.problems] == [
        ("a.yaml", 2),
        ("b.yaml", 7),
        ("b.yaml", 8),
    ]


def test_a_missing_path_is_a_problem_and_a_file_named_twice_is_judged_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(job("a"))
    report = validate_paths([tmp_path, tmp_path / "a.yaml", tmp_path / "nope.yaml"])
    assert [str(p) for p in report.problems] == [f"{tmp_path / 'nope.yaml'}:1: no such file or directory"]
    assert len(report.objects) == 1


def test_validate_texts_judges_inputs_together() -> None:
    report = validate_texts({"job": job("a", parameters="{}"), "scenario": SCENARIO})
    assert [str(p) for p in report.problems] == [
        "job:7: spec.parameters: missing value for placeholder {seconds} of scenario 'sleep'"
    ]


def test_json_bodies_get_line_numbers() -> None:
    body = (
        '[\n  {"apiVersion": "ffrtmp.io/v1", "kind": "Node",\n'
        '   "metadata": {"name": "w1"},\n   "spec": {"slots": 0}}\n]\n'
    )
    report = validate_texts({"body": body}, item_lists=True)
    assert [str(p) for p in report.problems] == ["body:4: spec.slots: must be at least 1 (got 0)"]


@pytest.mark.parametrize("size", [5 * 1024 * 1024])
def test_big_junk_file_is_refused_by_size(tmp_path: Path, size: int) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\xde\xad\xbe\xef" * (size // 4))
    (problem,) = validate_paths([junk]).problems
    assert problem.message == f"file too large: {size} bytes (limit 4194304 bytes)"
