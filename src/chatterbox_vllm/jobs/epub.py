"""EPUB uploads read in memory, with the defences an untrusted zip needs.

An EPUB is a zip holding XHTML chapters, an OPF package file (metadata, manifest, the reading order or "spine")
and a table of contents (EPUB 3 nav document or EPUB 2 NCX). It is read with `zipfile` straight from the uploaded
bytes; nothing is ever written to disk, so member names cannot traverse paths.

Zip bombs are refused from the central directory before anything is inflated (member count, total declared size,
compression ratio), and the same budget is enforced on the bytes actually inflated, since a header can lie.
Encrypted members are refused. The XML files (container, OPF, NCX) are refused if they declare entities, so no
entity expansion happens at all; chapters are parsed as HTML (`html_text`), which never expands custom entities.
"""

from __future__ import annotations

import io
import posixpath
import re
import struct
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from urllib.parse import unquote, urldefrag

from chatterbox_vllm.jobs.html_text import Block, html_blocks

MAX_MEMBERS = 10_000
# zipfile builds an object per central-directory entry as it opens an archive: a directory of 32 MiB of empty
# entries would cost gigabytes before any member check ran. Its size is read from the end record first.
MAX_DIRECTORY_BYTES = 4 * 1024 * 1024
MAX_TOTAL_BYTES = 200 * 1024 * 1024  # inflated, all members together
MAX_RATIO = 100  # inflated / compressed, for members large enough that a ratio means something
RATIO_MIN_BYTES = 1024 * 1024  # small members (a page of spaces) may compress far better than 100:1 harmlessly
_CHUNK = 64 * 1024

_CONTAINER = "META-INF/container.xml"
_XHTML_TYPES = frozenset({"application/xhtml+xml", "text/html"})
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._-]+)""", re.IGNORECASE)


class EpubError(ValueError):
    """The upload is not an EPUB this reader accepts (broken, encrypted, hostile, or without a spine)."""


class EpubTooLong(EpubError):
    """The book's text passed `max_chars` while it was being read (the rest was not read)."""


@dataclass(frozen=True)
class Chapter:
    """One spine document: its title (TOC entry or first heading) and its text blocks, that heading removed."""

    title: str | None
    blocks: list[Block]


@dataclass(frozen=True)
class Book:
    title: str | None
    chapters: list[Chapter]


class _Budget:
    """Inflated bytes left for the whole archive: enforced while reading, whatever the headers said."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def read(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        out = bytearray()
        try:
            with archive.open(info) as member:
                while chunk := member.read(_CHUNK):
                    self.left -= len(chunk)
                    if self.left < 0:
                        raise EpubError("the EPUB inflates to more than its size limit")
                    out += chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as e:
            raise EpubError(f"the EPUB member {info.filename!r} cannot be read: {e}") from e
        return bytes(out)


def check_directory(data: bytes) -> None:
    """Refuse an oversized central directory from the end record, before `zipfile` parses a single entry."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
    if at < 0 or at + _EOCD.size > len(data):
        raise EpubError("the file is not a valid EPUB (no zip directory found)")
    _, _, _, _, entries, size, _, _ = _EOCD.unpack_from(data, at)
    locator = at - _ZIP64_LOCATOR.size
    if locator >= 0 and data[locator : locator + 4] == b"PK\x06\x07":
        # The zip64 record is where the locator points; some zipfile versions read it just before the locator
        # instead. Both places are checked, so no reader sees a larger directory than the one checked here.
        pointed = _ZIP64_LOCATOR.unpack_from(data, locator)[2]
        for record in {pointed, locator - _ZIP64_EOCD.size}:
            if 0 <= record and record + _ZIP64_EOCD.size <= len(data) and data[record : record + 4] == b"PK\x06\x06":
                record_entries, record_size = _ZIP64_EOCD.unpack_from(data, record)[7:9]
                entries, size = max(entries, record_entries), max(size, record_size)
    if entries > MAX_MEMBERS:
        raise EpubError(f"the EPUB has more than {MAX_MEMBERS} files")
    if size > MAX_DIRECTORY_BYTES:
        raise EpubError(f"the EPUB's zip directory is larger than {MAX_DIRECTORY_BYTES // (1024 * 1024)} MB")


