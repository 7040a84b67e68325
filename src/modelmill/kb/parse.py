"""Parsing: read a document file into a Document of units (paragraphs, table rows, FAQ pairs).

    from modelmill.kb.parse import parse
    doc = parse("handbook.pdf")                     # Document(title, units=[Unit(text, section, page, kind)])
    doc = parse("notes.txt", encoding="gb18030")    # text files are UTF-8 unless told otherwise

The parser is chosen by suffix from ``PARSERS``: .txt .md .markdown .html .htm .pdf .docx
.csv .tsv .xlsx. A plugin adds a format from a module named under the
``modelmill.kb_parsers`` entry-point group, the way the built-ins register:

    from modelmill.kb.parse import register_parser
    register_parser((".epub",), parse_epub)        # parse_epub(path: Path, *, encoding) -> Document

Headings become each unit's ``section`` ("Returns > Refunds"), never units of their own.
Table and sheet rows become ``row`` units ("Header: value; Header: value"); a table with a
question and an answer column (question/q/问题/提问, answer/a/答案/回答/reply/response) gives
one ``qa`` unit per row. Every problem is a KBError naming the file and the fix.
"""

from __future__ import annotations

import codecs
import re
import textwrap
from collections.abc import Callable, Iterable
from itertools import zip_longest
from pathlib import Path

from modelmill.text import is_cjk_char
from modelmill.kb.types import Document, KBError, Unit
from modelmill.plugins import load_plugins

MiB = 2**20
MAX_BYTES = 50 * MiB

Parser = Callable[..., Document]  # parser(path: Path, *, encoding: str | None) -> Document
PARSERS: dict[str, Parser] = {}
SUPPORTED: list[str] = []  # sorted suffixes, kept in step with PARSERS by register_parser

_NO_TEXT_FIX = "check that this is the right file; a document needs at least one paragraph or row"

QUESTION_COLUMNS = {"question", "questions", "q", "问题", "提问", "问"}
ANSWER_COLUMNS = {"answer", "answers", "a", "答案", "回答", "答", "reply", "response"}


def register_parser(suffixes: tuple[str, ...], func: Parser) -> None:
    """Make ``parse`` read files ending in any of ``suffixes`` (".epub" or "epub") with ``func``."""
    for s in suffixes:
        s = s.lower()
        PARSERS[s if s.startswith(".") else "." + s] = func
    SUPPORTED[:] = sorted(PARSERS)


def parse(path: str | Path, *, encoding: str | None = None, max_bytes: int = MAX_BYTES) -> Document:
    """Read one document. ``encoding`` applies to text formats (txt, md, html, csv);
    ``max_bytes`` guards against feeding a whole archive in by mistake."""
    p, where = Path(path), str(path)
    if not p.is_file():
        raise KBError("no such file" if not p.exists() else "is not a file", file=where,
                      fix="check the path")
    load_plugins("modelmill.kb_parsers")
    parser = PARSERS.get(p.suffix.lower())
    if parser is None:
        raise KBError(f"unsupported file type '{p.suffix or p.name}'", file=where,
                      fix=f"use one of {', '.join(SUPPORTED)}, or install a plugin that adds the format "
                          "through the modelmill.kb_parsers entry point (it calls register_parser)")
    size = p.stat().st_size
    if size > max_bytes:
        raise KBError(f"is {_size(size)}, over the {_size(max_bytes)} limit", file=where,
                      fix="split it into smaller files, or raise the limit with --max-bytes")
    if size == 0:
        raise KBError("has no text (the file is empty)", file=where, fix=_NO_TEXT_FIX)
    try:
        doc = parser(p, encoding=encoding)
    except KBError:
        raise
    except OSError as e:  # unreadable (permissions, a file that vanished, an I/O error)
        raise KBError(f"cannot be read ({type(e).__name__}: {e.strerror or e})", file=where,
                      fix="check the file's permissions and that it is still there") from None
    except Exception as e:  # noqa: BLE001 - a library choking on a damaged file (lxml, zip, XML ...)
        raise _unreadable(p, f"{p.suffix.lstrip('.') or 'text'} file", e,
                          "open it in the program that made it and save it again") from None
    units = [Unit(u.text.strip(), u.section, u.page, u.kind) for u in doc.units if u.text.strip()]
    if not units:
        raise KBError("has no text", file=where, fix=_NO_TEXT_FIX)
    return Document(title=_one_line(doc.title) or _stem_title(p), units=units, source=where,
                    format=doc.format or p.suffix.lower().lstrip("."))


