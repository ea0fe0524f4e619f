"""The benchmark script runs end to end at a tiny size (the real sizes are for `python bench/gitops.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gitops.py"


def test_bench_smoke() -> None:
    spec = importlib.util.spec_from_file_location("bench_gitops", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(files=5, jobs=4, db=None)
    assert result["jobs_in_database"] == 20
    assert result["initial_counts"] == {"created": 20 + bench.SCENARIOS}
    assert result["noop_resync_counts"] == {} and result["noop_resync_files_read"] == 6
    assert 0 < result["one_file_change_seconds"] < 5
    assert "| initial apply |" in bench.markdown(result)
