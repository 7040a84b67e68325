"""The layering rule of DESIGN.md, checked on the source: every face (CLI, REST) calls the library,
no library package imports a face, and no lower package imports a higher one (kb does not import
serve or evaluate, serve does not import the platform app, evaluate uses training only through
its public calls)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "modelmill"
FACES = {"cli", "cli_eval", "cli_kb", "cli_platform", "cli_db", "cli_apps", "cli_bots", "api", "web"}
BOTTOM = {"config", "errors", "names", "text", "versions", "plugins", "schema", "store", "chat"}
# what each library package may import from modelmill besides itself and BOTTOM
ALLOWED = {
    "models": set(),
    "data": set(),
    "adapters": {"models"},
    "kb": {"models", "data"},
    "train": {"models", "data", "adapters", "kb"},
    "serve": {"models", "adapters"},
    "evaluate": {"models", "data", "adapters", "train.config", "train.methods", "train.runs"},
    "jobs": {"models", "data", "adapters", "train", "evaluate", "apps"},
    "apps": {"models", "data", "adapters", "kb", "serve", "evaluate"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module below modelmill.) of every modelmill import in ``path``, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                 else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        out += [(node.lineno, n.removeprefix("modelmill.")) for n in names if n.startswith("modelmill.")]
    return out


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_no_package_imports_a_face_or_a_higher_package():
    crossings = []
    for path in sorted(SRC.rglob("*.py")):
        pkg = package_of(path)
        if pkg in FACES or pkg.startswith("cli") or pkg == "__init__":  # a new cli_*.py is a face too
            continue
        allowed = ALLOWED.get(pkg)
        for line, mod in imports(path):
            top = mod.split(".")[0]
            if top == pkg:
                continue
            if pkg in BOTTOM:  # the bottom modules import only each other
                ok = top in BOTTOM
            else:
                ok = top in BOTTOM or allowed is not None and any(mod == a or mod.startswith(a + ".")
                                                                  for a in allowed)
            if not ok:
                crossings.append(f"{path.relative_to(SRC.parent)}:{line}: {pkg} imports modelmill.{mod}")
    assert not crossings, "\n".join(crossings)


def test_the_rule_catches_a_crossing(tmp_path):
    """The check above reads lazy imports inside functions too."""
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from modelmill.serve.router import Router\n    import modelmill.api.app\n")
    assert imports(bad) == [(2, "serve.router"), (3, "api.app")]
