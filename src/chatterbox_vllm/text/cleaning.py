"""Characters no speech model should see: control codes and non-characters in request text.

NUL, escape sequences and the like carry no sound, and a tokenizer maps them to unknown tokens that make the model
babble; they are dropped before chunking. Whitespace controls (tab, newline, carriage return) become spaces.
Format characters (zero-width joiners inside emoji, bidi marks) are kept: they belong to the text.
"""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE_CONTROLS = re.compile(r"[\t\n\r\x0b\x0c\x1c-\x1f\x85]")


def _is_noncharacter(char: str) -> bool:
    code = ord(char)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def remove_control_characters(text: str) -> str:
    """`text` without control characters (category Cc), surrogates and non-characters."""
    text = _WHITESPACE_CONTROLS.sub(" ", text)
    return "".join(
        char for char in text if unicodedata.category(char) not in ("Cc", "Cs") and not _is_noncharacter(char)
    )
