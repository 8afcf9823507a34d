"""Per-language preparation of the multilingual tokenizer on strings beyond the golden fixture.

The expected strings were recorded from chatterbox-tts 0.1.7 (`MTLTokenizer.encode`, the string it hands to the
HF tokenizer) on the seed-0 synthetic Cangjie table (written here by our generator), and checked by hand: kanji
readings, Cangjie codes from the table, jamo, [SPACE]s, punc_norm's final full stop. They are compared after NFKD
because the prepared text is NFKD-normal and source files need not keep decomposed characters.
"""
from __future__ import annotations

import importlib.util
import logging
import unicodedata
from pathlib import Path

import pytest

from chatterbox_vllm.text import multilingual
from chatterbox_vllm.text.normalize import punc_norm
from chatterbox_vllm.text.tokenizers import EnglishTokenizer, MultilingualTokenizer

GENUINE_ENGLISH_TOKENIZER = Path(__file__).resolve().parents[2] / "src/chatterbox_vllm/checkpoint/data/tokenizer.json"

REFERENCE_PREPARED = [
    ("ja", "私は学生です。", "[ja]わたしはがくせいです。"),
    # "食べた" really comes back as "くべた" from pykakasi 2.3.0 (a pykakasi segmentation quirk, kept)
    ("ja", "東京へ行きます。ハンバーガーを食べた。", "[ja]とうきょうへいきます。ハンバーガーをくべた。"),
    ("ja", "花が咲いた。日本語のテキスト、カタカナ！", "[ja][SPACE]はながさいた。にほんごのテキスト、カタカナ!"),
    ("ja", "がぎぐ パン", "[ja]がぎぐ[SPACE]パン."),
    # 世界 are not in the synthetic table: passed through (and become [UNK] in the tokenizer)
    ("zh", "你好，世界！ABC 123。", "[zh][cj_o][cj_n][cj_f][cj_.][cj_v][cj_n][cj_d][cj_.],世界!abc[SPACE]123。"),
    ("zh", "气学天", "[zh][cj_x][cj_o][cj_m][cj_n][cj_.][cj_x][cj_f][cj_b][cj_n][cj_d][cj_.][cj_m][cj_k][cj_.]."),
    ("ko", "한국어 텍스트입니다! 값", "[ko]한국어[SPACE]텍스트입니다![SPACE]값."),
    ("el", "Καλημέρα κόσμε", "[el]καλημέρα[SPACE]κόσμε."),
    ("ar", "السلام عليكم", "[ar]السلام[SPACE]عليكم."),
    ("hi", "हिंदी पाठ", "[hi]हिंदी[SPACE]पाठ."),
    (
        "fr",
        "L'été À Paris — très «bien» : oui",
        "[fr]l'été[SPACE]à[SPACE]paris[SPACE]-[SPACE]très[SPACE]«bien»,[SPACE]oui.",
    ),
    ("de", "STRASSE ß Ölfeld", "[de]strasse[SPACE]ß[SPACE]ölfeld."),
]


@pytest.mark.parametrize(("language", "text", "expected"), REFERENCE_PREPARED, ids=lambda v: str(v)[:12])
def test_preparation_matches_reference(
    multilingual_tokenizer: MultilingualTokenizer, language: str, text: str, expected: str
) -> None:
    prepared = multilingual_tokenizer.prepare(punc_norm(text, multilingual=True), language)
    assert prepared == unicodedata.normalize("NFKD", expected)


def test_jamo_and_nfkd_reach_the_tokenizer(multilingual_tokenizer: MultilingualTokenizer) -> None:
    prepared = multilingual_tokenizer.prepare("값", "ko")
    assert prepared == "[ko]\u1100\u1161\u11b9"
    # precomposed "が" arrives as か + combining voiced mark (U+3099) after the final NFKD
    assert multilingual_tokenizer.prepare("が", "ja") == "[ja]\u304b\u3099"


def test_language_id_case_does_not_matter(multilingual_tokenizer: MultilingualTokenizer) -> None:
    # The reference's generate() lowercases the id before its tokenizer sees it; our tokenizer does it itself.
    expected = "[zh][cj_m][cj_k][cj_.][cj_x][cj_o][cj_m][cj_n][cj_.]"
    assert multilingual_tokenizer.prepare("天气", "ZH") == multilingual_tokenizer.prepare("天气", "zh") == expected
    assert multilingual_tokenizer.prepare("No language", None) == "no[SPACE]language"


def test_unknown_characters_become_unk_and_decode_drops_them(multilingual_tokenizer: MultilingualTokenizer) -> None:
    english = EnglishTokenizer.from_file(GENUINE_ENGLISH_TOKENIZER)
    ids = english.encode("Hello 🙂 world!")
    assert ids.count(1) == 1  # [UNK]
    assert english.decode(ids) == "Hello  world!"
    ids = multilingual_tokenizer.encode("世界 ok.", "zh")
    assert ids[:3] == [multilingual_tokenizer.tokenizer.token_to_id("[zh]"), 1, 1]
    assert multilingual_tokenizer.decode(ids) == "[zh] ok."


