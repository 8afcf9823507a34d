"""Per-language text preparation of the multilingual model, as the reference's MTLTokenizer does it.

Chinese is spelled as Cangjie codes, Japanese kanji become hiragana, Korean syllables become jamo. Hebrew
diacritics and Russian stress marks come from optional packages; without them the text passes unchanged (as in
the reference) and we say so once.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7AF


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def korean_to_jamo(text: str) -> str:
    """Split precomposed Hangul syllables into leading/vowel/trailing conjoining jamo, then strip."""
    out = []
    for char in text:
        code = ord(char)
        if not _HANGUL_FIRST <= code <= _HANGUL_LAST:
            out.append(char)
            continue
        offset = code - _HANGUL_FIRST
        out.append(chr(0x1100 + offset // (21 * 28)))
        out.append(chr(0x1161 + (offset % (21 * 28)) // 28))
        if offset % 28:
            out.append(chr(0x11A7 + offset % 28))
    return "".join(out).strip()


def _is_kanji(char: str) -> bool:
    return 0x4E00 <= ord(char) <= 0x9FFF


def _is_katakana(char: str) -> bool:
    return 0x30A1 <= ord(char) <= 0x30FA


@lru_cache(maxsize=1)
def _kakasi():
    import pykakasi

    return pykakasi.kakasi()


def japanese_to_kana(text: str) -> str:
    """Kanji runs -> their hiragana reading (a space before は/へ readings, which are usually particles);
    katakana-only runs and everything else kept; NFKD at the end."""
    try:
        converter = _kakasi()
    except ImportError:
        _warn_once("pykakasi is not installed: Japanese text is passed on without kanji-to-kana conversion")
        return text
    pieces = []
    for item in converter.convert(text):
        original, hiragana = item["orig"], item["hira"]
        if any(_is_kanji(c) for c in original):
            if hiragana and hiragana[0] in ("は", "へ"):
                hiragana = " " + hiragana
            pieces.append(hiragana)
        else:
            pieces.append(original)
    return unicodedata.normalize("NFKD", "".join(pieces))


class CangjieConverter:
    """Spells Chinese characters as Cangjie codes: `[cj_x]` per code letter, `[cj_.]` closing each glyph, and an
    index digit when several glyphs share a code. Word segmentation uses spacy-pkuseg when it can be loaded."""

    def __init__(self, table_path: str | Path | None) -> None:
        self.glyph_code: dict[str, str] = {}
        self.code_glyphs: dict[str, list[str]] = {}
        if table_path is not None and Path(table_path).is_file():
            self._load(Path(table_path))
        else:
            _warn_once(f"Cangjie table {table_path} not found: Chinese characters are passed on unchanged")
        self.segmenter = self._load_segmenter()

    def _load(self, path: Path) -> None:
        for entry in json.loads(path.read_text(encoding="utf-8")):
            glyph, code = entry.split("\t")[:2]
            self.glyph_code[glyph] = code  # a later entry for the same glyph wins, as in the reference
            self.code_glyphs.setdefault(code, []).append(glyph)

    @staticmethod
    def _load_segmenter():
        try:
            from spacy_pkuseg import pkuseg
        except ImportError:
            _warn_once("spacy-pkuseg is not installed: Chinese word segmentation is skipped")
            return None
        try:
            return pkuseg()
        except Exception as exc:  # its default model is downloaded on first use; offline that fails
            _warn_once(f"spacy-pkuseg could not load its model ({exc}): Chinese word segmentation is skipped")
            return None

    def encode_glyph(self, glyph: str) -> str | None:
        code = self.glyph_code.get(glyph)
        if code is None:
            return None
        index = self.code_glyphs[code].index(glyph)
        return code + (str(index) if index > 0 else "")

    def __call__(self, text: str) -> str:
        if self.segmenter is not None:
            text = " ".join(self.segmenter.cut(text))
        out = []
        for char in text:
            code = self.encode_glyph(char) if unicodedata.category(char) == "Lo" else None
            if code is None:
                out.append(char)
            else:
                out.append("".join(f"[cj_{c}]" for c in code) + "[cj_.]")
        return "".join(out)


@lru_cache(maxsize=1)
def _hebrew_diacritizer():
    from dicta_onnx import Dicta

    return Dicta()


def hebrew_diacritics(text: str) -> str:
    try:
        return _hebrew_diacritizer().add_diacritics(text)
    except ImportError:
        _warn_once("dicta-onnx is not installed: Hebrew text is used without diacritics (lower quality)")
    except Exception as exc:
        _warn_once(f"Hebrew diacritization failed ({exc}): text used without diacritics")
    return text


@lru_cache(maxsize=1)
def _russian_stresser():
    from russian_text_stresser.text_stresser import RussianTextStresser

    return RussianTextStresser()


def russian_stress(text: str) -> str:
    try:
        return _russian_stresser().stress_text(text)
    except ImportError:
        _warn_once("russian-text-stresser is not installed: Russian text is used without stress marks")
    except Exception as exc:
        _warn_once(f"Russian stress marking failed ({exc}): text used without stress marks")
    return text
