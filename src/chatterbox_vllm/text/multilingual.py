"""Per-language text preparation of the multilingual model, as the reference's MTLTokenizer does it.

Chinese is spelled as Cangjie codes, Japanese kanji become hiragana, Korean syllables become jamo. Hebrew
diacritics and Russian stress marks come from optional packages; without them the text passes unchanged (as in
the reference) and we say so once.
"""

from __future__ import annotations

import inspect
import json
import logging
import unicodedata
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7AF


@cache
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
    index digit when several glyphs share a code. Words are first separated by spaces (which become [SPACE]) when
    a segmenter is available: `segmenter="auto"` loads spacy-pkuseg's, as the reference does, if it is cached."""

    def __init__(self, table_path: str | Path | None, segmenter: Any = "auto") -> None:
        self.glyph_code: dict[str, str] = {}
        self.code_glyphs: dict[str, list[str]] = {}
        if table_path is not None and Path(table_path).is_file():
            self._load(Path(table_path))
        else:
            _warn_once(f"Cangjie table {table_path} not found: Chinese characters are passed on unchanged")
        self.segmenter = load_chinese_segmenter() if segmenter == "auto" else segmenter

    def _load(self, path: Path) -> None:
        for entry in json.loads(path.read_text(encoding="utf-8")):
            glyph, code = entry.split("\t")[:2]
            self.glyph_code[glyph] = code  # a later entry for the same glyph wins, as in the reference
            self.code_glyphs.setdefault(code, []).append(glyph)

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


def load_chinese_segmenter():
    """spacy-pkuseg's default segmenter if the package and its model are on this machine, else None.

    The reference calls `pkuseg()`, which downloads the model from GitHub on first use (into PKUSEG_HOME,
    default ~/.pkuseg) and raises offline. A server should not reach out to the internet while loading, so we
    use the model only when it is already cached there; without it we skip segmentation, which is exactly what
    the reference does when spacy-pkuseg is missing. To cache it: `python -c "import spacy_pkuseg as p; p.pkuseg()"`.
    """
    try:
        import spacy_pkuseg
        from spacy_pkuseg.config import config as pkuseg_config
    except ImportError:
        _warn_once("spacy-pkuseg is not installed: Chinese word segmentation is skipped")
        return None
    try:
        model = inspect.signature(spacy_pkuseg.pkuseg).parameters["model_name"].default
        home = Path(pkuseg_config.pkuseg_home)
        archive = home / Path(pkuseg_config.model_urls[model]).name
        cached = archive.is_file() and (home / model).is_dir()
    except Exception as exc:  # a spacy-pkuseg version laid out differently: let it try on its own
        log.debug("cannot tell whether the spacy-pkuseg model is cached (%s)", exc)
        cached = True
    if not cached:
        _warn_once(
            f"spacy-pkuseg model {model!r} is not cached in {home}: Chinese word segmentation is skipped "
            "(run spacy_pkuseg.pkuseg() once with network access to download it)"
        )
        return None
    try:
        return spacy_pkuseg.pkuseg()
    except Exception as exc:
        _warn_once(f"spacy-pkuseg could not load its model ({exc}): Chinese word segmentation is skipped")
        return None


# dicta-onnx's `Dicta` needs the path of its ONNX model (a separate download); the reference calls `Dicta()`
# without one, which raises, so the reference never adds Hebrew diacritics. We use it when the settings name a model
# (CHATTERBOX_DICTA_MODEL, passed down as `model_path`).
@lru_cache(maxsize=4)
def _hebrew_diacritizer(model_path: str | None):
    try:
        from dicta_onnx import Dicta
    except ImportError:
        _warn_once("dicta-onnx is not installed: Hebrew text is used without diacritics")
        return None
    if not model_path:
        _warn_once("set CHATTERBOX_DICTA_MODEL to dicta-onnx's model file to add Hebrew diacritics; used without them")
        return None
    try:
        return Dicta(model_path)
    except Exception as exc:
        _warn_once(f"dicta-onnx could not load {model_path} ({exc}): Hebrew text is used without diacritics")
        return None


def hebrew_diacritics(text: str, model_path: str | None = None) -> str:
    """Hebrew with niqqud added by dicta-onnx with the model at `model_path` when available; otherwise unchanged
    (as the reference in practice)."""
    diacritizer = _hebrew_diacritizer(model_path)
    if diacritizer is None:
        return text
    try:
        return diacritizer.add_diacritics(text)
    except Exception as exc:
        _warn_once(f"Hebrew diacritization failed ({exc}): text used without diacritics")
        return text


@lru_cache(maxsize=1)
def _russian_stresser():
    try:
        # Not on PyPI: installed from github.com/Vuizur/add-stress-to-epub (the reference's optional extra).
        from russian_text_stresser.text_stresser import RussianTextStresser
    except ImportError:
        _warn_once("russian-text-stresser is not installed: Russian text is used without stress marks")
        return None
    try:
        return RussianTextStresser()
    except Exception as exc:
        _warn_once(f"russian-text-stresser could not load ({exc}): Russian text is used without stress marks")
        return None


def russian_stress(text: str) -> str:
    """Russian with stress marks when russian-text-stresser is available; otherwise unchanged."""
    stresser = _russian_stresser()
    if stresser is None:
        return text
    try:
        return stresser.stress_text(text)
    except Exception as exc:
        _warn_once(f"Russian stress marking failed ({exc}): text used without stress marks")
        return text