# ---- shared helpers ---------------------------------------------------------------------

_HSPACE = re.compile(r"[^\S\n]+")  # whitespace other than a line break
_BLANK_LINE = re.compile(r"\n\s*\n")


def read_text(path: Path, encoding: str | None = None) -> str:
    """The file's text with "\\n" line ends: ``encoding`` if given, else UTF-8 (BOM dropped) or
    UTF-16 with a BOM. Anything else fails with the place of the first bad byte."""
    data = path.read_bytes()
    if encoding:
        codec = encoding
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        codec = "utf-16"
    else:
        codec = "utf-8"
    try:
        text = data.decode(codec)
    except LookupError:
        raise KBError(f"unknown encoding '{encoding}'", field="--encoding",
                      fix="use a Python codec name such as utf-8, gb18030, big5, shift_jis or latin-1") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        fix = ("pass the file's real encoding with --encoding, or re-save it as UTF-8" if encoding else
               "re-save it as UTF-8, or pass --encoding (e.g. gb18030, latin-1)")
        raise KBError(f"byte 0x{data[e.start]:02x} at byte offset {e.start} is not valid {codec}",
                      file=str(path), line=line, fix=fix) from None
    if not encoding and "\x00" in text:  # valid UTF-8, but really UTF-16 without a BOM, or binary
        raise KBError("contains NUL bytes, so it is not UTF-8 text", file=str(path),
                      fix="re-save it as UTF-8, or pass --encoding (e.g. utf-16-le)")
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _clean(text: str) -> str:
    """Collapse spaces and tabs, strip each line, drop blank lines. Line breaks stay, and no
    space is ever added, so CJK text comes out as it went in."""
    lines = (_HSPACE.sub(" ", ln).strip() for ln in text.split("\n"))
    return "\n".join(ln for ln in lines if ln)


def _one_line(text: str) -> str:
    """Clean text as one line (titles, headings, cells): lines joined by a space, or by
    nothing between two CJK characters, where a space would not be written."""
    out = ""
    for ln in filter(None, _clean(text).split("\n")):
        join = "" if not out or (is_cjk_char(out[-1]) and is_cjk_char(ln[0])) else " "
        out += join + ln
    return out


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB // 10 else f"{n} bytes"


def _stem_title(path: Path) -> str:
    return re.sub(r"[_-]+", " ", path.stem).strip() or path.stem


class _Outline:
    """The heading path that becomes each unit's section. A heading equal to the title is
    the document's top and not repeated; with ``promote``, a leading H1 becomes the title."""

    def __init__(self, title: str | None = None, promote: bool = False):
        self.title, self.promote, self.seen = title or None, promote, False
        self.stack: list[tuple[int, str]] = []

    def heading(self, level: int, text: str) -> None:
        """Level 1-6 (or 9), or 0 for a docx "Title" paragraph."""
        if not text:
            return
        first, self.seen = not self.seen, True
        if self.title is None and (level == 0 or (self.promote and first and level == 1)):
            self.title = text
        elif level <= 1 and text == self.title:
            self.stack.clear()
        else:
            while self.stack and self.stack[-1][0] >= level:
                self.stack.pop()
            self.stack.append((level, text))

    @property
    def section(self) -> str:
        return " > ".join(text for _, text in self.stack)


def _table_units(rows: Iterable[list[str]], section: str) -> list[Unit]:
    """Rows of cleaned cells to units: the first non-empty row names the columns; a question
    and an answer column make each row one ``qa`` unit, else each row is a ``row`` unit."""
    rows = [r for r in rows if any(r)]
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    if not body:  # a lone row has nothing to name; keep its text
        return [Unit("; ".join(c for c in header if c), section, kind="row")]
    names = [h.strip(" :：").lower() for h in header]
    q = next((i for i, h in enumerate(names) if h in QUESTION_COLUMNS), None)
    a = next((i for i, h in enumerate(names) if h in ANSWER_COLUMNS), None)
    return [_row_unit(header, r, section, q, a) for r in body]


