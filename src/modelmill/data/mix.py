"""Mix several datasets into one chat dataset by ratio.

    mixed = mix([("domain", domain_records, "classification", 0.7),
                 ("general", chat_records, "chat", 0.3)], size=10_000, seed=0)
    mixed.warnings  # e.g. a source too small for its share, so its records repeat

Each output record is ``{"messages": [...], "meta": {..., "source": name}}``.
"""

from __future__ import annotations

import logging
import math
import random

from modelmill.errors import InputError
from modelmill.data.formats import labels_of, to_messages

log = logging.getLogger(__name__)
MIXABLE = ("chat", "classification")


class MixResult(list):
    """The mixed records (a list), plus ``warnings`` for the person running the mix."""

    def __init__(self, records: list[dict], warnings: list[str]):
        super().__init__(records)
        self.warnings = warnings


def mix(sources: list[tuple[str, list[dict], str, float]], *, size: int | None = None,
        seed: int = 0) -> MixResult:
    """Sample each source ``(name, records, kind, ratio)`` by its share of the ratios.

    Without ``size``: the largest mix in which no record repeats. With ``size``: exactly
    ``size`` records; a source too small for its share repeats records (see ``warnings``).
    """
    if not sources:
        raise InputError("no sources to mix", field="--source", fix="name at least one dataset")
    for name, records, kind, ratio in sources:
        if kind not in MIXABLE:
            raise InputError(f"source '{name}' is {kind} data, which cannot be mixed into chat data",
                             field="--source", fix="mix only chat and classification datasets")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < math.inf:
            raise InputError(f"source '{name}': ratio must be a finite number > 0, got {ratio!r}", field="--ratio",
                             fix="give each source a positive weight, e.g. 0.7 and 0.3")
        if not records:
            raise InputError(f"source '{name}' has no records", field="--source", fix="drop it from the mix")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InputError(f"must be a whole number >= 1, got {size!r}", field="--size",
                         fix="leave it out to use as many records as the ratios allow")
    total = sum(s[3] for s in sources)
    shares = [s[3] / total for s in sources]
    if size is None:  # the biggest N where every source has ratio * N distinct records
        size = max(1, math.floor(min(len(s[1]) / p for s, p in zip(sources, shares)) + 1e-9))
    counts = _apportion(size, shares)
    for (name, *_), count in zip(sources, counts):
        if count == 0:  # leaving it out silently would not be the mix asked for
            raise InputError(f"source '{name}': its share of {size} records rounds to 0", field="--size",
                             fix=f"give a larger --size, or a larger ratio for '{name}'")

    rng = random.Random(seed)
    out, warnings = [], []
    for (name, records, kind, _), count in zip(sources, counts):
        picked = _sample(records, count, rng)
        if count > len(records):
            warnings.append(f"source '{name}' has {len(records)} records but its share is {count}: "
                            f"records repeat about {count / len(records):.1f} times")
            log.warning(warnings[-1])
        labels = labels_of(records) if kind == "classification" else None
        for r in picked:
            meta = {**r.get("meta", {}), "source": name}
            out.append({"messages": to_messages(r, kind, labels=labels), "meta": meta})
    rng.shuffle(out)
    return MixResult(out, warnings)


def _apportion(n: int, shares: list[float]) -> list[int]:
    """Split ``n`` by ``shares`` into whole numbers that sum to ``n`` (largest remainder)."""
    exact = [n * p for p in shares]
    counts = [math.floor(x + 1e-9) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _sample(records: list[dict], count: int, rng: random.Random) -> list[dict]:
    """``count`` records without repeats while there are enough; whole passes, then the rest."""
    full, rest = divmod(count, len(records))
    return list(records) * full + rng.sample(records, rest)


def mix_datasets(catalog, name: str, sources: list[tuple[str, float]], *, size: int | None = None, seed: int = 0,
                 flag: str = "--from"):
    """Mix stored datasets by ratio and save the result as ``name``: (row, created, warnings, counts by source).

    The one implementation behind `modelmill data mix` and POST /api/datasets/mix.
    """
    from modelmill.errors import InputError

    parts = []
    for ref, ratio in sources:
        if not ref or not 0 < ratio < math.inf:
            raise InputError(f"'{ref}:{ratio}' is not DATASET:RATIO with a finite ratio > 0", field=flag,
                             fix="e.g. general:0.3")
        row = catalog.resolve(ref, flag)
        parts.append((row.ref, catalog.records(row), row.kind, ratio))
    if size is not None and size < 1:
        raise InputError(f"must be >= 1, got {size}", field="--size", fix="e.g. --size 1000")
    res = mix(parts, size=size, seed=seed)
    origin = {"op": "mix", "from": [{"dataset": p[0], "ratio": p[3]} for p in parts], "size": size, "seed": seed}
    out, created = catalog.save(name, list(res), "chat", "messages", None, origin)
    counts: dict[str, int] = {}
    for rec in res:
        src = rec.get("meta", {}).get("source", "?")
        counts[src] = counts.get(src, 0) + 1
    return out, created, res.warnings, counts
