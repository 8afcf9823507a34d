"""Job inputs into sections: plain text, Markdown, and real .txt / .md / .epub files (EPUBs built here with
zipfile), including hostile ones: binary renamed .txt, zip bombs, lying zip headers, encrypted members."""

from __future__ import annotations

import io
import struct
import time
import zipfile

import pytest

from chatterbox_vllm.jobs import epub
from chatterbox_vllm.jobs.documents import DocumentError, decode_text, parse_text, parse_upload
from chatterbox_vllm.jobs.types import Section

MAX = 1_000_000
# A PNG's first bytes: signature and IHDR of a 1x1 image.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489") + b"\x00" * 64
ENGLISH = (
    "It\u2019s a truth universally acknowledged \u2014 or so they say \u2014 that a \u201csingle man\u201d in "
    "possession of a good fortune must be in want of a wife. The caf\u00e9 cost 5\u20ac, and the na\u00efve "
    "ma\u00eetre d\u2019h\u00f4tel smiled. "
) * 3


def refused(status: int, code: str, call, *args, **kwargs) -> DocumentError:  # type: ignore[no-untyped-def]
    with pytest.raises(DocumentError) as info:
        call(*args, **kwargs)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    assert info.value.message
    return info.value


# --- plain text and Markdown -------------------------------------------------------------------------------------


def test_plain_text_is_one_section_keeping_paragraphs_and_joining_wrapped_lines() -> None:
    text = "First line\nwrapped here.\r\n\r\n\n  Second   paragraph.\tTabs.\n\n\n"
    doc = parse_text(text, markdown=False, title=" My  title ")
    assert doc.title == "My title"
    assert doc.sections == [Section(title=None, text="First line wrapped here.\n\nSecond paragraph. Tabs.")]
    assert doc.characters == len(doc.sections[0].text)


def test_plain_text_keeps_markdown_looking_characters() -> None:
    doc = parse_text("# not a heading *here*", markdown=False)
    assert doc.sections == [Section(title=None, text="# not a heading *here*")]


def test_markdown_headings_start_sections_and_syntax_is_not_spoken() -> None:
    text = """Intro with *emphasis*, __strong__, ~~gone~~ and a [link](https://example.com "t").
![a cover](cover.png) Inline `code` &amp; entities &eacute;.

Chapter One
===========

- first item
- second <b>bold</b> item

1. numbered

| Name | Age |
|------|-----|
| Ann  | 30  |

```python
print("never spoken")
```

    indented code, also dropped

<div class="note">Raw <i>HTML</i> block<script>alert(1)</script></div>

## Chapter Two ##

> quoted text
> continues

#### A deep heading

Text after it.

Setext two
----------
Last words.
"""
    doc = parse_text(text, markdown=True)
    assert [s.title for s in doc.sections] == [None, "Chapter One", "Chapter Two", "Setext two"]
    intro, one, two, three = (s.text for s in doc.sections)
    assert intro == "Intro with emphasis, strong, gone and a link. Inline code & entities \u00e9."
    assert one.split("\n\n") == ["first item", "second bold item", "numbered", "Name, Age", "Ann, 30", "Raw HTML block"]
    assert two.split("\n\n") == ["quoted text continues", "A deep heading", "Text after it."]
    assert three == "Last words."
    spoken = " ".join(s.text for s in doc.sections)
    for syntax in ("*", "_", "[", "](", "|", "`", "<", "#", "print", "alert", "https"):
        assert syntax not in spoken


def test_markdown_heading_without_text_is_kept_as_a_spoken_title() -> None:
    doc = parse_text("# Title only\n\n# Next\n\nBody.", markdown=True, title="Book")
    assert doc.title == "Book"
    assert doc.sections == [Section("Title only", ""), Section("Next", "Body.")]


@pytest.mark.parametrize(
    ("text", "markdown"),
    [("", False), (" \n\t\r\n ", False), ("\u200b\ufeff", False), ("```\ncode only\n```", True), ("![x](y.png)", True)],
)
def test_nothing_to_speak_is_empty_input(text: str, markdown: bool) -> None:
    refused(400, "empty_input", parse_text, text, markdown=markdown)