def _row_unit(header: list[str], row: list[str], section: str, q: int | None, a: int | None) -> Unit:
    cells = list(zip_longest(header, row, fillvalue=""))
    if q is not None and a is not None and cells[q][1] and cells[a][1]:
        rest = [f"{h}: {v}" if h else v for i, (h, v) in enumerate(cells) if v and i not in (q, a)]
        return Unit("\n".join([f"Q: {cells[q][1]}", f"A: {cells[a][1]}", *rest]), section, kind="qa")
    return Unit("; ".join(f"{h}: {v}" if h else v for h, v in cells if v), section, kind="row")


def _unreadable(path: Path, what: str, err: Exception, fix: str) -> KBError:
    return KBError(f"is not a readable {what} ({type(err).__name__}: {err})", file=str(path), fix=fix)


# ---- plain text and Markdown -----------------------------------------------------------

def parse_txt(path: Path, *, encoding: str | None = None) -> Document:
    """Paragraphs split on blank lines; the title is the file name."""
    units = [Unit(_clean(block)) for block in _BLANK_LINE.split(read_text(path, encoding))]
    return Document(_stem_title(path), units, format="txt")


_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_RULE = re.compile(r" {0,3}(=+|-+|\*{3,}|_{3,})[ \t]*$")  # setext underline or thematic break
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # keep a link's words, drop its URL


_TABLE_RULE = re.compile(r"\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")  # |---|:--:|


def _pipe_cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def parse_markdown(path: Path, *, encoding: str | None = None) -> Document:
    """ATX (and setext) headings set the section, a leading H1 the title; paragraphs, list
    blocks and fenced code blocks are units."""
    lines = read_text(path, encoding).split("\n")
    title, lines = _front_matter(lines)
    outline, units, buf = _Outline(title, promote=True), [], []
    fence = ""

    def flush():
        if buf and fence:  # code keeps its indentation
            units.append(Unit(textwrap.dedent("\n".join(ln.rstrip() for ln in buf)).strip("\n"), outline.section))
        elif len(buf) >= 2 and _TABLE_RULE.match(buf[1]) and all("|" in ln for ln in buf):
            # a pipe table: each row one "header: value" unit (or one FAQ pair), like other tables
            rows = [[_one_line(_MD_LINK.sub(r"\1", c)) for c in _pipe_cells(ln)] for i, ln in enumerate(buf) if i != 1]
            units.extend(_table_units(rows, outline.section))
        elif buf:
            units.append(Unit(_clean(_MD_LINK.sub(r"\1", "\n".join(buf))), outline.section))
        buf.clear()

    for line in lines:
        if fence:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                flush()
                fence = ""
            else:
                buf.append(line)
        elif m := _FENCE.match(line):
            flush()
            fence = m.group(1)
        elif m := _ATX.match(line):
            flush()
            outline.heading(len(m.group(1)), _one_line(m.group(2) or ""))
        elif m := _RULE.match(line):
            if len(buf) == 1 and m.group(1)[0] in "=-":  # setext: one line of text, underlined
                outline.heading(1 if m.group(1)[0] == "=" else 2, _one_line(buf.pop()))
            flush()
        elif not line.strip():
            flush()
        else:
            buf.append(line)
    flush()  # an unclosed fence ends with the file, as in CommonMark
    return Document(outline.title or _stem_title(path), units, format="md")


def _front_matter(lines: list[str]) -> tuple[str | None, list[str]]:
    """YAML front matter (between --- lines at the top) is metadata, not text; its title counts."""
    if not lines or lines[0].strip() != "---":
        return None, lines
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
    if end is None:
        return None, lines
    title = next((m.group(1).strip().strip("\"'") for ln in lines[1:end]
                  if (m := re.match(r"title:\s*(.+)", ln))), None)
    return title, lines[end + 1:]


# ---- HTML -------------------------------------------------------------------------------

_HTML_DROP = ["script", "style", "nav", "footer", "header", "noscript", "template"]
_HTML_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_HTML_BLOCKS = ["p", "div", "section", "article", "main", "aside", "ul", "ol", "li", "dl", "dt", "dd",
                "blockquote", "pre", "table", "figure", "figcaption", "address", "details", "summary",
                "form", "fieldset", "hr", *_HTML_HEADINGS]


