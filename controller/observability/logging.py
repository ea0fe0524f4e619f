"""Logging of the controller process: text with the seed's prefixes, or JSON lines.

Messages carry their component prefix themselves (`[FaultTolerance] Detected dead
node: ...`, `[Auth] ...`, `[Queue] ...`, `[Manifests] ...`, `[API] ...`), so the
text format adds only time, level and logger. `json` writes one object per line:
`time`, `level`, `logger`, `message`, then any `extra=` fields, then `exc_info`.

Every record passes `RedactSecrets` on the way out: anything shaped like a token
(`ffr_...`), a bearer credential or an `Authorization` header value is replaced by
`[REDACTED]`. Nothing should log a secret in the first place; this is the last
line of defence for the day something does (an exception message, a dumped header).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

REDACTED = "[REDACTED]"


def _header_value(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return f"{match.group(1)}{scheme} {REDACTED}" if scheme else f"{match.group(1)}{REDACTED}"


_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # The value of an Authorization header, in any quoting: `Authorization: Bearer x`,
    # `'authorization': 'Basic x'`, `authorization=x`; the scheme is kept.
    (
        re.compile(
            r"""(?i)(authorization["']?\s*[:=]\s*["']?)(?:(bearer|basic|token)\s+)?[^\s"',;}]+"""
        ),
        _header_value,
    ),
    # A bearer credential anywhere else.
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    # Our tokens, wherever they appear.
    (re.compile(r"ffr_[A-Za-z0-9_-]+"), f"ffr_{REDACTED}"),
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}

_HANDLER_MARK = "_ffrtmp_handler"


def redact(text: str) -> str:
    """`text` with token-like strings and Authorization values replaced by `[REDACTED]`."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record so that no formatter can print a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message, string extras and exception text; never drops a record."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            # Freeze the formatted message: args rendered later could not be redacted.
            record.msg, record.args = cleaned, None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _iso_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`2026-01-01T10:00:00.000Z INFO controller.auth: [Auth] ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """UTC, ISO 8601, milliseconds."""
        return _iso_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        entry: dict[str, Any] = {
            "time": _iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "INFO",
    fmt: Literal["text", "json"] = "text",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record (root logger) to `stream` (stderr) in `fmt`, secrets redacted.

    Calling it again replaces the handler it installed before (no duplicate lines);
    handlers installed by others (pytest's capture, say) are left alone.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}: text or json")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # On the handler, not a logger: logger filters skip records propagated from children.
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
