"""Job inputs into a `Document`: pasted text or Markdown, and .txt / .md / .epub uploads.

What is spoken is prose only. Plain text is one section whose paragraphs (blank-line separated) are kept and whose
hard-wrapped lines are joined. Markdown is parsed with markdown-it-py (CommonMark plus tables and strikethrough):
headings `#`..`###` (ATX or setext) start sections and become their titles; deeper headings are read as
paragraphs; emphasis marks, link targets, images, raw HTML tags, table pipes and list bullets are not spoken
(link text, HTML text and table cells are); code blocks and fences are dropped, since read-aloud source code is
noise, while inline `code` keeps its text. An EPUB's spine documents become sections titled by the table of
contents (or their first heading).

Uploads are decoded defensively: a BOM decides UTF-8/16/32, else strict UTF-8, else charset-normalizer's
detection; binary data (NUL bytes, a known binary signature such as a zip, PDF or PNG, or no plausible charset)
is refused, as is an upload whose extension says nothing this reader knows.
"""

from __future__ import annotations

import codecs
import posixpath
import re
import unicodedata
from collections.abc import Iterable

import charset_normalizer
from markdown_it import MarkdownIt
from markdown_it.token import Token

from chatterbox_vllm.jobs.epub import EpubError, EpubTooLong, read_epub
from chatterbox_vllm.jobs.html_text import html_to_text
from chatterbox_vllm.jobs.types import Document, Section

TEXT_EXTENSIONS = frozenset({".txt", ".text"})
MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown"})
EPUB_EXTENSIONS = frozenset({".epub"})
UPLOAD_EXTENSIONS = TEXT_EXTENSIONS | MARKDOWN_EXTENSIONS | EPUB_EXTENSIONS
SECTION_HEADING_LEVELS = 3  # `#`, `##`, `###` start chapters; `####` and deeper are read as paragraphs

