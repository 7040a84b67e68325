"""Merge LoRA adapters into one, with peft's own ``add_weighted_adapter``.

    modelmill adapters merge both --from drugs-lora:0.6,zh-lora:0.4 --how ties --density 0.5

    from modelmill.adapters.merge import MergeConfig, merge
    row = merge(store, MergeConfig(name="both", sources="drugs-lora:0.6,zh-lora:0.4", how="ties"))

The result is an ordinary adapter (served, evaluated, merged again) whose ``parents`` list its
sources and their weights. What each ``how`` does (peft's combination types):

- ``linear``: the weighted sum of the A matrices and of the B matrices (same rank for all).
- ``cat``: the A and B matrices side by side, so the update is exactly the weighted sum of the
  adapters' updates; the rank is the sum of theirs.
- ``svd``: the weighted sum of the full updates, cut back to a rank by SVD (``svd_rank``, default
  the largest source rank).
- ``ties``, ``dare_ties``, ``dare_linear``, ``magnitude_prune`` (and their ``_svd`` forms): each
  update keeps only its largest (or a random ``density`` share of its) entries before the sum;
  the TIES forms also drop entries whose sign disagrees with the majority. ``density`` is the
  share kept (0-1).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from modelmill.errors import ConflictError, InputError, NotFoundError

HOW = ("linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
       "magnitude_prune", "magnitude_prune_svd")
SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")  # peft needs one rank for these
USES_DENSITY = tuple(h for h in HOW if h not in ("linear", "cat", "svd"))


@dataclass
class MergeConfig:
    """Merge LoRA adapters of one base into a new adapter."""

    name: str = field(default="", metadata={"help": "Name of the new adapter.", "basic": True})
    sources: str = field(default="", metadata={
        "help": "The adapters and their weights, e.g. drugs-lora:0.6,zh-lora:0.4 (a missing weight is 1).",
        "basic": True})
    how: str = field(default="linear", metadata={
        "help": "How the updates are combined (peft's combination types; see the module's notes).",
        "choices": list(HOW), "basic": True})
    density: float = field(default=0.5, metadata={
        "help": "Share of each update kept by ties, dare_* and magnitude_prune (0-1]."})
    svd_rank: int = field(default=0, metadata={"help": "Rank of an *_svd merge (0: the largest source rank)."})
    seed: int = field(default=0, metadata={"help": "Seed of the dare_* methods' random drops."})

    def __post_init__(self):
        if self.how not in HOW:
            raise InputError(f"unknown merge method '{self.how}'", field="--how", fix="use one of " + ", ".join(HOW))
        if not (0 < self.density <= 1):
            raise InputError(f"must be in (0, 1], got {self.density}", field="--density",
                             fix="the share of each update to keep, e.g. 0.5")
        if self.svd_rank < 0:
            raise InputError(f"must be >= 0, got {self.svd_rank}", field="--svd-rank", fix="0 takes the largest rank")
        if self.svd_rank and not self.how.endswith("svd"):
            raise InputError(f"only svd and the *_svd methods take a rank, not {self.how}", field="--svd-rank",
                             fix="leave it out, or choose --how svd")


def parse_sources(text: str) -> list[tuple[str, float]]:
    """``a:0.6,b:0.4`` -> [("a", 0.6), ("b", 0.4)]; ``a,b`` weighs each 1; an adapter may be named
    as ``BASE:ADAPTER`` (``tiny:a:0.6``), as everywhere else."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, w = part, "1"
        head, _, tail = part.rpartition(":")
        if head:
            try:
                float(tail)
                name, w = head, tail
            except ValueError:
                if head.count(":"):  # BASE:ADAPTER:WEIGHT with a weight that is not a number
                    name, w = head, tail
        try:
            weight = float(w)
        except ValueError:
            raise InputError(f"weight '{w}' of '{name}' is not a number", field="--from",
                             fix="give NAME:WEIGHT pairs, e.g. drugs-lora:0.6,zh-lora:0.4") from None
        if not math.isfinite(weight) or weight == 0:
            raise InputError(f"weight of '{name}' must be a finite number other than 0, got {w}", field="--from",
                             fix="e.g. drugs-lora:0.6,zh-lora:0.4")
        out.append((name.strip(), weight))
    if len(out) < 2:
        raise InputError("a merge needs two adapters or more", field="--from",
                         fix="e.g. --from drugs-lora:0.6,zh-lora:0.4")
    names = [n for n, _ in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise InputError(f"'{dup}' is named twice", field="--from", fix="name each adapter once, with its weight")
    return out


def check(store, cfg: MergeConfig) -> list[tuple]:
    """The source rows with their weights; InputError/ConflictError/NotFoundError naming the flag
    when the name is taken, a source is missing, not a LoRA adapter, of another base, or of
    another rank where ``how`` needs one rank."""
    from modelmill.adapters import AdapterRegistry, check_name_free
    from modelmill.names import check_name

    check_name(cfg.name, "NAME")
    check_name_free(store, cfg.name, "NAME")
    reg = AdapterRegistry(store)
    rows = []
    for name, weight in parse_sources(cfg.sources):
        try:
            row = reg.resolve_ref(name)[1] if ":" in name else reg.get(name)
        except NotFoundError as e:
            head, _, tail = name.rpartition(":")
            if head and reg.find(head) is not None:  # ADAPTER:WEIGHT with a weight that is not a number
                raise InputError(f"weight '{tail}' of '{head}' is not a number", field="--from",
                                 fix="give NAME:WEIGHT pairs, e.g. drugs-lora:0.6,zh-lora:0.4") from None
            raise NotFoundError(e.message, field="--from", fix=e.fix) from None
        if row is None:
            raise InputError(f"'{name}' is a base model, not an adapter", field="--from",
                             fix="name LoRA adapters (`modelmill adapters list`)")
        # any method that trains a LoRA adapter (lora, dpo, orpo, kto, cpt, a merge) leaves one to add
        if row.method == "full" or not (Path(row.path) / "adapter_config.json").is_file():
            raise InputError(f"'{name}' is a {row.method} fine-tune, not a LoRA adapter", field="--from",
                             fix="merge LoRA adapters only (a full fine-tune has no low-rank update to add)")
        if any(r.id == row.id for r, _ in rows):
            raise InputError(f"'{name}' names the adapter '{row.name}' again", field="--from",
                             fix="name each adapter once, with its weight")
        rows.append((row, weight))
    bases = {r.base_model for r, _ in rows}
    if len(bases) > 1:
        which = ", ".join(f"{r.name} on {r.base_model}" for r, _ in rows)
        raise ConflictError(f"the adapters were trained on different bases ({which})", field="--from",
                            fix="merge adapters of one base model")
    hashes = {r.base_model_hash for r, _ in rows if r.base_model_hash}
    if len(hashes) > 1:
        raise ConflictError(f"the adapters were trained on different weights of '{bases.pop()}' (its files changed "
                            "between their trainings)", field="--from", fix="merge adapters trained on the same weights")
    if hashes:
        from modelmill.adapters.export import check_base_weights
        from modelmill.models.registry import ModelRegistry

        models = ModelRegistry(store)
        row = next(r for r, _ in rows if r.base_model_hash)
        check_base_weights(models, row, models.get(row.base_model), field="--from")
    ranks = {r.name: _rank(r) for r, _ in rows}
    if cfg.how in SAME_RANK and len(set(ranks.values())) > 1:
        which = ", ".join(f"{n} r{k}" for n, k in ranks.items())
        raise InputError(f"'{cfg.how}' needs adapters of one rank, these differ ({which})", field="--how",
                         fix="use cat, svd or a *_svd method, which take any ranks")
    return rows


def _rank(row) -> int:
    path = Path(row.path) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the adapter's config: {e}", file=str(path),
                         fix="the adapter's folder is damaged: train or copy it again") from None
    return max([int(cfg.get("r") or 0), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]])