def parse_html(path: Path, *, encoding: str | None = None) -> Document:
    """Visible text by block (p, li, pre, blockquote, ...), headings as sections, table rows
    as ``row`` units; page furniture (nav, header, footer) and scripts are dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(read_text(path, encoding), "html.parser")
    for tag in soup(_HTML_DROP):
        tag.decompose()
    for br in soup("br"):
        br.replace_with("\n")
    title = ""
    if soup.title:
        title = _one_line(soup.title.get_text())
        soup.title.decompose()
    if not title and (h1 := soup.find("h1")):
        title = _one_line(h1.get_text())
    walker = _HtmlWalker(_Outline(title))
    walker.walk(soup.body or soup)
    return Document(title or _stem_title(path), walker.units, format="html")


class _HtmlWalker:
    """Walks the tree in document order: loose text and inline tags gather into one unit
    until the next block starts; a block with blocks inside is walked, not flattened."""

    def __init__(self, outline: _Outline):
        self.outline, self.units, self.inline = outline, [], []

    def walk(self, node) -> None:
        from bs4 import NavigableString

        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a comment, doctype or CDATA
                    self.inline.append(str(child))
            elif child.name in _HTML_HEADINGS:
                self.flush()
                self.outline.heading(_HTML_HEADINGS[child.name], _one_line(child.get_text()))
            elif child.name == "table":
                self.flush()
                self.units += _table_units(_html_rows(child), self.outline.section)
            elif child.name == "pre":
                self.flush()
                self.units.append(Unit(textwrap.dedent(child.get_text()).strip("\n"), self.outline.section))
            elif child.find(_HTML_BLOCKS):
                self.flush()
                self.walk(child)
                self.flush()
            elif child.name in _HTML_BLOCKS:
                self.flush()
                self.inline.append(child.get_text())
                self.flush()
            else:
                self.inline.append(child.get_text())

    def flush(self) -> None:
        if self.inline:
            self.units.append(Unit(_clean("".join(self.inline)), self.outline.section))
            self.inline.clear()


def _html_rows(table) -> list[list[str]]:
    """The table's own rows (not a nested table's), header row first: the first row of only
    <th> cells if there is one, else the first row."""
    rows = [tr.find_all(["th", "td"], recursive=False) for tr in table.find_all("tr")
            if tr.find_parent("table") is table]
    rows = [r for r in rows if r]
    head = next((i for i, r in enumerate(rows) if all(c.name == "th" for c in r)), 0)
    if rows:
        rows.insert(0, rows.pop(head))
    return [[_one_line(c.get_text(" ")) for c in r] for r in rows]


# ---- PDF --------------------------------------------------------------------------------

def parse_pdf(path: Path, *, encoding: str | None = None) -> Document:
    """The text layer, page by page: paragraphs where pypdf leaves blank lines, else the
    page's text as one unit; ``page`` is 1-based. The title is the PDF's own, else the name."""
    from pypdf import PdfReader

    fix = "check that it opens in a PDF viewer; re-export it, or repair it (e.g. qpdf in.pdf out.pdf)"
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files: our error says it
    with open(path, "rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:  # pypdf would log its own guesses first; say it once
        raise KBError("is not a PDF (no %PDF- header in its first bytes)", file=str(path),
                      fix="check the file: give it its real extension, or re-export it as PDF")
    try:
        reader = PdfReader(path)
        encrypted = reader.is_encrypted
    except Exception as e:  # pypdf raises many kinds (PdfReadError, ValueError, KeyError...) on bad bytes
        raise _unreadable(path, "PDF", e, fix) from None
    if encrypted and not _opens_without_password(reader):
        raise KBError("is encrypted (password-protected), so its text cannot be read", file=str(path),
                      fix="remove the password (e.g. qpdf --decrypt --password=PASS in.pdf out.pdf) "
                          "and add it again")
    units = []
    try:
        for number, page in enumerate(reader.pages, 1):
            blocks = _BLANK_LINE.split(page.extract_text() or "")
            units += [Unit(_clean(b), page=number) for b in blocks if b.strip()]
        meta_title = reader.metadata.title if reader.metadata else None
    except Exception as e:  # same as above: a damaged page or object
        raise _unreadable(path, "PDF", e, fix) from None
    if not units:
        raise KBError("has no text layer (a scanned PDF?)", file=str(path),
                      fix="OCR it first (e.g. ocrmypdf in.pdf out.pdf) and add the result")
    return Document(_one_line(str(meta_title or "")) or _stem_title(path), units, format="pdf")


def _opens_without_password(reader) -> bool:
    """Many PDFs are encrypted with an empty user password (only printing or copying is
    restricted); those read fine."""
    from pypdf import PasswordType

    try:
        return reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except Exception:  # e.g. AES without the cryptography package: treat as locked
        return False


# ---- Word -------------------------------------------------------------------------------

def parse_docx(path: Path, *, encoding: str | None = None) -> Document:
    """Paragraphs and tables in document order. "Heading N" styles set the section; the
    title is the file's title property, else its "Title" paragraph, else the name."""
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        d = docx.Document(str(path))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as e:
        raise _unreadable(path, ".docx file", e, "open it in Word or LibreOffice and save it as .docx "
                                                 "(an old .doc must be converted)") from None
    outline, units = _Outline(_one_line(d.core_properties.title or "")), []
    for block in d.iter_inner_content():
        if isinstance(block, Table):
            units += _table_units((_docx_cells(r) for r in block.rows), outline.section)
        elif (level := _heading_level(block.style.name if block.style else "")) is not None:
            outline.heading(level, _one_line(block.text))
        else:
            units.append(Unit(_clean(block.text), outline.section))
    return Document(outline.title or _stem_title(path), units, format="docx")


