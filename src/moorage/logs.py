"""Log formatting that input cannot forge: one record is always one line.

User names, request paths, headers and exception messages reach log messages. A newline in any
of them would let a caller write a line that reads like a record of its own (`… INFO [1]
moorage.events: user:delete success actor=admin`), and terminal escape sequences could rewrite
what an operator sees. So the formatters here escape every control character of the whole
formatted line, once, instead of trusting each call site to do it:

- `text`: `<time> <LEVEL> [<pid>] <logger>: <message>`; control characters become `\\n`,
  `\\x1b`, `\\u2028` ...; a traceback follows on lines that start with `TRACEBACK_PREFIX`, which
  no record line does, so it stays readable without looking like records.
- `json`: one JSON object per line, ASCII only (`ensure_ascii`), so values keep their exact
  content and no raw control character or line separator is ever written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final, Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# Lines of a traceback or stack under its record. A record line starts with a digit (the date).
TRACEBACK_PREFIX: Final = "  | "

# C0 controls (CR, LF, NUL, TAB, ESC ...), DEL, C1 controls (NEL U+0085, CSI U+009B ...), the
# Unicode line and paragraph separators, bidirectional overrides and isolates (they reorder what
# a terminal shows), zero-width and BOM characters, and lone surrogates (undecodable bytes that
# aiohttp keeps as U+DC80..U+DCFF, which a strict stream would refuse to write).
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control character written as a visible escape; an ANSI escape sequence
    loses its ESC and becomes harmless text (`\\x1b[2J`)."""
    return _UNSAFE.sub(_escape_char, text)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must not fall back to logging's multi-line report
        return f"unformattable log message {record.msg!r} with arguments {record.args!r}"


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> [<pid>] <logger>: <message>`, one line per record, control characters
    escaped in every field; tracebacks on following lines, each under `TRACEBACK_PREFIX`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = _message(record)
        record.asctime = self.formatTime(record, self.datefmt)
        # Escaping the formatted line covers the message, its arguments and any other field.
        line = escape(self.formatMessage(record))
        details: list[str] = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            details.append(record.exc_text)
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        # A traceback keeps its own lines, each under the prefix; any other line break inside
        # them (an exception message's \r or \u2028) is escaped like the rest.
        lines = [line]
        lines.extend(
            TRACEBACK_PREFIX + escape(piece) for detail in details for piece in detail.split("\n")
        )
        return "\n".join(lines)


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(
    {
        "name",
        "msg",
        "args",
        "levelname",
        "levelno",
        "pathname",
        "filename",
        "module",
        "exc_info",
        "exc_text",
        "stack_info",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "relativeCreated",
        "thread",
        "threadName",
        "processName",
        "process",
        "taskName",
        "message",
        "asctime",
    }
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, process, message, the `extra=`
    fields, and `exception`/`stack` as strings when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": _message(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        extra = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _RECORD_ATTRIBUTES and key not in entry
        }
        # ensure_ascii writes every control character, line separator and non-ASCII character
        # as a \u escape: the line holds nothing a terminal or a line reader could act on.
        try:
            return json.dumps(entry | extra, ensure_ascii=True, default=repr)
        except (TypeError, ValueError):  # an `extra=` value json cannot hold (cycle, odd keys)
            extra = {key: repr(value) for key, value in extra.items()}
            return json.dumps(entry | extra, ensure_ascii=True)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def quote_field(value: str) -> str:
    """A value for a double-quoted field of a text line: `"` and `\\` escaped, so the value
    cannot end its field early and fake the fields after it."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def configure(level: str, log_format: LogFormat = "text") -> None:
    """Every record of the process, whatever its logger, goes to stderr through one formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python's warnings would otherwise be written to stderr raw, over several lines.
    logging.captureWarnings(True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
