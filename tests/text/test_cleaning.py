"""Control characters and non-characters leave request text; what belongs to the text stays."""

from __future__ import annotations

import pytest

from chatterbox_vllm.text.cleaning import remove_control_characters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello\x00world.", "Helloworld."),
        ("Line one.\nLine two.\tTabbed.\r\n", "Line one. Line two. Tabbed.  "),
        ("Red \x1b[31mtext\x1b[0m.", "Red [31mtext[0m."),
        ("Bell\x07 and DEL\x7f and C1\x9b.", "Bell and DEL and C1."),
        ("Non \ufffe\uffff\ufdd0characters \U0001ffff.", "Non characters ."),
        ("Family 👨\u200d👩\u200d👧 and \u200fbidi\u202e marks.", "Family 👨\u200d👩\u200d👧 and \u200fbidi\u202e marks."),
        ("Café e\u0301 語 مرحبا", "Café e\u0301 語 مرحبا"),
    ],
)
def test_remove_control_characters(text: str, expected: str) -> None:
    assert remove_control_characters(text) == expected
