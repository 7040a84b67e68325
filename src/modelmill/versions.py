"""The library versions a result was made with, recorded in every lineage (adapters, merges,
evaluation results)."""

from __future__ import annotations

import sys


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("modelmill", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    out["python"] = sys.version.split()[0]
    return out