def check_archive(archive: zipfile.ZipFile) -> None:
    """Refuse zip bombs and encrypted members from the central directory, before inflating anything."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise EpubError(f"the EPUB has more than {MAX_MEMBERS} files")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise EpubError("the EPUB is encrypted (DRM); only unencrypted EPUBs can be read")
        total += info.file_size
        if info.file_size >= RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise EpubError(f"the EPUB member {info.filename!r} is compressed beyond {MAX_RATIO}:1 (a zip bomb?)")
    if total > MAX_TOTAL_BYTES:
        raise EpubError(f"the EPUB inflates to more than {MAX_TOTAL_BYTES // (1024 * 1024)} MB")


def read_epub(data: bytes, *, max_chars: int | None = None) -> Book:
    """The book's title and its spine documents in reading order (documents without text are left out).

    With `max_chars`, reading stops with `EpubTooLong` as soon as the text read passes it."""
    check_directory(data)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as e:
        raise EpubError(f"the file is not a valid EPUB (zip): {e}") from e
    with archive:
        check_archive(archive)
        reader = _Reader(archive, max_chars)
        return reader.book()


class _Reader:
    def __init__(self, archive: zipfile.ZipFile, max_chars: int | None) -> None:
        self._archive = archive
        self._chars_left = max_chars
        self._budget = _Budget(MAX_TOTAL_BYTES)
        self._names = {info.filename: info for info in archive.infolist()}

    def _read(self, name: str) -> bytes | None:
        info = self._names.get(name)
        return None if info is None else self._budget.read(self._archive, info)

    def _xml(self, name: str) -> ET.Element:
        data = self._read(name)
        if data is None:
            raise EpubError(f"the EPUB lacks {name}")
        if b"<!ENTITY" in data:
            raise EpubError(f"the EPUB's {name} declares XML entities, which are not accepted")
        try:
            return ET.fromstring(data)
        except ET.ParseError as e:
            raise EpubError(f"the EPUB's {name} is not well-formed XML: {e}") from e

    def book(self) -> Book:
        opf_path = self._opf_path()
        opf = self._xml(opf_path)
        base = posixpath.dirname(opf_path)
        title = _first_text(opf, "metadata", "title")
        manifest: dict[str, tuple[str, str, str]] = {}  # id -> (path, media type, properties)
        for item in _children(opf, "manifest", "item"):
            href = item.get("href")
            if item.get("id") and href:
                path = _resolve(base, href)
                manifest[item.get("id", "")] = (path, item.get("media-type", ""), item.get("properties", ""))
        spine = _first(opf, "spine")
        if spine is None:
            raise EpubError("the EPUB's package file has no spine (reading order)")
        toc = self._toc(manifest, spine.get("toc"))
        chapters: list[Chapter] = []
        for itemref in _children(opf, "spine", "itemref"):
            entry = manifest.get(itemref.get("idref", ""))
            if entry is None or itemref.get("linear", "yes") == "no" or entry[1] not in _XHTML_TYPES:
                continue
            if "nav" in entry[2].split():
                continue  # the table of contents page: its titles are the chapters' names, not prose
            chapter = self._chapter(entry[0], toc.get(entry[0]))
            if chapter is None:
                continue
            chapters.append(chapter)
            if self._chars_left is not None:
                self._chars_left -= len(chapter.title or "") + sum(len(b.text) for b in chapter.blocks)
                if self._chars_left < 0:
                    raise EpubTooLong("the EPUB holds more text than is accepted")
        return Book(title, chapters)

    def _opf_path(self) -> str:
        container = self._xml(_CONTAINER)
        for element in container.iter():
            if _local(element.tag) == "rootfile" and element.get("full-path"):
                return posixpath.normpath(element.get("full-path", "")).lstrip("/")  # a path, not a URL
        raise EpubError("the EPUB's container.xml names no package file")

    def _toc(self, manifest: dict[str, tuple[str, str, str]], ncx_id: str | None) -> dict[str, str]:
        """Document path -> its first table-of-contents title (EPUB 3 nav first, else the EPUB 2 NCX)."""
        titles: dict[str, str] = {}
        nav = next((path for path, _, props in manifest.values() if "nav" in props.split()), None)
        if nav is not None:
            markup = self._read(nav)
            if markup is not None:
                for href, text in _nav_links(_decode_markup(markup)):
                    titles.setdefault(_resolve(posixpath.dirname(nav), href), text)
        ncx = manifest.get(ncx_id or "") or next(
            (e for e in manifest.values() if e[1] == "application/x-dtbncx+xml"), None
        )
        if not titles and ncx is not None and ncx[0] in self._names:
            root = self._xml(ncx[0])
            for point in root.iter():
                if _local(point.tag) != "navPoint":
                    continue
                label = _first_text(point, "navLabel", "text")
                content = next((c for c in point if _local(c.tag) == "content"), None)
                if label and content is not None and content.get("src"):
                    titles.setdefault(_resolve(posixpath.dirname(ncx[0]), content.get("src", "")), label)
        return titles

    def _chapter(self, path: str, toc_title: str | None) -> Chapter | None:
        markup = self._read(path)
        if markup is None:
            return None
        blocks = html_blocks(_decode_markup(markup))
        title = toc_title
        if blocks and blocks[0].level and blocks[0].level <= 3:
            heading = blocks[0].text
            if title is None or _same(title, heading):
                title = title or heading
                blocks = blocks[1:]
        if not blocks:
            return None  # a cover, an image page, or a heading alone: nothing to read
        return Chapter(title, blocks)


def _nav_links(markup: str) -> list[tuple[str, str]]:
    """(href, text) of the links in an EPUB 3 nav document's `toc` nav, in order."""
    from html.parser import HTMLParser

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.links: list[tuple[str, str]] = []
            self._href: str | None = None
            self._text: list[str] = []
            self._nav_depth = 0
            self._in_toc = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = dict(attrs)
            if tag == "nav":
                self._nav_depth += 1
                if "toc" in (values.get("epub:type") or "").split() or "doc-toc" in (values.get("role") or ""):
                    self._in_toc = True
            elif tag == "a" and self._in_toc and values.get("href"):
                self._href, self._text = values["href"], []

        def handle_endtag(self, tag: str) -> None:
            if tag == "nav":
                self._nav_depth -= 1
                if self._nav_depth <= 0:
                    self._in_toc = False
            elif tag == "a" and self._href is not None:
                text = " ".join("".join(self._text).split())
                if text:
                    self.links.append((self._href, text))
                self._href = None

        def handle_data(self, data: str) -> None:
            if self._href is not None:
                self._text.append(data)

    parser = Links()
    parser.feed(markup)
    parser.close()
    return parser.links


def _decode_markup(data: bytes) -> str:
    """XHTML bytes as text: BOM, then the XML declaration's or a meta charset, else UTF-8 (EPUB's default)."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    match = _XML_ENCODING.match(data) or _META_CHARSET.search(data[:2048])
    encoding = match.group(1).decode("ascii") if match else "utf-8"
    try:
        return data.decode(encoding, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _resolve(base: str, href: str) -> str:
    """A zip member name for `href` relative to `base` (fragment dropped, percent-decoded, `..` folded)."""
    path = unquote(urldefrag(href)[0])
    return posixpath.normpath(posixpath.join(base, path)).lstrip("/")


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _first(root: ET.Element, name: str) -> ET.Element | None:
    return next((e for e in root.iter() if _local(e.tag) == name), None)


def _children(root: ET.Element, parent: str, name: str) -> list[ET.Element]:
    element = _first(root, parent)
    return [] if element is None else [c for c in element if _local(c.tag) == name]


def _first_text(root: ET.Element, parent: str, name: str) -> str | None:
    element = _first(root, parent)
    if element is None:
        return None
    for child in element.iter():
        if _local(child.tag) == name:
            text = " ".join("".join(child.itertext()).split())
            if text:
                return text
    return None
