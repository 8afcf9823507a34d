"""README's settings table is the one the Settings class renders (regenerate with the command in its marker)."""

from __future__ import annotations

from pathlib import Path

from chatterbox_vllm.settings import Settings
from chatterbox_vllm.settings_doc import BEGIN, END, render_into, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    assert render_into(text) == text, "run: python -m chatterbox_vllm.settings_doc --write README.md"


def test_table_lists_every_setting() -> None:
    table = settings_table()
    for name in Settings.model_fields:
        assert f"`CHATTERBOX_{name.upper()}`" in table
    assert all(line.count(" | ") >= 2 for line in table.splitlines() if line.startswith("| `CHATTERBOX_"))
