"""Errors a new operator met, each once a traceback or a misleading hint: a damaged database,
wrong-field and UTF-16 imports, a fake PDF, an empty folder. Each is now one line that says what,
where, and what to do; and the database can be checked, backed up online and restored."""

from __future__ import annotations

import json
import os
import random
import sqlite3

from conftest import write_jsonl


def _one_error_line(p) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_a_damaged_database_is_one_line_and_a_backup_brings_it_back(cli, home, tmp_path):
    cli("data", "import", write_jsonl(tmp_path / "a.jsonl", [{"text": f"t{i}", "label": "x"} for i in range(5)]),
        "--name", "kept")
    assert cli("db", "check").stdout.strip().endswith(": ok")
    out = cli("db", "backup").stdout
    backup = out.split("backed up to ", 1)[1].split(" (", 1)[0]
    assert os.path.isfile(backup) and str(home / "backups") in backup
    db = home / "modelmill.db"
    with sqlite3.connect(db) as con:  # the WAL folded into the file, so the damage below hits real pages
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # 16 garbage bytes over the header: every command says so in one line, exit 5
    with open(db, "r+b") as f:
        f.write(b"\x13" * 16)
    p = cli("data", "list", ok=False)
    assert p.returncode == 5
    line = _one_error_line(p)
    assert str(db) in line and "damaged" in line and "modelmill db restore" in line
    p = cli("db", "check", ok=False)
    assert p.returncode == 5 and "not a database" in p.stdout
    p = cli("db", "backup", ok=False)  # a damaged file is not copied as if it were a backup
    assert p.returncode == 5
    # restore: the damaged file is kept aside, the backup's data is back
    out = cli("db", "restore", backup).stdout
    assert "kept as" in out and list(home.glob("modelmill.db.replaced-*"))
    assert "kept" in cli("data", "list").stdout

    # random pages overwritten (not the header): still one line, from whichever command meets them
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = con.execute("PRAGMA page_size").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
    rng = random.Random(7)
    with open(db, "r+b") as f:
        for n in rng.sample(range(1, pages), min(pages - 1, 12)):
            f.seek(n * page)
            f.write(bytes(rng.randrange(256) for _ in range(page)))
    p = cli("db", "check", ok=False)
    assert p.returncode == 5 and p.stdout.strip()
    for args in (["data", "list"], ["models", "list"], ["adapters", "list"]):
        p = cli(*args, ok=None)
        if p.returncode != 0:  # a command whose pages were hit: one line, never a traceback
            line = _one_error_line(p)
            assert "damaged" in line, line


def test_import_hints_name_the_real_option_and_the_real_encoding(cli, tmp_path):
    p = cli("data", "import", write_jsonl(tmp_path / "w.jsonl", [{"review": "good", "stars": 5}]), "--name", "w",
            ok=False)
    line = _one_error_line(p)
    assert "--field COLUMN=FIELD" in line and "--field-map" not in line
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_text(json.dumps({"text": "你好", "label": "ok"}) + "\n", encoding="utf-16")  # BOM + UTF-16LE
    line = _one_error_line(cli("data", "import", utf16, "--name", "u", ok=False))
    assert "UTF-16" in line and "iconv -f UTF-16LE -t UTF-8" in line and "GBK" not in line and "0xff" not in line


def test_kb_add_says_one_thing_about_a_fake_pdf_and_an_empty_folder(cli, tmp_path):
    cli("kb", "create", "docs")
    fake = tmp_path / "report.pdf"
    fake.write_text("this is plain text with a .pdf name\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.bin").write_bytes(b"\x00\x01")
    p = cli("kb", "add", "docs", fake, empty, ok=None)
    text = p.stdout + p.stderr
    assert "not a PDF" in text and "pypdf" not in text.lower(), text
    folder_line = next(ln for ln in text.splitlines() if "folder has no" in ln)
    assert "Fix:" in folder_line, folder_line


STARTS_AN_ENGINE = r"""
import asyncio, sys, threading

main = threading.main_thread()
on_loop = []


def hook(event, args):
    if event == "import" and threading.current_thread() is main and args[0].split(".")[0] in ("torch", "transformers"):
        on_loop.append(args[0])


from modelmill.serve.router import Router, ServeConfig

assert "torch" not in sys.modules, "the serving app must start without torch"
sys.addaudithook(hook)


async def start():
    router = Router(None, ServeConfig(max_batch_size=2))
    folder = sys.argv[1]
    eng = await router._start("tiny", {"name": "tiny", "path": folder, "tokenizer_path": folder})
    await router.shutdown()
    return eng.name


print(asyncio.run(start()), sorted(set(on_loop))[:5])
"""


def test_starting_an_engine_imports_nothing_heavy_on_the_event_loop(tiny_model, tmp_path):
    """The first request for a model started its engine on the event loop, importing torch and
    transformers there: /health waited 2-3 s on a slow host. The import now runs in a thread."""
    import subprocess
    import sys

    script = tmp_path / "start.py"
    script.write_text(STARTS_AN_ENGINE)
    p = subprocess.run([sys.executable, str(script), str(tiny_model)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "transformers" and p.stdout.strip().endswith("[]"), p.stdout