# Signatures of binary formats that are sometimes renamed to .txt (checked before any charset guessing). Only
# signatures no text file starts with: "BM", "MZ" or "RIFF" could begin a sentence, and those formats hold NUL
# bytes anyway, which are refused next.
_BINARY_MAGIC: tuple[bytes, ...] = (
    b"PK\x03\x04", b"PK\x05\x06", b"%PDF-", b"\x89PNG", b"GIF87a", b"GIF89a", b"\xff\xd8\xff", b"OggS\x00",
    b"fLaC\x00", b"ID3\x02", b"ID3\x03", b"ID3\x04", b"\x1f\x8b", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07", b"\x7fELF", b"\xd0\xcf\x11\xe0", b"\x28\xb5\x2f\xfd", b"\x00asm",
)  # fmt: skip
# Decoded "text" with more control characters than this share is binary that some code page happened to accept.
_MAX_CONTROL_SHARE = 0.01
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Tie-break among equally plausible legacy encodings (charset-normalizer's names), most widespread first.
_PREFERRED_ENCODINGS = ("cp1252", "latin_1", "cp1251", "cp1250", "shift_jis", "gb18030", "big5", "euc_kr")
_CONTROL_CODES = dict.fromkeys(c for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t\n\r\f")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u2028\u2029\ufeff]")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_SPACES = re.compile(r"[^\S\n]+")


class DocumentError(Exception):
    """An input that cannot become a job; `status` and `code` are the HTTP answer (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, *, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def parse_text(text: str, *, markdown: bool, title: str | None = None) -> Document:
    """Pasted input into a document: one section for plain text, a section per heading for Markdown."""
    text = _normalize_newlines(text)
    sections = _markdown_sections(text) if markdown else _plain_sections(text)
    return _document(title, sections)


def parse_upload(filename: str, data: bytes, *, max_chars: int) -> Document:
    """An uploaded .txt, .md/.markdown or .epub file into a document; its title is the book's or the file's name."""
    stem, extension = posixpath.splitext(posixpath.basename(filename.replace("\\", "/")))
    extension = extension.lower()
    if extension not in UPLOAD_EXTENSIONS:
        raise DocumentError(
            415,
            f"unsupported file type {extension or filename!r}; upload .txt, .md or .epub",
            code="unsupported_file_type",
        )
    if extension in EPUB_EXTENSIONS:
        document = _epub_document(data, default_title=stem or None, max_chars=max_chars)
    else:
        text = decode_text(data)
        document = parse_text(text, markdown=extension in MARKDOWN_EXTENSIONS, title=stem or None)
    if document.characters > max_chars:
        raise DocumentError(
            400,
            f"the file holds {document.characters} characters of text; at most {max_chars} are accepted",
            code="string_above_max_length",
        )
    return document


def decode_text(data: bytes) -> str:
    """Uploaded text bytes as a string, refusing binary data; see the module docstring for the order of tries."""
    if data.startswith(_BINARY_MAGIC):
        raise _invalid("the file is binary (its signature is a zip, PDF, image or similar), not text")
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _textual(data[len(bom) :].decode(encoding))
            except UnicodeDecodeError as e:
                raise _invalid(f"the file's byte order mark says {encoding} but it does not decode: {e}") from e
    if b"\x00" in data:
        raise _invalid("the file contains NUL bytes: it is binary, or UTF-16 without a byte order mark")
    try:
        return _textual(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        raise _invalid("the file's text encoding could not be recognised (is it binary?)")
    # Related code pages often score exactly alike (Western text fits cp1250, cp1252 and cp1257 equally well);
    # charset-normalizer then picks by name. Prefer the one most files in the wild are written in.
    tied = {m.encoding: m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)}
    preferred = next((tied[name] for name in _PREFERRED_ENCODINGS if name in tied), best)
    return _textual(str(preferred))


def _textual(text: str) -> str:
    """`text` unless control characters (other than tab, newlines and form feed) make up too much of it."""
    controls = len(text) - len(text.translate(_CONTROL_CODES))
    if controls > _MAX_CONTROL_SHARE * len(text):
        raise _invalid("the file holds control characters throughout: it is binary, not text")
    return text


def _invalid(message: str) -> DocumentError:
    return DocumentError(400, message, code="invalid_file")


def _document(title: str | None, sections: list[Section]) -> Document:
    title = (_clean_inline(title) or None) if title else None
    sections = [s for s in sections if s.text or s.title]
    if not any(s.text for s in sections) and not any(s.title for s in sections):
        raise DocumentError(400, "the input has no text to speak", code="empty_input")
    return Document(title=title, sections=sections)


def _epub_document(data: bytes, *, default_title: str | None, max_chars: int) -> Document:
    try:
        # Reading stops well past the limit (twice it: cleaning only shortens text a little), not at the end of a
        # huge book; the exact count is checked on the document.
        book = read_epub(data, max_chars=2 * max_chars)
    except EpubTooLong as e:
        message = f"the book holds more than {max_chars} characters of text, the most accepted"
        raise DocumentError(400, message, code="string_above_max_length") from e
    except EpubError as e:
        raise _invalid(str(e)) from e
    sections = [
        Section(title=(_clean_inline(c.title) or None) if c.title else None, text=_paragraphs(b.text for b in c.blocks))
        for c in book.chapters
    ]
    return _document(book.title or default_title, sections)


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _clean_inline(text: str) -> str:
    """One line of speakable text: NFC, control and zero-width characters removed, whitespace collapsed."""
    text = _CONTROL.sub("", unicodedata.normalize("NFC", text))
    return " ".join(text.split())


def _paragraphs(paragraphs: Iterable[str]) -> str:
    """Cleaned paragraphs joined by one blank line; empty ones dropped."""
    cleaned = (_clean_inline(p) for p in paragraphs)
    return "\n\n".join(p for p in cleaned if p)


def _plain_sections(text: str) -> list[Section]:
    """Paragraphs are kept (blank lines); lines inside a paragraph are joined, as hard wrapping is not a pause."""
    return [Section(title=None, text=_paragraphs(_BLANK_LINES.split(text.strip())))]


_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)")
_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _markdown_sections(text: str) -> list[Section]:
    text = _FRONT_MATTER.sub("", text, count=1)  # YAML front matter (Jekyll, Hugo, Obsidian) is not prose
    sections: list[Section] = []
    title: str | None = None
    paragraphs: list[str] = []
    row: list[str] = []
    heading_level = 0
    in_cell = False
    for token in _MARKDOWN.parse(text):
        kind = token.type
        if kind == "heading_open":
            heading_level = int(token.tag[1:])
        elif kind == "heading_close":
            heading_level = 0
        elif kind in ("th_open", "td_open"):
            in_cell = True
        elif kind in ("th_close", "td_close"):
            in_cell = False
        elif kind == "inline":
            content = _inline_text(token)
            if 0 < heading_level <= SECTION_HEADING_LEVELS:
                if title is not None or paragraphs:
                    sections.append(Section(title=title, text=_paragraphs(paragraphs)))
                title, paragraphs = _clean_inline(content) or None, []
            elif in_cell:
                row.append(content)
            else:
                paragraphs.append(content)
        elif kind == "tr_close":  # a table row reads as one line, its cells separated by commas
            paragraphs.append(", ".join(c for c in (_clean_inline(c) for c in row) if c))
            row = []
        elif kind == "html_block":
            paragraphs.extend(html_to_text(token.content).split("\n\n"))
        # fence / code_block: dropped on purpose (source code read aloud is noise); hr: nothing to say
    if title is not None or paragraphs:
        sections.append(Section(title=title, text=_paragraphs(paragraphs)))
    return sections


def _inline_text(token: Token) -> str:
    """The speakable text of an inline token: text and code kept, marks, images and HTML tags dropped."""
    parts: list[str] = []
    hidden: str | None = None  # inside inline <script> or <style>: its content is not prose
    for child in token.children or []:
        kind = child.type
        if kind == "html_inline":
            tag = _HTML_TAG.match(child.content)
            closing, name = (tag.group(1) == "/", tag.group(2).lower()) if tag else (False, "")
            if hidden is None and name in ("script", "style") and not closing:
                hidden = name
            elif hidden is not None and name == hidden and closing:
                hidden = None
            elif name == "br":
                parts.append(" ")
        elif hidden is not None:
            continue
        elif kind in ("text", "code_inline"):
            parts.append(child.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append(" ")
        # em/strong/s/link open and close, images: nothing spoken
    return "".join(parts)
