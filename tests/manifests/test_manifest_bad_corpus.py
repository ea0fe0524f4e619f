"""Every file of the bad corpus holds exactly one problem, announced on its first line."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.manifests.validate import validate_paths

BAD = Path(__file__).parent / "bad"
CASES = sorted(BAD.glob("*.yaml"))


def _expected(path: Path) -> str:
    """The `# expect: LINE: field: message` comment, with `{file}` standing for the file."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    prefix = "# expect: "
    assert first.startswith(prefix), f"{path.name} lacks its expect comment"
    return f"{path}:" + first[len(prefix) :].replace("{file}", str(path))


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 35


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_bad_manifest_has_its_one_problem(path: Path) -> None:
    report = validate_paths([path])
    assert [str(p) for p in report.problems] == [_expected(path)]
    assert not report.ok
