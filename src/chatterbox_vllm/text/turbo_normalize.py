"""Turbo's/Nano's text clean-up, identical to `punc_norm` of the reference's `tts_turbo.py` (chatterbox-tts 0.1.7).

It differs from the English model's (`normalize.punc_norm`): no "..." / " - " / ";" rewrites, whitespace of any kind
is collapsed to single spaces, and no CJK enders. Keep it exact: the model was trained on text cleaned this way.
Parity: tests/fixtures/golden/turbo_text/punc_norm.json.
"""

from __future__ import annotations

# What the reference substitutes for empty text (the product refuses empty text before it gets here).
EMPTY_TEXT_SENTENCE = "You need to add some text for me to talk."

# In the reference's order; order matters (" ," is looked for after "…" became ", ").
_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("…", ", "),
    (":", ","),
    ("—", "-"),
    ("–", "-"),
    (" ,", ","),
    ("“", '"'),
    ("”", '"'),
    ("‘", "'"),
    ("’", "'"),
)
_ENDERS = (".", "!", "?", "-", ",")


def punc_norm(text: str) -> str:
    """Capitalise the first letter, collapse whitespace, replace uncommon punctuation, end with punctuation."""
    if not text:
        return EMPTY_TEXT_SENTENCE
    if text[0].islower():
        text = text[0].upper() + text[1:]
    text = " ".join(text.split())
    for old, new in _REPLACEMENTS:
        text = text.replace(old, new)
    text = text.rstrip(" ")
    if not text.endswith(_ENDERS):
        text += "."
    return text