# --- .txt and .md uploads ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        ENGLISH.encode("utf-8"),
        b"\xef\xbb\xbf" + ENGLISH.encode("utf-8"),
        ENGLISH.encode("utf-16"),  # BOM + native order
        b"\xfe\xff" + ENGLISH.encode("utf-16-be"),
        b"\xff\xfe" + ENGLISH.encode("utf-16-le"),
        ENGLISH.encode("utf-32"),
        ENGLISH.encode("cp1252"),  # no BOM, not UTF-8: detected
    ],
    ids=["utf8", "utf8-bom", "utf16", "utf16be", "utf16le", "utf32", "cp1252"],
)
def test_text_upload_encodings_decode_to_the_same_text(encoded: bytes) -> None:
    doc = parse_upload("Pride.txt", encoded, max_chars=MAX)
    assert doc.title == "Pride"
    assert doc.sections == [Section(None, ENGLISH.strip())]


def test_cyrillic_legacy_encoding_is_detected() -> None:
    russian = "Привет, как дела? Это тест кодировки. Мы идём домой после работы, а потом читаем книгу. " * 3
    assert decode_text(russian.encode("cp1251")) == russian


@pytest.mark.parametrize(
    "data",
    [
        PNG,
        b"PK\x03\x04" + b"\x00" * 100,  # a zip (or an EPUB / .docx) renamed
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        b"GIF89a\x01\x00\x01\x00" + b"\x00" * 20,
        b"plain start then a NUL \x00 byte",
        bytes(range(256)) * 4,
        b"\xff\xfe" + b"\x00\xd8",  # UTF-16 LE BOM, then a lone surrogate
    ],
    ids=["png", "zip", "pdf", "gif", "nul", "all-bytes", "bad-utf16"],
)
def test_binary_or_undecodable_txt_is_invalid_file(data: bytes) -> None:
    refused(400, "invalid_file", parse_upload, "notes.txt", data, max_chars=MAX)


@pytest.mark.parametrize("name", ["book.pdf", "book.docx", "book", "archive.zip", "image.png", "notes.txt.exe"])
def test_unknown_extension_is_unsupported_file_type(name: str) -> None:
    refused(415, "unsupported_file_type", parse_upload, name, b"hello", max_chars=MAX)


def test_extension_is_case_insensitive_and_markdown_uploads_get_sections() -> None:
    doc = parse_upload("C:\\books\\Guide.MD", b"# One\nAlpha.\n\n# Two\nBeta.", max_chars=MAX)
    assert doc.title == "Guide"
    assert doc.sections == [Section("One", "Alpha."), Section("Two", "Beta.")]
    assert parse_upload("x.markdown", b"*hi*", max_chars=MAX).sections == [Section(None, "hi")]


def test_text_longer_than_the_limit_is_refused() -> None:
    assert parse_upload("a.txt", b"x" * 100, max_chars=100).characters == 100
    error = refused(400, "string_above_max_length", parse_upload, "a.txt", b"x" * 101, max_chars=100)
    assert "100" in error.message


def test_empty_upload_is_empty_input() -> None:
    refused(400, "empty_input", parse_upload, "a.txt", b"", max_chars=MAX)
    refused(400, "empty_input", parse_upload, "a.txt", b"\xef\xbb\xbf \n\n", max_chars=MAX)


# --- EPUB -------------------------------------------------------------------------------------------------------

CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""


def xhtml(body: str, title: str = "ignored head title") -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">'
        f"<head><title>{title}</title><style>p {{ color: red }}</style></head><body>{body}</body></html>"
    )


def opf(title: str, items: list[tuple[str, str, str, str]], spine: list[str], *, toc: str = "") -> str:
    """items: (id, href, media type, properties)."""
    manifest = "".join(
        f'<item id="{i}" href="{h}" media-type="{m}"' + (f' properties="{p}"' if p else "") + "/>"
        for i, h, m, p in items
    )
    refs = "".join(
        f'<itemref idref="{r.removesuffix("!")}"' + (' linear="no"' if r.endswith("!") else "") + "/>" for r in spine
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
        f'<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">x</dc:identifier>'
        f"<dc:title>{title}</dc:title><dc:language>en</dc:language></metadata>"
        f"<manifest>{manifest}</manifest><spine{toc}>{refs}</spine></package>"
    )