def merge(store, cfg: MergeConfig, *, progress: bool = False, log=None):
    """Merge ``cfg.sources`` into the new adapter ``cfg.name``; returns its registry row. The
    adapter's folder appears whole or not at all."""
    from modelmill.adapters import name_lock

    with name_lock(store, cfg.name, field="NAME"):
        return _merge(store, cfg, progress, log or (lambda msg: None))


def _merge(store, cfg: MergeConfig, progress, say):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from modelmill.adapters import AdapterRegistry
    from modelmill.models.registry import ModelRegistry
    from modelmill.store.tables import Adapter
    from modelmill.versions import library_versions

    rows = check(store, cfg)
    models = ModelRegistry(store)
    base = models.ready(rows[0][0].base_model, progress=progress)
    say(f"merging {', '.join(f'{r.name} x{w:g}' for r, w in rows)} by {cfg.how} on {base.name}")
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    names = [f"p{i}" for i in range(len(rows))]
    model = PeftModel.from_pretrained(model, rows[0][0].path, adapter_name=names[0])
    for n, (row, _) in zip(names[1:], rows[1:]):
        model.load_adapter(row.path, adapter_name=n)
    kw = {"density": cfg.density} if cfg.how in USES_DENSITY else {}
    if cfg.how.endswith("svd"):
        kw["svd_full_matrices"] = False  # only the first rank columns are kept: the same result, far less work
        if cfg.svd_rank:
            most = min(min(m.weight.shape) for n, m in model.named_modules()
                       if n.endswith(tuple(f".{t}" for t in _targets(model))) and hasattr(m, "weight"))
            if cfg.svd_rank > most:
                raise InputError(f"{cfg.svd_rank} is more than the smallest merged matrix allows ({most})",
                                 field="--svd-rank", fix=f"use a rank from 1 to {most}")
            kw["svd_rank"] = cfg.svd_rank
    try:
        with torch.random.fork_rng():  # the dare_* methods drop entries at random: seeded, and recorded
            torch.manual_seed(cfg.seed)
            model.add_weighted_adapter(names, [w for _, w in rows], "merged", combination_type=cfg.how, **kw)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"peft could not merge these adapters: {e}", field="--from",
                         fix="check that they target the same modules of one base") from None
    parents = [{"name": r.name, "weight": w, "id": r.id} for r, w in rows]
    lineage = {"name": cfg.name, "method": "lora", "base_model": base.name, "base_model_hash": rows[0][0].base_model_hash,
               "merge": asdict(cfg), "parents": parents, "versions": library_versions(),
               "created_at": datetime.now(timezone.utc).isoformat()}
    final = store.adapters_dir / cfg.name
    with store.staging(final) as tmp:
        model.save_pretrained(str(tmp / "peft"), selected_adapters=["merged"])
        for f in (tmp / "peft" / "merged").iterdir():
            shutil.move(str(f), tmp / f.name)
        shutil.rmtree(tmp / "peft")
        (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, ensure_ascii=False), encoding="utf-8")
        new_cfg = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
    src = [r for r, _ in rows]
    targets = new_cfg.get("target_modules")
    row = Adapter(name=cfg.name, base_model=base.name, base_model_hash=rows[0][0].base_model_hash, method="lora",
                  dataset=",".join(dict.fromkeys(r.dataset for r in src))[:200], dataset_version="merged",
                  dataset_hash=_hash(sorted(r.dataset_hash for r in src)), path=str(final),
                  config={"merge": asdict(cfg), "lora_r": new_cfg.get("r"), "lora_alpha": new_cfg.get("lora_alpha"),
                          "target_modules": sorted(targets) if isinstance(targets, list) else targets},
                  versions=lineage["versions"], metrics={}, parents=parents)
    try:
        AdapterRegistry(store).add(row)
    except BaseException:
        store.remove_tree(final)
        raise
    say(f"merged into {cfg.name} (rank {new_cfg.get('r')})")
    return row


def _hash(parts: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _targets(model) -> set[str]:
    """The module names the loaded adapters target (e.g. q_proj, v_proj)."""
    out = set()
    for c in model.peft_config.values():
        t = c.target_modules
        out |= {t} if isinstance(t, str) else set(t)
    return out
