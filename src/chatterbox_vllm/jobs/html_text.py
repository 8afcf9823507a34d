"""HTML/XHTML to speakable text blocks: EPUB chapters and raw HTML inside Markdown.

The standard library's `html.parser` is enough here: it is lenient with broken markup, decodes entities, never
fetches anything and never expands custom entities (so an XHTML file cannot carry an entity bomb), and it adds no
dependency. What is not prose is skipped: scripts, styles, the `<head>`, SVG/MathML, images, ruby annotations,
and EPUB footnote references (`epub:type="noteref"`), which would otherwise be read out as stray numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

_SKIP_TAGS = frozenset({"script", "style", "head", "title", "svg", "math", "rt", "rp", "template", "noscript"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "div", "dl", "dt", "figcaption",
        "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
        "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_CELL_TAGS = frozenset({"td", "th"})
_SKIP_EPUB_TYPES = frozenset({"noteref", "pagebreak"})
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Block:
    """One paragraph-like run of text; `level` is 1..6 for a heading and 0 for everything else."""

    level: int
    text: str


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._parts: list[str] = []
        self._level = 0
        self._skip_tag: str | None = None
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        epub_type = next((v or "" for k, v in attrs if k in ("epub:type", "role")), "")
        if tag in _SKIP_TAGS or any(t.removeprefix("doc-") in _SKIP_EPUB_TYPES for t in epub_type.split()):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in _CELL_TAGS:
            if "".join(self._parts).strip():
                self._parts.append(", ")  # cells of a row read as a list, not one run-on word
        elif tag in _BLOCK_TAGS:
            self._end_block()
            self._level = _HEADINGS.get(tag, 0)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in _BLOCK_TAGS:
            self._end_block()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag in _BLOCK_TAGS and tag not in _CELL_TAGS:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self._parts.append(data)

    def close(self) -> None:
        super().close()
        self._end_block()

    def _end_block(self) -> None:
        text = _SPACE.sub(" ", "".join(self._parts)).strip()
        if text:
            self.blocks.append(Block(self._level, text))
        self._parts.clear()
        self._level = 0


def html_blocks(markup: str) -> list[Block]:
    """The text of `markup` as blocks in reading order, whitespace collapsed, empty blocks dropped."""
    parser = _Extractor()
    parser.feed(markup)
    parser.close()
    return parser.blocks


def html_to_text(markup: str) -> str:
    """`markup`'s text with one blank line between blocks (headings included, as plain paragraphs)."""
    return "\n\n".join(block.text for block in html_blocks(markup))
