r"""Logging setup: one line per event, as text for people or JSON for log pipelines.

Code logs with ``extra={"event": "...", <field>: <value>}``; the formatters put the event
name and fields on the line. Nothing secret is ever passed as a field (credentials are
logged through ``mask_key_id``), so no formatter has to scrub.

Field values can come from clients (a User-Agent, a role name in a URL), so the text format
escapes them logfmt-style and every line parses back to its true fields:

    <ts> <LEVEL> <message>  [key=value key="value with spaces" ...]

A value is written bare only if it is non-empty and holds no space, quote, bracket, ``=``,
backslash or unprintable character; otherwise it is double-quoted with ``\\``, ``\"``,
``\n``, ``\r``, ``\t`` and ``\xNN``/``\uNNNN``/``\UNNNNNNNN`` escapes. The message escapes
backslashes and unprintable characters the same way and never holds two spaces in a row (nor
a leading or trailing space: such a space is written ``\x20``), so the first ``"  ["`` after
the level is where the fields begin.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "event"}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BARE = re.compile(r'[^\s"\[\]=\\]+')
#: A space at the start or end of the message, or followed by another space.
_LOOSE_SPACE = re.compile(r"^ | (?= )| $")


def _escape_char(char: str) -> str:
    if char in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _escape(text: str) -> str:
    return "".join(map(_escape_char, text))


def format_value(value: object) -> str:
    """A field value as logfmt: bare when unambiguous, else quoted with escapes."""
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    return '"' + _escape(text) + '"'


def format_message(message: str) -> str:
    """The message with unprintables escaped and no run of spaces that could end it."""
    escaped = "".join(_escape_char(c) if c != '"' else c for c in message)
    return _LOOSE_SPACE.sub(r"\\x20", escaped)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={format_value(v)}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {format_message(record.getMessage())}"
        if fields:
            line += f"  [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(log_format: str, level: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries are chatty at INFO/DEBUG (aiohttp access log: we log requests ourselves).
    for noisy in ("aiobotocore", "botocore", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
