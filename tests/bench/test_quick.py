"""`python -m bench --quick` works end to end: every suite runs and every file is written.

Speed is never asserted (the machine is shared and noisy); this proves the harness,
the peers' setups and the report still work. Needs the `bench` extras (matplotlib,
huey, procrastinate) and the local PostgreSQL server (procrastinate's peer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.bench, pytest.mark.e2e, pytest.mark.postgres]


@pytest.mark.timeout(300)
def test_quick_run_writes_every_result(tmp_path: Path) -> None:
    for module in ("matplotlib", "huey", "procrastinate"):
        pytest.importorskip(module, reason="install the bench extras: pip install -e '.[bench]'")
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "results-quick.json").read_text())
    assert data["errors"] == {}
    assert set(data["suites"]) == {"api", "dispatch_and_peers", "replicas", "reconcile", "memory", "gitops"}
    round_one = data["suites"]["dispatch_and_peers"]["figures"]["rounds"][0]
    assert set(round_one) == {"ours_sqlite", "huey_noop", "huey_spawn_true", "raw_sqlite3", "spawn_true_limit",
                              "procrastinate"}
    assert round_one["spawn_true_limit"]["per_s"] > 0
    assert round_one["ours_sqlite"]["burst"]["per_s"] > 0
    assert round_one["ours_sqlite"]["failed"] == 0
    replicas = data["suites"]["replicas"]["figures"]
    for measure in ("heartbeats", "dispatch"):
        assert [r["replicas"] for r in replicas[measure]["1"] + replicas[measure]["2"]] == [1, 2]
        assert replicas[f"{measure}_ratio"] > 0
    for run in replicas["dispatch"]["1"] + replicas["dispatch"]["2"]:
        assert run["checks"]["completed_once"] == run["jobs"] and run["checks"]["completed_twice"] == 0
    for suite in data["suites"].values():
        assert {"1m", "5m", "15m"} <= set(suite["load_before"]) and "1m" in suite["load_after"]
    assert data["durability"]["ours_sqlite"].startswith("WAL, synchronous=NORMAL")
    table = (tmp_path / "results-quick.md").read_text()
    assert "| issue | measure | figure | target | ratio | status |" in table
    assert "A process per job: starting `true` with nothing around it peaks at" in table
    assert [r["jobs"] for r in data["suites"]["reconcile"]["figures"]["scales"]] == [2_000, 20_000]
    (point,) = data["suites"]["dispatch_and_peers"]["figures"]["scale"]
    assert point["workers"] == 1 and point["ours_sqlite"] and point["huey_noop"] and point["huey_spawn_true"]
    for plot in ("throughput", "scale", "heartbeats", "latency", "memory", "reconcile"):
        assert (tmp_path / f"{plot}-quick.png").read_bytes()[:4] == b"\x89PNG"
