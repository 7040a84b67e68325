"""Read records from .jsonl, .json, .csv/.tsv and .parquet files, with their positions.

    for n, record in read_records("train.jsonl"): ...

``n`` is the 1-based line for JSONL and CSV, and the 1-based record index for JSON
arrays and Parquet (see ``record_unit``). Every problem is an ``InputError`` that names
the file and the position.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import InputError
from modelmill.data.formats.base import Where, type_name

UTF8_FIX = ("convert the file to UTF-8, e.g. `iconv -f GBK -t UTF-8 in.jsonl > out.jsonl`, "
            "or re-save it as UTF-8 in your editor")


@dataclass(frozen=True)
class Reader:
    read: Callable[[Path], Iterator[tuple[int, dict]]]
    unit: str  # "line" or "record": what the position counts
    columns: Callable[[Path], list[str]] | None = None  # tabular files: the column names every record has


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(position, record)`` for each record; raise ``InputError`` on bad input.

    A wrong extension or a missing file is reported at once, the rest while reading.
    """
    path = Path(path)
    reader = _reader_for(path)
    if not path.is_file():
        raise InputError("file not found" if not path.exists() else "is not a file", file=str(path),
                         fix="check the path")
    return _nonempty(reader.read(path), path)


def _nonempty(items: Iterator[tuple[int, dict]], path: Path) -> Iterator[tuple[int, dict]]:
    count = 0
    for item in items:
        count += 1
        yield item
    if count == 0:
        raise InputError("no records", file=str(path),
                         fix="add at least one record, or check that you chose the right file")


def record_unit(path: str | Path) -> str:
    """"line" or "record": what the positions from ``read_records(path)`` count."""
    return _reader_for(Path(path)).unit


def record_columns(path: str | Path) -> list[str] | None:
    """The columns of a tabular file (CSV, TSV, Parquet), from its header or schema; None for
    JSON and JSONL, whose records each name their own fields."""
    path = Path(path)
    columns = _reader_for(path).columns
    return columns(path) if columns is not None and path.is_file() else None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """JSON Lines: one object a line; blank lines are skipped."""
    for n, item in jsonl_items(path):
        if isinstance(item, InputError):
            raise item
        yield n, item


def jsonl_items(path: Path) -> Iterator[tuple[int, "dict | InputError"]]:
    """Each non-blank line as its object, or as the error that says why it is not one (to list them all)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = _decode(raw, path, n)
            except InputError as e:
                yield n, e
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, InputError(f"not valid JSON: {e.msg} (column {e.colno})", file=str(path), line=n,
                                    fix="write one complete JSON object per line; check quotes, commas "
                                        "and brackets on this line")
                continue
            except (RecursionError, ValueError) as e:  # nested too deep; an integer of thousands of digits
                yield n, InputError(f"JSON this reader refuses: {str(e)[:120]}", file=str(path), line=n,
                                    fix="keep records shallow and numbers of ordinary size")
                continue
            if not _utf8_safe(text, record):
                yield n, InputError("a string holds a lone UTF-16 surrogate (an escape like \\ud800), which is "
                                    "not text", file=str(path), line=n, fix="remove or repair that escape")
                continue
            if not isinstance(record, dict):
                fix = 'write each line as an object like {"text": "..."}'
                if isinstance(record, list) and record and all(isinstance(r, dict) for r in record):
                    fix = "this line is a JSON array of records: rename the file to .json"
                yield n, InputError(f"expected a JSON object, got {type_name(record)}", file=str(path), line=n,
                                    fix=fix)
                continue
            yield n, record


def _utf8_safe(text: str, record) -> bool:
    """False when a decoded string has a lone surrogate (only an escape can put one there)."""
    if "\\u" not in text:
        return True
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _read_json(path: Path) -> Iterator[tuple[int, dict]]:
    """A JSON array of objects, or an object with the array under "data"."""
    text = _decode(path.read_bytes(), path, 1)
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        fix = "fix the JSON syntax at that spot"
        if e.msg == "Extra data":
            fix = "if the file has one JSON object per line, rename it to .jsonl"
        raise InputError(f"not valid JSON: {e.msg} (column {e.colno})", file=str(path), line=e.lineno,
                         fix=fix) from None
    except (RecursionError, ValueError) as e:
        raise InputError(f"JSON this reader refuses: {str(e)[:120]}", file=str(path),
                         fix="keep records shallow and numbers of ordinary size") from None
    if not _utf8_safe(text, data):
        raise InputError("a string holds a lone UTF-16 surrogate (an escape like \\ud800), which is not text",
                         file=str(path), fix="remove or repair that escape")
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise InputError(f"expected a list of records, got {type_name(data)}", file=str(path),
                         fix='write a JSON array [{...}, {...}] or {"data": [{...}, ...]}')
    for i, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise Where(str(path), i, "record").error(
                None, f"expected a JSON object, got {type_name(record)}",
                fix="make every element of the array an object")
        yield i, record


# CSV quotes cells ("a, b"; strict: a stray quote is an error, not a cell that swallows the next
# lines); TSV has no quoting convention, so its quotes are text. Both skip spaces after a delimiter
# ("text, label"). Cells may be as long as a JSONL line may be.
_DIALECTS = {",": dict(delimiter=",", strict=True, skipinitialspace=True),
             "\t": dict(delimiter="\t", quoting=csv.QUOTE_NONE, skipinitialspace=True)}
_FIELD_LIMIT = 2**31 - 1


def _csv_reader(delimiter: str) -> Callable[[Path], Iterator[tuple[int, dict]]]:
    def read(path: Path) -> Iterator[tuple[int, dict]]:
        header = None
        for start, row in _csv_rows(path, delimiter):
            if header is None:
                header = _header(row, path, start)
                continue
            if len(row) > len(header):
                raise InputError(f"{len(row)} cells but the header has {len(header)}", file=str(path), line=start,
                                 fix="quote cells that contain the delimiter, or name every column")
            record = {k: v for k, v in zip(header, row) if v != ""}  # empty cell = absent
            if record:
                yield start, record
    return read


def _header(row: list[str], path: Path, line: int) -> list[str]:
    header = [h.strip() for h in row]
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        raise InputError(f"column '{repeated[0]}' appears more than once in the header", file=str(path), line=line,
                         fix="rename one of them: each column needs its own name")
    return header


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(line the row starts on, cells)`` of each non-blank row; a CSV error (a stray quote) names
    the line its row started on."""
    # Decode up front (utf-8-sig drops Excel's BOM) so a bad byte gets its line number.
    text = _decode(path.read_bytes(), path, 1)
    reader = csv.reader(io.StringIO(text, newline=""), **_DIALECTS[delimiter])
    csv.field_size_limit(_FIELD_LIMIT)
    while True:
        start = reader.line_num + 1  # a quoted cell may span lines
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"not readable as CSV: {e}", file=str(path), line=start,
                             fix="check the quotes in the row that starts here: a quote that opens a cell must "
                                 "close it, and a quote inside a quoted cell is written twice (\"\")") from None
        if row:
            yield start, row


