"""Score several models (bases and adapters) on one classification dataset, side by side.

    modelmill eval --data drugs-test --models smollm2-135m-instruct,drugs-lora --limit 200

The first slice of the benchmark system: every candidate sees the same records, prompt and
label set as training used, and is scored by label log-likelihood.
"""

from __future__ import annotations

import time

from modelmill.errors import InputError
from modelmill.store import Store


def compare_classification(store: Store, data_ref: str, models: list[str], *, limit: int | None = None,
                           batch_size: int = 16, device: str = "auto", progress: bool = True) -> list[dict]:
    """One result per model: {"model", "metrics", "seconds", "records"}."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.evaluate.classification import classification_metrics, score_labels
    from modelmill.models.loading import load_for_inference

    if not models:
        raise InputError("no models named", field="--models", fix="e.g. --models smollm2-135m-instruct,my-adapter")
    cat = DatasetCatalog(store)
    ds = cat.resolve(data_ref)
    if ds.kind != "classification":
        raise InputError(f"dataset '{ds.ref}' holds {ds.kind} records; this command scores classification data",
                         field="--data", fix="give a dataset imported as classification (text + label)")
    records = cat.records(ds)[:limit] if limit else cat.records(ds)
    labels = list(ds.labels or [])
    results = []
    for ref in models:
        model, tokenizer, label = load_for_inference(store, ref, device)
        t0 = time.perf_counter()
        rows = score_labels(model, tokenizer, records, labels, batch_size=batch_size, progress=progress)
        seconds = time.perf_counter() - t0
        metrics = classification_metrics([r["gold"] for r in rows], [r["pred"] for r in rows], labels)
        results.append({"model": label, "metrics": metrics, "seconds": seconds, "records": len(records),
                        "dataset": ds.ref})
        del model
    return results
