"""Settings, read from the environment (``MODELMILL_*``) with defaults that work on a laptop.

    MODELMILL_HOME=/data/modelmill MODELMILL_DATABASE_URL=postgresql+psycopg://... modelmill models list
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELMILL_", extra="ignore")

    home: Path = Field(default=Path.home() / ".modelmill",
                       description="Folder holding the database, models, datasets, runs and adapters.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata database; default: SQLite file modelmill.db in home.")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'.")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'modelmill.db'}"


@lru_cache(maxsize=8)
def _settings_for(env_key: tuple) -> Settings:
    return Settings()


def get_settings() -> Settings:
    """Settings for the current environment (re-read when MODELMILL_* variables change)."""
    import os

    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("MODELMILL_")))
    s = _settings_for(key)
    s.home.mkdir(parents=True, exist_ok=True)
    return s
