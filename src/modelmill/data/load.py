"""Load a data file into canonical records, and write/read/hash canonical JSONL.

    data = load_file("reviews.csv", field_map={"review": "text", "rating": "label"})
    data.format, data.kind, len(data.records), data.labels
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from modelmill.errors import InputError
from modelmill.data.formats import Where, detect_format, get_format, labels_of
from modelmill.data.readers import iter_jsonl, read_records, record_columns, record_unit


@dataclass
class LoadedData:
    format: str
    """Name of the format the records were read as (e.g. "alpaca")."""
    kind: str
    """"chat", "preference", "feedback", "text" or "classification": the shape of ``records``."""
    records: list[dict]
    """Canonical records, in file order."""
    labels: list[str] | None
    """Distinct labels of classification data (``labels_of`` order), else None."""
    source: str
    """The file the records came from."""
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(position, error) of records left out with ``skip_invalid=True``."""
    ignored: dict[str, int] = field(default_factory=dict)
    """Fields the format does not read (kept under each record's ``meta``): name -> records holding it."""


def load_file(path: str | Path, format: str = "auto", field_map: dict[str, str] | None = None,
              *, skip_invalid: bool = False) -> LoadedData:
    """Read ``path`` and normalize every record to the canonical shape of its format's kind.

    ``field_map`` renames input fields first (``{"review": "text"}``). With ``format="auto"``
    the columns of a CSV, TSV or Parquet file decide the format (an empty cell does not hide
    its column), and for JSON(L) the first record with the fields ``field_map`` maps to; every
    other record must fit it. With ``skip_invalid`` records that do not fit are left out and
    listed in ``skipped`` instead of stopping the load.
    """
    path = Path(path)
    fmt = None if format == "auto" else get_format(format)
    unit = record_unit(path)
    records, skipped = [], []
    items = read_records(path)
    if skip_invalid and path.suffix.lower() == ".jsonl":  # a line that is not JSON is skipped too, not fatal
        from modelmill.data.readers import jsonl_items

        items = jsonl_items(path)
    header = record_columns(path)
    if field_map:
        if header is None:  # JSON(L): a mapped column has to be in some record, not in the first
            items = list(items)
            columns = {k for _, raw in items if isinstance(raw, dict) for k in raw}
        _check_field_map(field_map, path, header if header is not None else columns, header is not None)
    if fmt is None and header:
        fmt = detect_format(_rename(dict.fromkeys(header, ""), field_map or {}),
                            Where(str(path), 1 if unit == "line" else None))
    spelled: dict[str, tuple[str, int | None]] = {}
    for n, raw in items:
        if isinstance(raw, InputError):
            skipped.append((n, str(raw)))
            continue
        where = Where(str(path), n, unit)
        if field_map:
            raw = _rename(raw, field_map)
        try:
            # the fields named by --field count as present: mapping a column says the format has it
            fmt = fmt or detect_format({**dict.fromkeys((field_map or {}).values(), ""), **raw}, where)
            record = fmt.normalize(raw, where)
            if fmt.kind == "classification":  # "Pos" beside "pos" would be two classes, silently
                first, line = spelled.setdefault(record["label"].casefold(), (record["label"], where.n))
                if first != record["label"]:
                    raise where.error("label", f"'{record['label']}' differs from '{first}' ({where.unit} {line}) "
                                      "only in case", fix="write each label the same way in every record")
            records.append(record)
        except InputError as e:
            if not skip_invalid or fmt is None:
                raise
            skipped.append((n, str(e)))
    if not records and not skipped:
        raise InputError("no records", file=str(path),
                         fix="add at least one record, or check that you chose the right file")
    if not records:
        raise InputError(f"no valid records ({len(skipped)} skipped, the first: {skipped[0][1]})",
                         file=str(path), fix="check that the file is in the format you named")
    labels = labels_of(records) if fmt.kind == "classification" else None
    ignored: dict[str, int] = {}
    for r in records:
        for k in r.get("meta") or {}:
            ignored[k] = ignored.get(k, 0) + 1
    return LoadedData(fmt.name, fmt.kind, records, labels, str(path), skipped, ignored)


def ignored_note(row) -> str | None:
    """What an import of the dataset version ``row`` says about fields its format does not train on
    (None when there are none)."""
    ignored = (row.origin or {}).get("ignored_fields") or {}
    if not ignored:
        return None
    format, kind = row.format, row.kind
    fields = ", ".join(f"'{k}' ({n} of {row.num_records} records)" for k, n in sorted(ignored.items(), key=lambda x: -x[1]))
    reads = {"text": "'text'", "classification": "'text' and 'label'", "preference": "the prompt and the two answers",
             "feedback": "the prompt, the answer and its label",
             "chat": "the conversation"}.get(kind, "its own fields")
    note = (f"the {format} format reads {reads}; these fields are kept as metadata and not trained on: {fields}")
    if kind == "text":
        note += (". To teach a model to answer with them (extraction, say), import instruction records instead: "
                 '{"instruction": "...", "input": TEXT, "output": "{\\"field\\": ...}"} (alpaca), '
                 "or name the columns with --field COLUMN=FIELD")
    return note


def _rename(record: dict, field_map: dict[str, str]) -> dict:
    out = {k: v for k, v in record.items() if k not in field_map}
    out.update({new: record[old] for old, new in field_map.items() if old in record})
    return out


def _check_field_map(field_map: dict[str, str], path: Path, columns, header: bool) -> None:
    """Names only, and every mapped column among the file's ``columns`` (its header, or all records' keys)."""
    for old, new in field_map.items():
        if not (isinstance(old, str) and isinstance(new, str)):
            raise InputError(f"expected names, got {old!r} -> {new!r}", field="--field",
                             fix="map input column names to format field names, e.g. review=text")
        if old not in columns and new not in columns:
            where = "not in the header" if header else "in no record"
            raise InputError(f"column '{old}' is {where} (the file has: {', '.join(sorted(columns))})",
                             file=str(path), line=1 if header else None, field="--field",
                             fix="map a column the file has")


def _line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(records: Iterable[dict]) -> str:
    """sha256 hex of the records as canonical JSON lines: equal content, equal hash."""
    h = hashlib.sha256()
    for r in records:
        h.update(_line(r).encode("utf-8") + b"\n")
    return h.hexdigest()


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> Path:
    """Write canonical JSON lines to ``path`` through a temp file and a rename, so a reader
    never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(_line(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file (an empty file gives ``[]``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=str(path), fix="check the path")
    return [r for _, r in iter_jsonl(path)]
