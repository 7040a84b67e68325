"""The store: Alembic migrations match the tables, writes are atomic, and the same commands
work on PostgreSQL (a throwaway server started here, as users run it)."""

from __future__ import annotations


import pytest

from modelmill.store.db import MIGRATIONS
from conftest import CLI, postgres_server


def test_migrations_match_the_tables(home):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from modelmill.store import open_store
    from modelmill.store.tables import Base

    store = open_store()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"tables changed without a migration: {diff}"


def test_staging_is_all_or_nothing(home):
    from modelmill.store import open_store

    store = open_store()
    final = store.home / "adapters" / "x"
    with pytest.raises(RuntimeError):
        with store.staging(final) as tmp:
            (tmp / "half.bin").write_bytes(b"1")
            raise RuntimeError("boom")
    assert not final.exists() and not list((store.home / "tmp").iterdir())
    with store.staging(final) as tmp:
        (tmp / "whole.bin").write_bytes(b"1")
    assert (final / "whole.bin").is_file()


def test_failed_insert_leaves_no_dataset_folder(home, monkeypatch):
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.store import open_store

    store = open_store()
    cat = DatasetCatalog(store)

    def broken_session():
        raise RuntimeError("database went away")

    rec = [{"text": "a", "label": "x", "meta": {}}]
    monkeypatch.setattr(store, "session", broken_session)
    with pytest.raises(RuntimeError):
        cat.save("d", rec, "classification", "classification", ["x"], {})
    assert not (store.datasets_dir / "d").exists() or not any((store.datasets_dir / "d").iterdir())


@pytest.fixture()
def postgres_url():
    """A real PostgreSQL server on a free localhost port, removed afterwards."""
    with postgres_server() as url:
        yield url


def test_postgres_by_url(postgres_url, home, tiny_model, reviews_file, monkeypatch):
    monkeypatch.setenv("MODELMILL_DATABASE_URL", postgres_url)
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    cli("data", "import", reviews_file, "--name", "reviews")
    cli("train", "--base", "tiny", "--data", "reviews", "--name", "pg-lora", "--max-steps", "2", "--batch-size", "4")
    assert "pg-lora" in cli("adapters", "list").stdout
    assert not (home / "modelmill.db").exists(), "metadata went to PostgreSQL, not SQLite"
    import sqlalchemy as sa

    with sa.create_engine(postgres_url).connect() as conn:
        assert conn.execute(sa.text("select name from adapters")).scalar() == "pg-lora"
        head = sorted(p.name.split("_")[0] for p in (MIGRATIONS / "versions").glob("0*.py"))[-1]
        assert conn.execute(sa.text("select version_num from alembic_version")).scalar() == head
        # the knowledge-base tables are there too (migration 0003)
        assert conn.execute(sa.text("select count(*) from knowledge_bases")).scalar() == 0


def test_an_empty_home_setting_means_the_default_not_the_current_folder(monkeypatch, tmp_path):
    """`MODELMILL_HOME=$UNSET_VAR modelmill ...` must not make a store in whatever folder the command ran in."""
    from pathlib import Path

    from modelmill.config import get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("MODELMILL_HOME", "")
    monkeypatch.setenv("MODELMILL_DATABASE_URL", " ")
    s = get_settings()
    assert s.home == Path.home() / ".modelmill" != Path(".").resolve()
    assert s.db_url == f"sqlite:///{Path.home() / '.modelmill' / 'modelmill.db'}"
