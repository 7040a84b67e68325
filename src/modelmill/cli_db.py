"""The metadata database's commands: check, backup, restore.

    modelmill db check
    modelmill db backup                      # into $MODELMILL_HOME/backups/
    modelmill db restore ~/.modelmill/backups/modelmill-20261201T120000Z.db
"""

from __future__ import annotations

from pathlib import Path

import click

from modelmill.cli import Group, main


def _path() -> Path:
    from modelmill.config import get_settings
    from modelmill.store.backup import sqlite_file

    return sqlite_file(get_settings().db_url)


@main.group(cls=Group)
def db():
    """The metadata database: check it, back it up, restore a backup (SQLite)."""


@db.command("check")
def db_check():
    """Check the database file (SQLite's integrity check); exit 5 when it is damaged."""
    from modelmill.store.backup import DatabaseDamaged, check

    path = _path()
    problems = check(path)
    if problems:
        for p in problems[:50]:
            click.echo(p)
        raise DatabaseDamaged(f"the metadata database is damaged ({len(problems)} problem(s) above)", file=str(path),
                              fix="restore a backup with `modelmill db restore FILE`")
    click.echo(f"{path}: ok")


@db.command("backup")
@click.argument("dest", required=False, type=click.Path(dir_okay=False, path_type=Path))
def db_backup(dest):
    """Copy the database while everything keeps running (default: into MODELMILL_HOME/backups/)."""
    from modelmill.store.backup import backup

    out = backup(_path(), dest)
    click.echo(f"backed up to {out} ({out.stat().st_size / 2**20:.1f} MiB, integrity ok)")


@db.command("restore")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def db_restore(source):
    """Put a backup in place of the database. Stop `modelmill up`, servers and workers first."""
    from modelmill.store.backup import restore

    aside = restore(_path(), source)
    click.echo(f"restored {source}" + (f"; the file it replaced is kept as {aside}" if aside else ""))