def _csv_columns(delimiter: str) -> Callable[[Path], list[str]]:
    def columns(path: Path) -> list[str]:
        line, row = next(_csv_rows(path, delimiter), (1, []))
        return _header(row, path, line)
    return columns


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged or non-Parquet file
        raise InputError(f"not a readable Parquet file ({e})", file=str(path),
                         fix="re-export the file as Parquet, or use JSONL or CSV") from None


def _parquet_columns(path: Path) -> list[str]:
    return list(_parquet_file(path).schema_arrow.names)


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    i = 0
    for batch in _parquet_file(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            i += 1
            yield i, {k: v for k, v in row.items() if v is not None}


READERS: dict[str, Reader] = {
    ".jsonl": Reader(iter_jsonl, "line"),
    ".json": Reader(_read_json, "record"),
    ".csv": Reader(_csv_reader(","), "line", _csv_columns(",")),
    ".tsv": Reader(_csv_reader("\t"), "line", _csv_columns("\t")),
    ".parquet": Reader(_read_parquet, "record", _parquet_columns),
}


def _reader_for(path: Path) -> Reader:
    ext = path.suffix.lower()
    if ext not in READERS:
        raise InputError(f"unsupported file type '{ext or path.name}'", file=str(path),
                         fix="use one of: " + ", ".join(READERS))
    return READERS[ext]


_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"), (b"\xff\xfe", "UTF-16LE"),
         (b"\xfe\xff", "UTF-16BE"))


def _decode(raw: bytes, path: Path, first_line: int) -> str:
    """UTF-8 text of ``raw`` (which starts at ``first_line``); on a bad byte, name its line."""
    if first_line == 1:
        enc = next((name for bom, name in _BOMS if raw.startswith(bom)), None)
        if enc is not None:  # Windows tools save "Unicode" text this way; its bytes are not a stray 0xff
            raise InputError(f"the file is {enc[:-2]} text ({enc[-2:]}, it starts with that byte-order mark), not "
                             "UTF-8", file=str(path), line=1,
                             fix=f"convert it: `iconv -f {enc} -t UTF-8 {path.name} > {path.stem}-utf8{path.suffix}`"
                                 ", or re-save it as UTF-8 in your editor")
    try:
        return raw.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw[:e.start].count(b"\n")
        raise InputError(f"not UTF-8 text: byte 0x{raw[e.start]:02x} cannot be decoded", file=str(path),
                         line=line, fix=UTF8_FIX) from None
