"""Text rules beyond the golden cases: validation, final punctuation, and per-language preparation."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from chatterbox_vllm.text.languages import SUPPORTED_LANGUAGES, UnsupportedLanguageError, validate_language
from chatterbox_vllm.text.multilingual import CangjieConverter, japanese_to_kana, korean_to_jamo
from chatterbox_vllm.text.normalize import EmptyTextError, punc_norm, validate_text


def test_language_validation() -> None:
    assert len(SUPPORTED_LANGUAGES) == 23
    assert validate_language(" FR ", multilingual=True) == "fr"
    assert validate_language(None, multilingual=True) == "en"
    assert validate_language("en", multilingual=False) == "en"
    with pytest.raises(UnsupportedLanguageError) as err:
        validate_language("klingon", multilingual=True)
    assert all(lang in str(err.value) for lang in SUPPORTED_LANGUAGES)
    with pytest.raises(UnsupportedLanguageError, match="multilingual"):
        validate_language("de", multilingual=False)


def test_language_tags_with_region_and_blank_ids() -> None:
    assert validate_language("pt-BR", multilingual=True) == "pt"
    assert validate_language("zh_Hant", multilingual=True) == "zh"
    assert validate_language("en-US", multilingual=False) == "en"
    assert validate_language("  ", multilingual=True) == "en"
    with pytest.raises(UnsupportedLanguageError) as err:
        validate_language("xx-FR", multilingual=True)
    assert "'xx-FR'" in str(err.value) and "zh" in str(err.value)
    with pytest.raises(UnsupportedLanguageError):
        validate_language("fr-CA", multilingual=False)
    with pytest.raises(UnsupportedLanguageError):
        validate_language(3, multilingual=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_refused(text: str) -> None:
    with pytest.raises(EmptyTextError):
        validate_text(text)


def test_punc_norm_rules() -> None:
    assert punc_norm("") == "You need to add some text for me to talk."
    # "..." and ";" become ", " after whitespace is collapsed, so doubled spaces appear (as in the reference)
    assert punc_norm("wait... what;  now") == "Wait,  what,  now."
    assert punc_norm("“quoted” — dash") == '"quoted" - dash.'
    # CJK sentence enders count as final punctuation only for the multilingual model (as in the reference).
    assert punc_norm("你好。") == "你好。."
    assert punc_norm("你好。", multilingual=True) == "你好。"


def test_korean_syllables_become_jamo() -> None:
    assert korean_to_jamo("한") == "\u1112\u1161\u11ab"
    assert korean_to_jamo(" 가 ") == "\u1100\u1161"
    # NFKD (applied before, as in the reference) already gives the same jamo
    assert unicodedata.normalize("NFKD", "한") == korean_to_jamo("한")


def test_japanese_kanji_to_hiragana_with_particle_space() -> None:
    assert japanese_to_kana("漢字です") == unicodedata.normalize("NFKD", "かんじです")
    assert japanese_to_kana("カタカナ") == "カタカナ"
    # a kanji run read starting with は gets a space in front (the reference's particle rule)
    assert japanese_to_kana("花") == " はな"
    assert japanese_to_kana("部屋") == " へや"
    # a kana particle is its own pykakasi item, so は/へ after a kanji get no space; 母 (はは) as a kanji word does
    assert japanese_to_kana("私は母へ手紙を書いた") == unicodedata.normalize("NFKD", "わたしは ははへてがみをかいた")
    # 今日は is one item read こんにちは: no space
    assert japanese_to_kana("今日は") == "こんにちは"


def test_cangjie_codes_with_shared_code_index(tmp_path: Path) -> None:
    table = tmp_path / "Cangjie5_TC.json"
    table.write_text(json.dumps(["日\ta", "曰\ta", "月\tb", "月\tbb"]), encoding="utf-8")
    convert = CangjieConverter(table)
    assert convert.encode_glyph("日") == "a"
    assert convert.encode_glyph("曰") == "a1"
    assert convert.encode_glyph("月") == "bb"  # the later entry wins
    assert convert("日x曰") == "[cj_a][cj_.]x[cj_a][cj_1][cj_.]"
    assert convert("ひ") == "ひ"  # not in the table: unchanged
