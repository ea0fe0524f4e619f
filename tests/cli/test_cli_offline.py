"""Offline commands as a user runs them: a real `ffrtmp` process, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ffrtmp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFRTMP_")}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=60, check=False,
    )


def test_validate_accepts_the_examples() -> None:
    result = ffrtmp("validate", "manifests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "are valid" in result.stdout


def test_validate_reports_each_problem_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a}\n"
        "spec:\n  scenario: s\n  priority: urgent\n"
    )
    result = ffrtmp("validate", str(bad), str(ROOT / "manifests"))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines == [f"{bad}:6: spec.priority: must be one of live, high, medium, low, batch (got 'urgent')"]
    assert "Traceback" not in result.stderr


def test_validate_judges_files_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: ffrtmp.io/v1\nkind: Scenario\nmetadata: {name: s}\nspec: {command: [echo, '{x}']}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: j}\nspec: {scenario: s}\n"
    )
    result = ffrtmp("validate", str(tmp_path))
    assert result.returncode == 1
    assert "b.yaml:4: spec.scenario:" in result.stdout
    assert "{x}" in result.stdout


def test_validate_missing_path_fails(tmp_path: Path) -> None:
    result = ffrtmp("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "no such file or directory" in result.stdout


def test_schema_is_json_schema_of_the_kinds() -> None:
    result = ffrtmp("schema")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    text = json.dumps(document)
    for kind in ("Job", "Node", "Scenario"):
        assert f'"{kind}"' in text


def test_db_upgrade_creates_and_is_idempotent(tmp_path: Path) -> None:
    first = ffrtmp("db", "upgrade", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "upgraded database from empty to" in first.stdout
    assert (tmp_path / "ffrtmp.db").exists()
    second = ffrtmp("db", "upgrade", cwd=tmp_path)
    assert "nothing to do" in second.stdout


def test_db_upgrade_sql_prints_sql_without_touching_a_database(tmp_path: Path) -> None:
    result = ffrtmp("db", "upgrade", "--sql", "--db", "postgresql://nobody@127.0.0.1:1/none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE jobs" in result.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("db", "upgrade", "--db", "mysql://x/y"), "unsupported database"),
        (("db", "upgrade", "--config", "/nonexistent.yaml"), "cannot read"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    result = ffrtmp(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
