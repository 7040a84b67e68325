"""The process's OpenMP thread count, read before any helper thread lowers it.

A thread starts with the OpenMP thread count the last ``torch.set_num_threads`` of any thread
left. The adapter loader and the embeddings thread set 1 for themselves (a second multi-threaded
pool beside an engine's slows every engine step), so a thread created after either, such as an
engine started later, would run on one core. Each of them reads :func:`default_threads` before
creating its thread, and each engine thread sets that count for itself.
"""

from __future__ import annotations

_DEFAULT: int | None = None


def default_threads() -> int:
    """The thread count of the first thread that asked (before any helper thread existed)."""
    global _DEFAULT
    if _DEFAULT is None:
        import torch

        _DEFAULT = torch.get_num_threads()
    return _DEFAULT