@pytest.mark.skipif(importlib.util.find_spec("spacy_pkuseg") is not None, reason="spacy-pkuseg is installed")
def test_without_pkuseg_segmentation_is_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    multilingual._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger=multilingual.__name__):
        assert multilingual.load_chinese_segmenter() is None
        assert multilingual.load_chinese_segmenter() is None
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["spacy-pkuseg is not installed: Chinese word segmentation is skipped"]


@pytest.mark.skipif(importlib.util.find_spec("dicta_onnx") is not None, reason="dicta-onnx is installed")
def test_hebrew_without_dicta_is_unchanged_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    multilingual._warn_once.cache_clear()
    multilingual._hebrew_diacritizer.cache_clear()
    with caplog.at_level(logging.WARNING, logger=multilingual.__name__):
        assert multilingual.hebrew_diacritics("שלום עולם") == "שלום עולם"
        assert multilingual.hebrew_diacritics("מה שלומך") == "מה שלומך"
    assert len(caplog.records) == 1 and "dicta-onnx" in caplog.records[0].getMessage()


def test_the_dicta_model_setting_reaches_the_loaded_tokenizer(
    multilingual_tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHATTERBOX_DICTA_MODEL is read by Settings only: a load without settings asks Settings (environment, .env)
    for it; the server passes its settings' value down ("" when unset), which wins over the environment."""
    from chatterbox_vllm.loading import LoadOptions
    from chatterbox_vllm.tts import ChatterboxTTS

    monkeypatch.chdir(tmp_path)  # the .env lookup sees only what this test writes
    (tmp_path / ".env").write_text(f"CHATTERBOX_DICTA_MODEL={tmp_path / 'dicta.onnx'}\n")
    for passed, expected in ((None, str(tmp_path / "dicta.onnx")), ("", None), ("/m/d.onnx", "/m/d.onnx")):
        options = LoadOptions(device="cpu", engine="torch", dicta_model=passed)
        tts = ChatterboxTTS.from_pretrained(str(multilingual_tiny_checkpoint), options=options)
        try:
            assert isinstance(tts.tokenizer, MultilingualTokenizer) and tts.tokenizer.dicta_model == expected, passed
        finally:
            tts.close()


@pytest.mark.skipif(
    importlib.util.find_spec("russian_text_stresser") is not None, reason="russian-text-stresser is installed"
)
def test_russian_without_stresser_is_unchanged_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    multilingual._warn_once.cache_clear()
    multilingual._russian_stresser.cache_clear()
    with caplog.at_level(logging.WARNING, logger=multilingual.__name__):
        assert multilingual.russian_stress("привет") == "привет"
        assert multilingual.russian_stress("как дела") == "как дела"
    assert len(caplog.records) == 1 and "russian-text-stresser" in caplog.records[0].getMessage()


@pytest.fixture
def pkuseg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty spacy-pkuseg model cache (its download location) for this test."""
    pkuseg_config = pytest.importorskip("spacy_pkuseg.config").config
    monkeypatch.setattr(pkuseg_config, "pkuseg_home", str(tmp_path))
    multilingual._warn_once.cache_clear()
    return tmp_path


def test_pkuseg_without_cached_model_is_not_downloaded(pkuseg_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=multilingual.__name__):
        assert multilingual.load_chinese_segmenter() is None
    assert "not cached" in caplog.records[0].getMessage()
    assert list(pkuseg_home.iterdir()) == []


def test_pkuseg_with_cached_model_segments(pkuseg_home: Path, multilingual_files: tuple[Path, Path]) -> None:
    import spacy_pkuseg

    # A small model trained here stands in for the downloaded default one, in the place pkuseg() looks for it.
    corpus = pkuseg_home / "corpus.txt"
    corpus.write_text("你好 天气 真 不错\n我们 学习 语言\n今天 天气 好\n你好 我们\n" * 100, encoding="utf-8")
    spacy_pkuseg.train(str(corpus), str(corpus), str(pkuseg_home / "spacy_ontonotes"), train_iter=2)
    (pkuseg_home / "spacy_ontonotes.zip").touch()  # the archive's presence is what marks the model as downloaded

    tokenizer = MultilingualTokenizer.from_files(*multilingual_files)
    assert isinstance(tokenizer.cangjie.segmenter, spacy_pkuseg.pkuseg)
    words = tokenizer.cangjie.segmenter.cut("你好今天天气")
    assert len(words) > 1
    spelled = [tokenizer.cangjie(word) for word in words]
    assert tokenizer.prepare("你好今天天气", "zh") == "[zh]" + "[SPACE]".join(spelled)
