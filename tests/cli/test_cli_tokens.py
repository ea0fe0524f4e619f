"""`ffrtmp token create|list|revoke` against the database directly, and `ffrtmp controller` flag errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.cli.main import main


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tokens.db'}"


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """`ffrtmp ARGS` through the real entry point (its one-line error handling included)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.out, captured.err

    return invoke


def test_create_prints_the_token_alone_then_list_and_revoke(db: str, run: Any) -> None:
    code, out, err = run("token", "create", "--client", "ops", "--role", "admin", "--db", db)
    assert code == 0, err
    assert re.fullmatch(r"ffr_[A-Za-z0-9_-]{43}\n", out)
    token_id = re.search(r"created (tok_[0-9a-f]+)", err).group(1)  # type: ignore[union-attr]
    code, out, _ = run("token", "create", "--client", "w1", "--role", "worker", "--node", "w1",
                       "--expires-minutes", "0.5", "--db", db)
    assert code == 0
    code, out, _ = run("token", "list", "-o", "json", "--db", db)
    listed = json.loads(out)
    assert [(t["clientId"], t["role"], t["node"], t["state"]) for t in listed] == [
        ("ops", "admin", None, "active"), ("w1", "worker", "w1", "active")]
    assert "ffr_" not in out
    code, out, _ = run("token", "revoke", token_id, "--db", db)
    assert (code, out.strip()) == (0, f"revoked {token_id}")
    code, out, _ = run("token", "list", "--db", db)
    assert code == 0 and "revoked" in out and out.splitlines()[0].startswith("ID")


def test_refusals_are_one_line(db: str, run: Any) -> None:
    code, _, err = run("token", "create", "--client", "w", "--role", "worker", "--db", db)
    assert code == 2 and "node" in err and "Traceback" not in err
    code, _, err = run("token", "revoke", "tok_000000000000", "--db", db)
    assert code == 1 and "no token" in err
    code, _, err = run("controller", "--db", db, "--tls-cert", "/nonexistent.pem")
    assert code == 2 and "--tls-key" in err
