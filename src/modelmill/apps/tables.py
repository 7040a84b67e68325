"""Business tables that workflows (and dialogue bots) look rows up in.

    tables = LookupTables(store)
    tables.add("hotels", "hotel_db.json")                      # JSON, JSONL or CSV: rows stored here
    tables.add("orders", sql="postgresql://ro@db/shop", sql_table="orders")   # read at query time
    tables.lookup("hotels", {"区域": "朝阳", "price": {"le": 500}}, limit=5)

A JSON file is a list of objects, or of ``[name, object]`` pairs (CrossWOZ's databases), or an
object of objects keyed by name. An SQL table is queried with bound parameters built from the
filter (never with text spliced into SQL), and only read.

A filter maps a column to a value (equal, compared as text without case; when the cell is a
list, one of its items must match) or to ``{op: value}`` with op one of eq, ne, lt, le, gt, ge
(numbers compared as numbers), contains, in. A value that is empty or None is left out of the
filter: a dialogue that has not yet heard a slot does not narrow on it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from modelmill.errors import ConflictError, InputError, NotFoundError

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "contains", "in")
_ROWS: dict = {}  # (home, table id, created) -> rows
MAX_BYTES = 64 * 1024 * 1024


def _num(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    text = str(v).strip()
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
        return None  # not "nan", "inf" or "1,2"
    return float(text)


def _text(v) -> str:
    return str(v).strip().casefold()


def _match(cell, op: str, want) -> bool:
    if isinstance(cell, list) and op in ("eq", "contains"):
        return any(_match(c, op, want) for c in cell)
    if op == "in":
        options = want if isinstance(want, list) else [x for x in str(want).split(",")]
        return any(_match(cell, "eq", o) for o in options)
    if cell is None:
        return op == "ne"
    if op in ("eq", "ne"):
        a, b = _num(cell), _num(want)
        same = a == b if a is not None and b is not None else _text(cell) == _text(want)
        return same if op == "eq" else not same
    if op == "contains":
        return _text(want) in _text(cell)
    a, b = _num(cell), _num(want)
    if a is None or b is None:
        return False
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def conditions(where: dict) -> list[tuple[str, str, object]]:
    """``where`` as (column, op, value), empty values left out; InputError on an unknown op."""
    out = []
    for col, spec in (where or {}).items():
        items = spec.items() if isinstance(spec, dict) else [("eq", spec)]
        for op, value in items:
            if op not in OPS:
                raise InputError(f"filter on '{col}' has operator '{op}'", field="where",
                                 fix=f"use one of {', '.join(OPS)}")
            if value is None or (isinstance(value, str) and not value.strip()) or value == []:
                continue
            out.append((str(col), op, value))
    return out


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSON, JSONL or CSV file; InputError naming the file and line of a bad row."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no file {path}", field="FILE")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"{path} is over {MAX_BYTES // 2**20} MB; a lookup table lives in memory",
                         field="FILE", fix="register it as an SQL table (--sql URL --sql-table NAME) instead")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    rows: list[dict] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise InputError("the CSV file has no header row", file=str(path), line=1,
                             fix="put the column names on the first line")
        for row in reader:
            if None in row:
                raise InputError(f"{len(row[None])} more cells than the header has columns", file=str(path),
                                 line=reader.line_num)
            rows.append({k: v for k, v in row.items()})
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InputError(f"not JSON ({e.args[0] if e.args else e})", file=str(path), line=n) from None
            if not isinstance(obj, dict):
                raise InputError(f"a row must be a JSON object, got {type(obj).__name__}", file=str(path), line=n)
            rows.append(obj)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"not JSON ({e.msg})", file=str(path), line=e.lineno) from None
        if isinstance(data, dict):
            data = [{"name": k, **v} if isinstance(v, dict) else None for k, v in data.items()]
        if not isinstance(data, list):
            raise InputError("a JSON table is a list of rows", file=str(path), line=1)
        for i, item in enumerate(data):
            if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):  # [name, {..}]
                item = {"name": item[0], **item[1]} if "name" not in item[1] and "名称" not in item[1] else item[1]
            if not isinstance(item, dict):
                raise InputError(f"row {i} is not an object (or a [name, object] pair)", file=str(path),
                                 fix="make every row a JSON object of column: value")
            rows.append(item)
    else:
        raise InputError(f"'{path.name}' is not .json, .jsonl or .csv", field="FILE",
                         fix="save the table as one of those, or register an SQL table with --sql")
    if not rows:
        raise InputError("the table has no rows", file=str(path))
    return rows


class LookupTables:
    def __init__(self, store):
        self.store = store

    def list(self) -> list:
        """Every table, without its stored rows (a table may hold megabytes)."""
        from sqlalchemy import select
        from sqlalchemy.orm import defer

        from modelmill.store.tables import LookupTable

        with self.store.session() as s:
            return list(s.scalars(select(LookupTable).options(defer(LookupTable.rows)).order_by(LookupTable.name)))

    def find(self, name: str):
        """The table named ``name`` (None when there is none), without its stored rows."""
        from sqlalchemy import select
        from sqlalchemy.orm import defer

        from modelmill.store.tables import LookupTable

        with self.store.session() as s:
            return s.scalar(select(LookupTable).options(defer(LookupTable.rows)).where(LookupTable.name == name))

    def get(self, name: str):
        row = self.find(name)
        if row is None:
            names = ", ".join(t.name for t in self.list()) or "none yet"
            raise NotFoundError(f"no lookup table named '{name}' (tables: {names})", field="table",
                                fix="add it with `modelmill apps table add NAME FILE`")
        return row

    def add(self, name: str, path: str | Path | None = None, *, sql: str | None = None,
            sql_table: str | None = None, source: str | None = None):
        """Register a table from a file (rows stored) or an SQL database's table (checked now, read per query).
        ``source``: what to record as the file's origin (default: its absolute path)."""
        from modelmill.names import check_name
        from modelmill.store.tables import LookupTable

        check_name(name, "NAME")
        if self.find(name) is not None:
            raise ConflictError(f"a lookup table named '{name}' exists", field="NAME",
                                fix=f"remove it first (`modelmill apps table remove {name}`) or pick another name")
        if (path is None) == (sql is None):
            raise InputError("give a FILE or --sql URL (with --sql-table), not both and not neither", field="FILE")
        if sql is not None:
            if not sql_table:
                raise InputError("an SQL table needs --sql-table NAME", field="--sql-table")
            columns = [c.name for c in self._reflect(sql, sql_table).columns]
            count = self._count(sql, sql_table)
            row = LookupTable(name=name, kind="sql", source=sql, sql_table=sql_table, columns=columns, rows=[],
                              row_count=count)
        else:
            rows = read_rows(Path(path))
            columns = list(dict.fromkeys(k for r in rows for k in r))
            row = LookupTable(name=name, kind="file", source=source or str(Path(path).resolve()), columns=columns,
                              rows=rows,
                              row_count=len(rows))
        with self.store.session() as s:
            s.add(row)
        return row

    def remove(self, name: str) -> None:
        from sqlalchemy import delete

        from modelmill.store.tables import LookupTable

        self.get(name)
        with self.store.session() as s:
            s.execute(delete(LookupTable).where(LookupTable.name == name))

    # -- queries

    def _rows(self, meta) -> list[dict]:
        """A file table's rows, read from the database once per process (a table never changes: a new
        one under the same name is a new row)."""
        from modelmill.store.tables import LookupTable

        key = (str(self.store.home), meta.id, meta.created_at)
        rows = _ROWS.get(key)
        if rows is None:
            with self.store.session() as s:
                rows = s.get(LookupTable, meta.id).rows
            _ROWS[key] = rows
            while len(_ROWS) > 16:
                _ROWS.pop(next(iter(_ROWS)))
        return rows

    def lookup(self, name: str, where: dict, limit: int = 5) -> tuple[list[dict], int]:
        """(up to ``limit`` matching rows, how many match in all)."""
        row = self.get(name)
        conds = conditions(where)
        for col, _, _ in conds:
            if col not in row.columns:
                raise InputError(f"table '{name}' has no column '{col}'", field="where",
                                 fix=f"columns: {', '.join(map(str, row.columns[:40]))}")
        if row.kind == "sql":
            return self._sql_lookup(row, conds, limit)
        hits = [r for r in self._rows(row) if all(_match(r.get(c), op, v) for c, op, v in conds)]
        return hits[:limit], len(hits)

    @staticmethod
    def _engine(url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            return create_engine(url)
        except (ArgumentError, NoSuchModuleError) as e:
            raise InputError(f"'{url}' is not a database URL SQLAlchemy can open ({e})", field="--sql",
                             fix="e.g. sqlite:////path/shop.db or postgresql://user@host/db") from None

    def _reflect(self, url: str, table: str):
        from sqlalchemy import MetaData, Table
        from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

        eng = self._engine(url)
        try:
            return Table(table, MetaData(), autoload_with=eng)
        except NoSuchTableError:
            raise NotFoundError(f"the database has no table '{table}'", field="--sql-table") from None
        except SQLAlchemyError as e:
            raise InputError(f"cannot read the database: {type(e).__name__}: {str(e).splitlines()[0]}",
                             field="--sql") from None
        finally:
            eng.dispose()

    def _count(self, url: str, table: str) -> int:
        from sqlalchemy import func, select

        t = self._reflect(url, table)
        eng = self._engine(url)
        try:
            with eng.connect() as c:
                return int(c.execute(select(func.count()).select_from(t)).scalar() or 0)
        finally:
            eng.dispose()

    def _sql_lookup(self, row, conds, limit: int) -> tuple[list[dict], int]:
        from sqlalchemy import and_, func, select
        from sqlalchemy.exc import SQLAlchemyError

        t = self._reflect(row.source, row.sql_table)
        clauses = []
        for col, op, v in conds:
            if col not in t.c:  # the table changed since it was registered
                raise InputError(f"table '{row.name}' has no column '{col}' any more", field="where",
                                 fix="register the table again to read its columns")
            clauses.append(_sql_clause(t.c[col], op, v))
        cond = and_(*clauses) if clauses else None
        eng = self._engine(row.source)
        try:
            with eng.connect() as c:
                q = select(t) if cond is None else select(t).where(cond)
                rows = [dict(r._mapping) for r in c.execute(q.limit(limit))]
                n = select(func.count()).select_from(t)
                total = int(c.execute(n if cond is None else n.where(cond)).scalar() or 0)
        except SQLAlchemyError as e:
            raise InputError(f"lookup in '{row.name}' failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                             field="where") from None
        finally:
            eng.dispose()
        return [{k: _plain(v) for k, v in r.items()} for r in rows], total


def _sql_clause(c, op: str, v):
    """One filter condition in SQL, meaning what it means on stored rows: text compared without case,
    numbers as numbers on a numeric column, a missing value (NULL) unequal to anything."""
    from sqlalchemy import Numeric, func, or_
    from sqlalchemy.types import Float, Integer

    numeric = isinstance(c.type, (Integer, Float, Numeric))

    def value(x):
        if numeric and _num(x) is not None:
            return _num(x)
        return str(x).strip().casefold()

    col = c if numeric else func.lower(c)
    if op == "in":
        return col.in_([value(x) for x in (v if isinstance(v, list) else str(v).split(","))])
    if op == "contains":
        return func.lower(c).contains(str(v).strip().casefold(), autoescape=True)
    if op == "ne":
        return or_(col != value(v), c.is_(None))
    return {"eq": col.__eq__, "lt": col.__lt__, "le": col.__le__, "gt": col.__gt__, "ge": col.__ge__}[op](value(v))


def _plain(v):
    """A database value as JSON holds it."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)
