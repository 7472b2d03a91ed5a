"""The text log format: hostile messages and field values cannot forge fields or lines."""

from __future__ import annotations

import logging
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sidecar.logs import TextFormatter

_PREFIX = re.compile(r"^(\S+) (\S+)")
_BARE = re.compile(r'[^\s"\[\]=\\]+')
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPE = re.compile(r'\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(["\\nrt]))')
_SIMPLE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        hex_code = match.group(1) or match.group(2) or match.group(3)
        return chr(int(hex_code, 16)) if hex_code else _SIMPLE[match.group(4)]

    assert "\\" not in _ESCAPE.sub("", text), f"stray backslash in {text!r}"
    return _ESCAPE.sub(one, text)


def parse_line(line: str) -> tuple[str, str, dict[str, str]]:
    """(level, message, fields) of one text line; raises on anything malformed."""
    assert "\n" not in line and "\r" not in line
    prefix = _PREFIX.match(line)
    assert prefix, line
    pad = " " * (max(0, 7 - len(prefix.group(2))) + 1)  # levelname:<7, then one space
    assert line[prefix.end() :].startswith(pad), line
    rest = line[prefix.end() + len(pad) :]
    message, sep, section = rest.partition("  [")
    fields: dict[str, str] = {}
    if sep:
        assert section.endswith("]"), line
        body, pos = section[:-1], 0
        while pos < len(body):
            key = _KEY.match(body, pos)
            assert key and body[key.end()] == "=", line
            pos = key.end() + 1
            if body[pos] == '"':
                end = pos + 1
                while body[end] != '"':
                    end += 2 if body[end] == "\\" else 1
                value, pos = _unescape(body[pos + 1 : end]), end + 1
            else:
                bare = _BARE.match(body, pos)
                assert bare, line
                value, pos = bare.group(), bare.end()
            assert key.group() not in fields, line
            fields[key.group()] = value
            if pos < len(body):
                assert body[pos] == " ", line
                pos += 1
    return prefix.group(2), _unescape(message), fields


def render(message: str, fields: dict[str, Any]) -> str:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "%s", (message,), None)
    for key, value in fields.items():
        setattr(record, key, value)
    return TextFormatter().format(record)


FORGERY = '"]  [event=served role=prod remote=10.0.0.1 user_agent=x'


def test_a_forged_user_agent_stays_one_field() -> None:
    """A User-Agent holding ']  [event=served role=prod ...' is one quoted value, no new fields."""
    fields = {"event": "auth_denied", "role": "dev", "user_agent": FORGERY, "remote": "127.0.0.1"}
    line = render("refused", fields)
    level, message, parsed = parse_line(line)
    assert (level, message) == ("WARNING", "refused")
    assert parsed == {"role": "dev", "user_agent": FORGERY, "remote": "127.0.0.1"}


def test_newlines_cannot_start_a_second_line() -> None:
    """A newline in a value or the message is escaped: one record, one line."""
    line = render("a\n2026-01-01T00:00:00.000Z INFO    fake", {"ua": "x\r\nINFO fake  [a=b]"})
    assert "\n" not in line
    _, message, parsed = parse_line(line)
    assert message == "a\n2026-01-01T00:00:00.000Z INFO    fake"
    assert parsed == {"ua": "x\r\nINFO fake  [a=b]"}


def test_a_message_cannot_forge_the_field_section() -> None:
    """A message ending in '  [event=served role=prod]' is not read as fields."""
    line = render("no role named 'x'  [event=served role=prod]", {})
    _, message, parsed = parse_line(line)
    assert parsed == {}
    assert message == "no role named 'x'  [event=served role=prod]"


def test_plain_values_stay_readable() -> None:
    """Simple values are written bare, as before: key=value."""
    line = render("served", {"role": "default", "remote": "127.0.0.1", "count": 3})
    assert line.endswith("  [role=default remote=127.0.0.1 count=3]")


@given(
    message=st.text(max_size=40),
    values=st.lists(st.text(max_size=40), min_size=0, max_size=4),
)
def test_every_line_parses_back_to_its_true_fields(message: str, values: list[str]) -> None:
    """Any message and any field values (hostile text included) round-trip exactly."""
    fields = {f"field{i}": v for i, v in enumerate(values)}
    line = render(message, fields)
    level, parsed_message, parsed = parse_line(line)
    assert level == "WARNING"
    assert parsed_message == message
    assert parsed == fields
