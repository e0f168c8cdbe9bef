"""Text from a layer made printable: lone surrogates become readable escapes, once, where they enter.

tarfile decodes names that are not UTF-8 with ``surrogateescape`` (byte 0xff → ``\\udcff``), and
``json.loads`` turns ``"\\ud800"`` into a lone surrogate; neither can be encoded as UTF-8, so any
of them reaching a document crashed every format. Every tar name, link target and cataloger
record passes through here as it enters a layer record, so nothing downstream ever sees one.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape kept: show the byte, as Python's repr would
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def printable(text: str) -> str:
    """``bad\\udcff-1.0`` → ``bad\\xff-1.0`` (a literal backslash): readable, valid UTF-8, JSON-safe."""
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape, text)


def printable_json(value: Any) -> Any:
    """``value`` (a cataloger's JSON record) with every string and key made printable."""
    try:  # almost always already printable: one pass in C instead of a walk over every string
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except UnicodeEncodeError:
        return _printable_walk(value)


def _printable_walk(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable_walk(key): _printable_walk(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable_walk(item) for item in value]
    return value


def one_line(text: str) -> str:
    """``text`` with control characters escaped: a warning printed on a terminal stays one line,
    and a file name cannot move the cursor or recolour the screen."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