def build_epub(files: dict[str, str | bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", CONTAINER, compress_type=compression)
        for name, content in files.items():
            archive.writestr(name, content, compress_type=compression)
    return out.getvalue()


XHTML = "application/xhtml+xml"


def epub3_book() -> bytes:
    nav = xhtml(
        '<nav epub:type="landmarks"><ol><li><a href="text/ch1.xhtml">Start Here</a></li></ol></nav>'
        '<nav epub:type="toc"><h1>Contents</h1><ol>'
        '<li><a href="text/ch1.xhtml#top">Chapter 1: Down the Rabbit-Hole</a></li>'
        '<li><a href="text/ch%202.xhtml">The Pool of Tears</a></li></ol></nav>'
    )
    chapter1 = xhtml(
        '<section><h1 id="top">Chapter 1: Down the  Rabbit-Hole</h1>'
        "<p>Alice was beginning to get very tired&#8212;of sitting by her sister &amp; having nothing to do."
        '<a epub:type="noteref" href="#n1"><sup>1</sup></a></p>'
        "<p>So she was considering <em>in her own mind</em>,<br/>as well as she could.</p>"
        '<span epub:type="pagebreak" title="2" id="p2"></span>'
        "<table><tr><th>Name</th><th>Role</th></tr><tr><td>Alice</td><td>hero</td></tr></table>"
        "<script>var hidden = 1;</script>"
        '<aside epub:type="footnote" id="n1"><p>A footnote stays readable text.</p></aside></section>'
    )
    chapter2 = xhtml("<h2>Not the TOC title</h2><p>\u201cCuriouser and curiouser!\u201d cried Alice.</p>")
    cover = xhtml('<div><img src="../images/cover.png" alt="Cover"/></div>')
    notes = xhtml("<h1>Endnotes</h1><p>Not in the linear reading order.</p>")
    items = [
        ("nav", "nav.xhtml", XHTML, "nav"),
        ("cover", "text/cover.xhtml", XHTML, ""),
        ("c1", "text/ch1.xhtml", XHTML, ""),
        ("c2", "text/ch%202.xhtml", XHTML, ""),
        ("notes", "text/notes.xhtml", XHTML, ""),
        ("img", "images/cover.png", "image/png", "cover-image"),
        ("css", "style.css", "text/css", ""),
    ]
    return build_epub(
        {
            "OEBPS/content.opf": opf("Alice\u2019s Adventures", items, ["cover", "nav!", "c1", "c2", "notes!"]),
            "OEBPS/nav.xhtml": nav,
            "OEBPS/text/cover.xhtml": cover,
            "OEBPS/text/ch1.xhtml": chapter1,
            "OEBPS/text/ch 2.xhtml": chapter2,
            "OEBPS/text/notes.xhtml": notes,
            "OEBPS/images/cover.png": PNG,
            "OEBPS/style.css": "p { margin: 0 }",
        }
    )


def test_epub3_chapters_follow_the_spine_with_toc_titles() -> None:
    doc = parse_upload("alice.epub", epub3_book(), max_chars=MAX)
    assert doc.title == "Alice\u2019s Adventures"
    assert [s.title for s in doc.sections] == ["Chapter 1: Down the Rabbit-Hole", "The Pool of Tears"]
    first, second = (s.text.split("\n\n") for s in doc.sections)
    assert first == [
        "Alice was beginning to get very tired\u2014of sitting by her sister & having nothing to do.",
        "So she was considering in her own mind,",
        "as well as she could.",
        "Name, Role",
        "Alice, hero",
        "A footnote stays readable text.",
    ]
    # The TOC title differs from the document's heading: the heading is prose and stays.
    assert second == ["Not the TOC title", "\u201cCuriouser and curiouser!\u201d cried Alice."]


def test_epub2_ncx_titles_and_first_heading_fallback() -> None:
    ncx = (
        '<?xml version="1.0" encoding="UTF-8"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1">'
        "<navMap><navPoint id='p1' playOrder='1'><navLabel><text>Opening</text></navLabel>"
        "<content src='one.html'/></navPoint></navMap></ncx>"
    )
    items = [
        ("ncx", "toc.ncx", "application/x-dtbncx+xml", ""),
        ("one", "one.html", XHTML, ""),
        ("two", "two.html", XHTML, ""),
    ]
    data = build_epub(
        {
            "OEBPS/content.opf": opf("Two Parts", items, ["one", "two"], toc=' toc="ncx"'),
            "OEBPS/toc.ncx": ncx,
            "OEBPS/one.html": xhtml("<h1>Opening</h1><p>First.</p>"),
            "OEBPS/two.html": '<?xml version="1.0" encoding="iso-8859-1"?><html><body><h2>Second part</h2>'
            "<p>Caf\xe9.</p></body></html>".encode("latin-1"),
        }
    )
    doc = parse_upload("two.epub", data, max_chars=MAX)
    assert doc.sections == [Section("Opening", "First."), Section("Second part", "Caf\u00e9.")]


def test_epub_over_the_character_limit_is_refused() -> None:
    refused(400, "string_above_max_length", parse_upload, "alice.epub", epub3_book(), max_chars=50)


def test_epub_without_text_is_empty_input() -> None:
    items = [("c", "c.xhtml", XHTML, "")]
    data = build_epub({"OEBPS/content.opf": opf("T", items, ["c"]), "OEBPS/c.xhtml": xhtml("<img src='x.png'/>")})
    refused(400, "empty_input", parse_upload, "t.epub", data, max_chars=MAX)


def patch_member(data: bytes, name: str, *, flags: int | None = None, size: int | None = None) -> bytes:
    """Rewrite `name`'s general-purpose flags or uncompressed size in both its local and central headers."""
    raw = bytearray(data)
    encoded = name.encode()
    for signature, flags_at, size_at, name_len_at, header_len in (
        (b"PK\x03\x04", 6, 22, 26, 30),
        (b"PK\x01\x02", 8, 24, 28, 46),
    ):
        start = 0
        while (at := raw.find(signature, start)) >= 0:
            start = at + 4
            (name_len,) = struct.unpack_from("<H", raw, at + name_len_at)
            if bytes(raw[at + header_len : at + header_len + name_len]) != encoded:
                continue
            if flags is not None:
                struct.pack_into("<H", raw, at + flags_at, flags)
            if size is not None:
                struct.pack_into("<I", raw, at + size_at, size)
    return bytes(raw)


def small_book() -> bytes:
    items = [("c", "c.xhtml", XHTML, "")]
    return build_epub(
        {"OEBPS/content.opf": opf("T", items, ["c"]), "OEBPS/c.xhtml": xhtml("<p>" + "word " * 500 + "</p>")}
    )


def test_real_zip_bomb_is_refused_from_its_headers() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        with archive.open("OEBPS/bomb.xhtml", "w", force_zip64=True) as member:
            chunk = b"\0" * (8 << 20)
            for _ in range(26):  # 208 MiB of zeros: really inflates past the 200 MB cap, at about 1000:1
                member.write(chunk)
    data = out.getvalue()
    assert len(data) < 1 << 20
    started = time.perf_counter()
    error = refused(400, "invalid_file", parse_upload, "bomb.epub", data, max_chars=MAX)
    assert time.perf_counter() - started < 0.5  # refused from the headers, nothing inflated
    assert "zip bomb" in error.message or "MB" in error.message


def test_declared_sizes_alone_refuse_before_inflating() -> None:
    # The content is harmless, but the headers claim 300 MB: the claim alone is refused (had anything been
    # inflated, the mismatch would have shown as a read error instead).
    data = patch_member(small_book(), "OEBPS/c.xhtml", size=300 * 1024 * 1024)
    error = refused(400, "invalid_file", parse_upload, "t.epub", data, max_chars=MAX)
    assert "compressed beyond" in error.message or "more than" in error.message


def test_header_lying_about_a_smaller_size_is_refused_while_reading() -> None:
    data = patch_member(small_book(), "OEBPS/c.xhtml", size=100)
    error = refused(400, "invalid_file", parse_upload, "t.epub", data, max_chars=MAX)
    assert "cannot be read" in error.message


def test_the_inflated_byte_budget_is_enforced_while_reading() -> None:
    data = small_book()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("OEBPS/c.xhtml")
        with pytest.raises(epub.EpubError, match="size limit"):
            epub._Budget(info.file_size - 1).read(archive, info)
        assert len(epub._Budget(info.file_size).read(archive, info)) == info.file_size


def test_too_many_members_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(epub, "MAX_MEMBERS", 3)  # the real cap is 10,000; the rule is the same
    refused(400, "invalid_file", parse_upload, "t.epub", small_book(), max_chars=MAX)


def test_encrypted_member_is_refused() -> None:
    data = patch_member(small_book(), "OEBPS/c.xhtml", flags=0x1)
    error = refused(400, "invalid_file", parse_upload, "t.epub", data, max_chars=MAX)
    assert "encrypted" in error.message


@pytest.mark.parametrize(
    "data",
    [
        b"not a zip at all",
        b"PK\x03\x04" + b"\x00" * 60,
        build_epub({}),  # container.xml names an OPF that is missing
        build_epub({"OEBPS/content.opf": "<package><metadata>"}),  # not well-formed
        build_epub({"OEBPS/content.opf": '<!DOCTYPE p [<!ENTITY a "aaaa">]><package>&a;</package>'}),
        build_epub({"OEBPS/content.opf": "<package><metadata/><manifest/></package>"}),  # no spine
    ],
    ids=["text", "truncated-zip", "no-opf", "broken-xml", "xml-entities", "no-spine"],
)
def test_broken_or_hostile_epub_is_invalid_file(data: bytes) -> None:
    refused(400, "invalid_file", parse_upload, "book.epub", data, max_chars=MAX)