def _heading_level(style: str) -> int | None:
    if style == "Title":
        return 0
    m = re.fullmatch(r"Heading ([1-9])", style)
    return int(m.group(1)) if m else None


def _docx_cells(row) -> list[str]:
    """A row's cell texts; a merged cell, which python-docx repeats per spanned column, once."""
    seen, out = [], []
    for cell in row.cells:
        if not any(cell._tc is tc for tc in seen):
            seen.append(cell._tc)
            out.append(_one_line(cell.text))
    return out


# ---- CSV and Excel ----------------------------------------------------------------------

def parse_csv(path: Path, *, encoding: str | None = None) -> Document:
    """One unit per row (``qa`` for a FAQ table, else ``row``); the delimiter is sniffed
    from , ; tab and |, except that .tsv is always tab-separated."""
    import csv
    import io

    text = read_text(path, encoding)
    if path.suffix.lower() == ".tsv":
        dialect = csv.excel_tab
    else:
        try:
            dialect = csv.Sniffer().sniff(text[:65536].rsplit("\n", 1)[0], delimiters=",;\t|")
        except csv.Error:  # one column, or too little to tell
            dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        rows = [[_clean(c) for c in row] for row in reader]
    except csv.Error as e:
        raise KBError(f"is not valid CSV ({e})", file=str(path), line=reader.line_num,
                      fix="check the quoting on that line, or re-export the file as CSV") from None
    return Document(_stem_title(path), _table_units(rows, ""), format="csv")


def parse_xlsx(path: Path, *, encoding: str | None = None) -> Document:
    """Each sheet like a CSV file, with the sheet name as the section; formulas give their
    last saved values."""
    import zipfile

    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError, OSError) as e:
        raise _unreadable(path, ".xlsx file", e, "open it in Excel or LibreOffice and save it as .xlsx "
                                                 "(an old .xls must be converted)") from None
    try:
        for ws in wb.worksheets:
            # read-only mode trusts the sheet's <dimension> tag, which some exporters write as "A1":
            # forget it and read every row there is
            ws.reset_dimensions()
        units = [u for ws in wb.worksheets
                 for u in _table_units(([_xlsx_cell(v) for v in row] for row in ws.iter_rows(values_only=True)),
                                       ws.title)]
        title = wb.properties.title
    finally:
        wb.close()  # read-only mode keeps the file open until closed
    return Document(title or _stem_title(path), units, format="xlsx")


def _xlsx_cell(value) -> str:
    """A cell as people read it: 3 not 3.0, a date without a midnight time."""
    import datetime as dt

    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time():
        return value.date().isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return _clean(str(value))


register_parser((".txt",), parse_txt)
register_parser((".md", ".markdown"), parse_markdown)
register_parser((".html", ".htm"), parse_html)
register_parser((".pdf",), parse_pdf)
register_parser((".docx",), parse_docx)
register_parser((".csv", ".tsv"), parse_csv)
register_parser((".xlsx",), parse_xlsx)
