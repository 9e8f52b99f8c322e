"""Showing text that comes from files (names, attributes of shared bundles) as plain data.

A bundle's ``source_name`` or a file's name is chosen by whoever made it; printed raw, an
escape sequence in it can clear the terminal, set its title or hide text, and in a rich
console ``[blink]`` or ``[link=...]`` is markup. :func:`inert` escapes every control and
bidirectional-override character (``\\x1b`` prints as the four characters ``\\x1b``), so the
text shows as what it is and stays on one line; rich output adds it as ``Text`` (never
parsed for markup) and plots draw it with mathtext off.
"""

from __future__ import annotations

import unicodedata

#: Bidirectional controls reorder what a terminal shows ("Trojan Source"); escaped too.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: object) -> str:
    """``str(text)`` with control (Unicode category Cc), bidirectional-override and
    unpaired-surrogate and line/paragraph-separator characters escaped, backslashes left as they are."""
    value = str(text)
    if value.isprintable() and not _BIDI.intersection(value):
        return value  # the common case: nothing to escape
    return "".join(
        _escape(c) if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI else c for c in value
    )
