"""Text a submission shaped, made safe for a terminal.

Span and service names, log lines, evidence, rows, notes and file names come from a submission. Shown
raw they drive the instructor's terminal: clear it (`ESC [2J`), retitle it (OSC 0), write its clipboard
(OSC 52), plant hidden links (OSC 8), hide text behind a carriage return or reorder it (bidi
overrides). `printable` shows each such character as a visible escape (`\\x1b`, `\\u202e`) instead, so
the attempt stays readable as evidence; `markup_safe` also escapes rich markup (`[bold]`,
`[link=...]` in a span name stays text). Every terminal view applies them where it renders
(report/console.py, report/waterfall.py, live.py, the cli); JSON, JUnit and HTML keep their own escaping.
"""
from __future__ import annotations

import unicodedata

from rich.markup import escape

UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # controls (C0, DEL, C1), format (bidi, zero-width), surrogates, separators


def _visible(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, multiline: bool = False) -> str:
    """`text` with every control, format and separator character shown as a visible escape; newlines
    (and tabs) kept when `multiline`, tabs always."""
    text = str(text)
    if text.isprintable():
        return text
    if multiline:
        text = text.replace("\r\n", "\n")
    keep = "\n\t" if multiline else "\t"
    return "".join(ch if ch in keep or unicodedata.category(ch) not in UNSAFE else _visible(ch) for ch in text)


def markup_safe(text: object, multiline: bool = False) -> str:
    """`printable(text)` for a rich markup string: its own `[...]` is text, never a style or a link."""
    return escape(printable(text, multiline))
