"""Secrets: a value that must never be printed (``repr`` and ``str`` show ``<SECRET>``),
and how to recognise one pasted where it does not belong, so it is not printed either."""

from __future__ import annotations

import math
import re
from collections import Counter


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<SECRET>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


#: A JWT: base64url JSON header ("eyJ" is how '{"' encodes), payload and signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", re.IGNORECASE)
_HEX_SECRET = re.compile(r"[0-9a-fA-F]{32,}")
#: Long runs of base64/hex characters: API keys, secret access keys, session tokens.
_SECRET_CHARS = re.compile(r"[A-Za-z0-9+/=_.~-]{32,}")


def looks_like_token(value: str) -> bool:
    """True for a JWT or a long random-looking string: a secret, not a name or a path."""
    text = value.strip()
    if _JWT.search(text) or _HEX_SECRET.fullmatch(text):
        return True
    if not _SECRET_CHARS.fullmatch(text):
        return False
    if not all(re.search(chars, text) for chars in ("[a-z]", "[A-Z]", "[0-9]")):
        return False
    counts = Counter(text).values()
    entropy = -sum(n / len(text) * math.log2(n / len(text)) for n in counts)
    return entropy >= 4.0  # random base64 is ~5 bits a character; words and paths less


#: Words of free text (split at whitespace and quotes).
_WORDS = re.compile(r"[^\s'\"]+")
#: Where a secret may sit inside a longer value: an address, a URL, a command line.
_PARTS = re.compile(r"[\s:/@?&=,;\[\]'\"]+")


def holds_token(value: str) -> bool:
    """True if ``value`` or any part of it (``SECRET:80``, ``https://u:SECRET@host``) looks
    like a token."""
    return looks_like_token(value) or any(map(looks_like_token, _PARTS.split(value)))


def redact(text: str) -> str:
    """``text`` (a command's error output, say) with every word that looks like a token
    replaced by ``<redacted>``: ``Authorization: Bearer eyJ...`` keeps its shape, not its
    secret."""
    return _WORDS.sub(lambda word: "<redacted>" if holds_token(word[0]) else word[0], text)
