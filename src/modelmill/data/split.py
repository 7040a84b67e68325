"""Split records into train and test sets, stratified by label for classification.

    train, test = split(records, test_size=0.1, seed=0, kind="classification")
"""

from __future__ import annotations

import math
import random

from modelmill.errors import InputError


def split(records: list[dict], *, test_size: float | int, seed: int = 0, stratify: bool = True,
          kind: str | None = None) -> tuple[list[dict], list[dict]]:
    """``(train, test)``; ``test_size`` is a fraction in (0, 1) or a count of records.

    Classification records (``kind="classification"``, or any records that all carry a
    ``label`` when ``kind`` is None) are split per label so that every label with two or
    more records lands on both sides where the test size allows. The same records and seed
    give the same split; both parts keep the input order.
    """
    n_test = _test_count(test_size, len(records))
    rng = random.Random(seed)
    by_label = kind == "classification" or (kind is None and all("label" in r for r in records))
    if stratify and by_label:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(r["label"], []).append(i)
        counts = _allocate({k: len(v) for k, v in sorted(groups.items())}, n_test)
        test_idx = set()
        for label, idx in sorted(groups.items()):
            test_idx.update(rng.sample(idx, counts[label]))
    else:
        test_idx = set(rng.sample(range(len(records)), n_test))
    train = [r for i, r in enumerate(records) if i not in test_idx]
    test = [r for i, r in enumerate(records) if i in test_idx]
    return train, test


def _test_count(test_size: float | int, n: int) -> int:
    """A float is a fraction of ``n``, an int a count."""
    fix = "use a fraction like 0.1, or a whole number of records smaller than the dataset"
    if n < 2:
        raise InputError(f"cannot split {n} record(s)", field="--test-size", fix="use at least 2 records")
    if isinstance(test_size, float):
        if not 0 < test_size < 1:
            raise InputError(f"fraction {test_size} is not between 0 and 1", field="--test-size", fix=fix)
        return min(n - 1, max(1, round(test_size * n)))
    if isinstance(test_size, bool) or not isinstance(test_size, int):
        raise InputError(f"expected a number, got {test_size!r}", field="--test-size", fix=fix)
    if not 1 <= test_size < n:
        raise InputError(f"{test_size} test records out of {n} leaves no training data" if test_size >= n
                         else f"must be at least 1, got {test_size}", field="--test-size", fix=fix)
    return test_size


def _allocate(sizes: dict[str, int], n_test: int) -> dict[str, int]:
    """Test records per label: proportional (largest remainder), at least one for each label
    with two or more records, and at least one left for training, as far as ``n_test`` allows."""
    total = sum(sizes.values())
    want = {k: n_test * s / total for k, s in sizes.items()}
    low = {k: 1 if s >= 2 else 0 for k, s in sizes.items()}
    high = {k: s - 1 if s >= 2 else s for k, s in sizes.items()}
    if sum(high.values()) < n_test:  # test too big to leave one of each for training
        high = dict(sizes)
    alloc = {k: min(high[k], max(low[k], math.floor(want[k]))) for k in sizes}
    while sum(alloc.values()) < n_test:  # add where most under the proportional share
        k = max((k for k in sizes if alloc[k] < high[k]), key=lambda k: want[k] - alloc[k])
        alloc[k] += 1
    while sum(alloc.values()) > n_test:  # too many labels for the test size: smallest give way
        k = max((k for k in sizes if alloc[k] > 0),
                key=lambda k: (alloc[k] > low[k], alloc[k] - want[k], -sizes[k]))
        alloc[k] -= 1
    return alloc
