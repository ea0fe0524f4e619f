"""Log lines: seed prefixes in text, one JSON object per line, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from controller.observability.logging import REDACTED, configure_logging, redact

TOKEN = "ffr_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    yield out
    for handler in [h for h in root.handlers if getattr(h, "_ffrtmp_handler", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_text_lines_keep_the_message_prefix(stream: io.StringIO) -> None:
    configure_logging("INFO", "text", stream=stream)
    logging.getLogger("controller.reconcile").info(
        "[FaultTolerance] Detected dead node: %s (%s)", "worker-01", 7
    )
    logging.getLogger("controller.reconcile").debug("hidden at INFO")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("INFO controller.reconcile: [FaultTolerance] Detected dead node: worker-01 (7)")
    assert line[:24].endswith("Z")  # 2026-01-01T10:00:00.000Z


def test_json_lines_carry_time_level_logger_message_and_extras(stream: io.StringIO) -> None:
    configure_logging("DEBUG", "json", stream=stream)
    log = logging.getLogger("controller.queue")
    log.debug("[Queue] Assigned %s", "job-a", extra={"job": "job-a", "attempt": 2})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("[Queue] failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "DEBUG" and first["logger"] == "controller.queue"
    assert first["message"] == "[Queue] Assigned job-a"
    assert (first["job"], first["attempt"]) == ("job-a", 2)
    assert first["time"].endswith("Z")
    assert "RuntimeError: boom" in second["exc_info"]


def test_configure_twice_does_not_duplicate_lines(stream: io.StringIO) -> None:
    configure_logging("INFO", "text", stream=stream)
    configure_logging("INFO", "text", stream=stream)
    logging.getLogger("controller").info("[API] once")
    assert stream.getvalue().count("[API] once") == 1


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tokens_and_authorization_values_are_redacted(stream: io.StringIO, fmt: str) -> None:
    configure_logging("INFO", fmt, stream=stream)  # type: ignore[arg-type]
    log = logging.getLogger("controller.api")
    log.info("[API] token %s issued", TOKEN)
    log.info("[API] headers %s", {"Authorization": "Bearer opaque-secret-value"})
    log.info("[API] request", extra={"auth": f"Bearer {TOKEN}"})
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("[API] failed")
    out = stream.getvalue()
    assert TOKEN not in out
    assert TOKEN[4:20] not in out
    assert "opaque-secret-value" not in out
    assert REDACTED in out
    if fmt == "json":  # the traceback stays inside its object: one line per record
        assert [json.loads(line)["logger"] for line in out.splitlines()] == ["controller.api"] * 4


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact("[Auth] Created token tok_3f9a0c12be47 for client ci") == (
        "[Auth] Created token tok_3f9a0c12be47 for client ci"
    )
    assert redact(f"Authorization: Bearer {TOKEN}") == f"Authorization: Bearer {REDACTED}"
    assert redact("authorization=abc123") == f"authorization={REDACTED}"
    assert redact(f"got {TOKEN}.") == f"got ffr_{REDACTED}."


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging("LOUD")
    with pytest.raises(ValueError, match="format"):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]
