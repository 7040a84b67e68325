"""Plugins: a package extends modelmill by naming a module under an entry point group
(``modelmill.formats``, ``modelmill.engines``); importing that module registers what it adds."""

from __future__ import annotations

_loaded: set[str] = set()


def load_plugins(group: str) -> None:
    """Import the modules named by the ``group`` entry points, once per process."""
    if group in _loaded:
        return
    _loaded.add(group)
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        ep.load()
