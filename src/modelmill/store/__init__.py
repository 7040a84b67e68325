"""Metadata in SQL (SQLAlchemy; SQLite by default, PostgreSQL by URL) and the artifact folders.

    from modelmill.store import open_store
    store = open_store()            # MODELMILL_HOME / MODELMILL_DATABASE_URL
    store.models.list()
"""

from modelmill.store.db import Store, open_store

__all__ = ["Store", "open_store"]
