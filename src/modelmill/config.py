"""Settings, read from the environment (``MODELMILL_*``) with defaults that work on a laptop.

    MODELMILL_HOME=/data/modelmill MODELMILL_DATABASE_URL=postgresql+psycopg://... modelmill models list
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELMILL_", extra="ignore")

    home: Path = Field(default=Path.home() / ".modelmill",
                       description="Folder holding the database, models, datasets, runs and adapters.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata database; default: SQLite file modelmill.db in home.")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'.")
    db_timeout: float = Field(default=30.0, description="Seconds to wait for a SQLite database locked by another "
                                                         "process before giving up (the API then answers 503).")
    max_upload_mb: float = Field(default=512, description="Largest file the API accepts in one upload, in MiB.")
    max_body_mb: float = Field(default=8, description="Largest request body the API reads for any other route "
                                                      "(chat, completions, JSON calls), in MiB; larger ones get 413.")

    @field_validator("home", "database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, v, info):
        """MODELMILL_HOME= (set but empty, as a script's unset variable expands) means the default, not the
        current directory (which would scatter a store wherever the command ran)."""
        if isinstance(v, str) and not v.strip():
            return Path.home() / ".modelmill" if info.field_name == "home" else None
        return v

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


def read_yaml_mapping(path, flag: str, what: str = "settings"):
    """The mapping in a YAML file; a missing file, bad YAML (with its line) or a non-mapping is an
    InputError that names the file and, through ``flag``, the option that gave it."""
    import yaml

    from modelmill.errors import InputError

    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such file", file=str(path), field=flag, fix="give a YAML file path")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"not valid YAML ({getattr(e, 'problem', e)})", file=str(path),
                         line=mark.line + 1 if mark else None, fix="check the indentation and colons")
    if loaded is None:  # an empty file: no settings
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"expected a mapping of {what}", file=str(path), fix="write one `key: value` a line")
    return loaded
