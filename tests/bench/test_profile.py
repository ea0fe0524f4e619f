"""`python -m bench.profile`: py-spy's collapsed stacks summarized per function."""

from __future__ import annotations

from bench.profile import summarize

RAW = """\
thread (1): main;serve (controller/service.py:10);handle (controller/api/app.py:20) 6
thread (1): main;serve (controller/service.py:10);EpollSelector.select (selectors.py:468) 30
thread (2): writer;GroupCommit._run (controller/store/group.py:349);Prepared.rows (controller/store/prepared.py:118);
thread (2): writer;GroupCommit._run (controller/store/group.py:349) 4
"""


def test_busy_samples_are_shared_per_function_and_a_cut_line_is_skipped() -> None:
    summary = summarize(RAW)
    assert (summary["samples"], summary["busy_samples"]) == (40, 10)  # the cut line counts nothing
    assert dict(summary["self_pct"]) == {  # type: ignore[arg-type]
        "handle (api/app.py)": 60.0, "GroupCommit._run (store/group.py)": 40.0}
    assert dict(summary["inclusive_pct"])["serve (controller/service.py)"] == 60.0  # type: ignore[arg-type]
