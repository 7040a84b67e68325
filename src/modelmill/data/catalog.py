"""The dataset catalog: named datasets, each version a content hash, stored under MODELMILL_HOME.

    cat = DatasetCatalog(open_store())
    ds, created = cat.import_file("train.jsonl", "reviews")   # reviews@3f2a9c1b0d4e
    cat.resolve("reviews")            # current (newest saved) version; "reviews@3f2a9c1b0d4e" picks one
    cat.records(ds)                   # canonical records

Derived datasets (clean, split, mix) are saved the same way and remember their parents
in ``origin``, so lineage runs from an adapter back to the files it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from modelmill.data.load import content_hash, load_file, read_jsonl
from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.names import check_name
from modelmill.store import Store
from modelmill.store.tables import Adapter, DatasetVersion, utcnow

VERSION_LEN = 12


class DatasetCatalog:
    def __init__(self, store: Store):
        self.store = store

    def import_file(self, path: str | Path, name: str, format: str = "auto",
                    field_map: dict[str, str] | None = None, skip_invalid: bool = False,
                    source_name: str | None = None) -> tuple[DatasetVersion, bool, list]:
        """Validate and store a file. Returns (version, created, skipped records).

        ``source_name`` is what the lineage records as the file (an upload's own name, a file id),
        instead of the path it was read from."""
        check_name(name, "--name")
        loaded = load_file(path, format, field_map, skip_invalid=skip_invalid)
        origin = {"op": "import", "file": source_name or str(Path(path).resolve()), "format": loaded.format}
        if skipped := loaded.skipped:
            origin["skipped"] = len(skipped)
        if loaded.ignored:
            origin["ignored_fields"] = loaded.ignored
        row, created = self.save(name, loaded.records, loaded.kind, loaded.format, loaded.labels, origin)
        return row, created, loaded.skipped

    def save(self, name: str, records: list[dict], kind: str, format: str, labels: list[str] | None,
             origin: dict) -> tuple[DatasetVersion, bool]:
        """Store records as a version of ``name``; the same content twice is stored once. Saving the
        content of an older version makes that version the current one again (``created`` is False)."""
        check_name(name, "--name")
        if not records:
            raise InputError("no records to save", field="--name", fix="check the filters and ratios you gave")
        digest = content_hash(records)
        version = digest[:VERSION_LEN]
        # One writer per name across threads and processes: two saves of the same content must not
        # both write its folder (or one delete the other's as "left by a crash").
        with self.store.lock(f"dataset-{name}"):
            return self._save_locked(name, version, digest, records, kind, format, labels, origin)

    def _save_locked(self, name, version, digest, records, kind, format, labels, origin):
        from modelmill.data.load import write_jsonl_atomic

        with self.store.session() as s:
            existing = s.scalar(select(DatasetVersion).where(DatasetVersion.name == name,
                                                             DatasetVersion.version == version))
            if existing is not None:
                # A reverted file re-imported must be what NAME resolves to (the newest), as if new.
                current = s.scalar(select(DatasetVersion).where(DatasetVersion.name == name)
                                   .order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc()).limit(1))
                if current.id != existing.id:
                    existing.created_at = utcnow()
                return existing, False
        final = self.store.datasets_dir / name / version
        if final.exists():  # a folder left by a crash between rename and insert
            self.store.remove_tree(final)
        with self.store.staging(final) as tmp:
            write_jsonl_atomic(tmp / "data.jsonl", records)
            meta = {"name": name, "version": version, "content_hash": digest, "kind": kind, "format": format,
                    "labels": labels, "num_records": len(records), "origin": origin}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        row = DatasetVersion(name=name, version=version, content_hash=digest, format=format, kind=kind,
                             path=str(final / "data.jsonl"), num_records=len(records),
                             size_bytes=(final / "data.jsonl").stat().st_size, labels=labels, origin=origin)
        try:
            with self.store.session() as s:
                s.add(row)
        except BaseException:
            self.store.remove_tree(final)
            raise
        return row, True

    def resolve(self, ref: str, flag: str = "--data") -> DatasetVersion:
        """``NAME`` (newest version) or ``NAME@VERSION`` (a version prefix is enough)."""
        name, _, version = ref.partition("@")
        with self.store.session() as s:
            q = select(DatasetVersion).where(DatasetVersion.name == name)
            if version:
                q = q.where(DatasetVersion.version.startswith(version))
            rows = list(s.scalars(q.order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())))
        if not rows:
            names = sorted({r.name for r in self.list()})
            known = ", ".join(names) if names else "none yet"
            what = f"version '{version}' of dataset '{name}'" if version else f"dataset '{name}'"
            raise NotFoundError(f"unknown {what} (datasets: {known})", field=flag,
                                fix="see `modelmill data list`, or import one with `modelmill data import FILE --name NAME`")
        if version and len({r.version for r in rows}) > 1:
            raise InputError(f"version prefix '{version}' matches several versions of '{name}'", field=flag,
                             fix="give more characters of the version")
        return rows[0]

    def list(self, all_versions: bool = False) -> list[DatasetVersion]:
        with self.store.session() as s:
            rows = list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.name,
                                                                 DatasetVersion.created_at.desc(),
                                                                 DatasetVersion.id.desc())))
        if all_versions:
            return rows
        newest: dict[str, DatasetVersion] = {}
        for r in rows:
            newest.setdefault(r.name, r)
        return list(newest.values())

    def versions(self, name: str) -> list[DatasetVersion]:
        return [r for r in self.list(all_versions=True) if r.name == name]

    def records(self, row: DatasetVersion) -> list[dict]:
        return read_jsonl(row.path)

    def remove(self, ref: str) -> list[DatasetVersion]:
        """Remove a version (NAME@VERSION) or every version of NAME; refuses while adapters use them."""
        name, _, version = ref.partition("@")
        rows = [self.resolve(ref)] if version else self.versions(name)
        if not rows:
            self.resolve(ref)  # raises the not-found error
        with self.store.session() as s:
            users = list(s.scalars(select(Adapter.name).where(
                Adapter.dataset == name, Adapter.dataset_version.in_([r.version for r in rows]))))
        if users:
            raise ConflictError(f"dataset '{ref}' was used to train adapters: {', '.join(users)}", field="NAME",
                                fix="remove those adapters first, or keep the dataset for their lineage")
        with self.store.session() as s:
            for r in rows:
                s.delete(s.get(DatasetVersion, r.id))
        for r in rows:
            self.store.remove_tree(Path(r.path).parent)
        parent = self.store.datasets_dir / name
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
        return rows
