"""The shapes that move through the knowledge base: a parsed document, its units, its chunks.

    parse(path)  -> Document(title, units=[Unit(text, section, page, start, end), ...])
    chunk(doc)   -> [Chunk(text, title, section, page, start, end, ordinal), ...]

``start``/``end`` are character offsets into ``Document.text`` (the units joined by blank
lines), so a citation can point at the exact span of the extracted text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelmill.errors import InputError


class KBError(InputError):
    """A document or knowledge-base problem the user can fix (file, what, fix)."""


@dataclass
class Unit:
    """One structural piece of a document: a paragraph, a list item, a table or sheet row,
    a FAQ question/answer pair. Units are never merged across a ``section`` change."""

    text: str
    section: str = ""     # heading path, "Returns > Refunds"; sheet name for spreadsheets
    page: int | None = None  # 1-based page for PDF, else None
    kind: str = "text"    # text | heading | row | qa
    start: int = 0        # offsets into Document.text, set by Document.__post_init__
    end: int = 0


@dataclass
class Document:
    title: str
    units: list[Unit]
    source: str = ""       # the path as the user gave it
    format: str = ""       # txt | md | html | pdf | docx | csv | xlsx
    text: str = field(default="", init=False)

    def __post_init__(self):
        parts, pos = [], 0
        for u in self.units:
            if parts:
                pos += 2  # the "\n\n" joiner
            u.start, u.end = pos, pos + len(u.text)
            parts.append(u.text)
            pos = u.end
        self.text = "\n\n".join(parts)


@dataclass
class Chunk:
    text: str              # the chunk's own text, a span of Document.text
    title: str
    section: str
    page: int | None
    start: int
    end: int
    ordinal: int           # position in the document, 0-based

    @property
    def indexed_text(self) -> str:
        """What is embedded and BM25-indexed: the title and section first, so a chunk that
        never names the product still matches a question that does."""
        head = self.title + (f" > {self.section}" if self.section and self.section != self.title else "")
        return f"{head}\n{self.text}" if head else self.text
