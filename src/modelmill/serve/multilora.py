"""Many LoRA adapters in one forward pass: each row of the batch with its own adapter (or none).

The base model's linear layers are wrapped once by :func:`wrap_linears`. A forward then reads
the current :class:`BatchLoras` (set by the engine before each step): the distinct adapters of
the batch and which one each row uses. For every wrapped layer the adapters' LoRA matrices
are concatenated along the rank axis, once per batch composition (cached until a row joins or
leaves), so the whole batch costs two plain matrix products per layer::

    h = x @ A_cat.T          # [rows, tokens, sum of ranks]: every row against every adapter
    h *= row_mask            # keep each row's own adapter's block (all zero for base rows)
    y = base(x) + h @ B_cat  # B already scaled by alpha / r

This reads each distinct adapter's weights once a step, as the per-row gather kernels of
S-LoRA/Punica do, with far fewer and larger operations (the extra products against other
rows' adapters are cheap next to reading weights while decoding). Ranks may differ between
adapters and modules; nothing is padded.

Adapters are peft folders (``adapter_config.json`` + ``adapter_model.safetensors``), read by
:func:`load_adapter` into plain tensors keyed by our module names. Plain LoRA only: DoRA,
LoRA biases, ``modules_to_save`` and embedding adapters are refused with a clear error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelmill.serve.engine import EngineError


@dataclass
class LoadedAdapter:
    """One adapter's weights, ready to serve: module name -> (A [r, in], B scaled [out, r])."""

    name: str
    path: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int = 0


@dataclass
class BatchLoras:
    """Which adapter each row of the current forward uses (``None`` for the base model)."""

    key: object                          # changes whenever the composition changes
    adapters: list[LoadedAdapter]        # distinct adapters of the batch, in block order
    rows: list[int]                      # per row: index into adapters, or -1
    _masks: dict = field(default_factory=dict)

    def mask_for(self, ranks: tuple[int, ...], dtype) -> torch.Tensor:
        """[rows, 1, sum(ranks)] 0/1: each row's own block of the concatenated rank axis."""
        m = self._masks.get((ranks, dtype))
        if m is None:
            offsets = [0]
            for r in ranks:
                offsets.append(offsets[-1] + r)
            m = torch.zeros(len(self.rows), 1, offsets[-1], dtype=dtype)
            for i, a in enumerate(self.rows):
                if a >= 0:
                    m[i, 0, offsets[a]:offsets[a + 1]] = 1
            self._masks[(ranks, dtype)] = m
        return m


class LoraContext:
    """Shared by every wrapped layer: the engine sets ``current`` before each forward."""

    def __init__(self):
        self.current: BatchLoras | None = None


class MultiLoraLinear(torch.nn.Module):
    """``base(x)`` plus, per row, that row's adapter's LoRA product (see the module docstring)."""

    def __init__(self, base: torch.nn.Linear, name: str, context: LoraContext):
        super().__init__()
        self.base = base
        self.name = name
        self.context = context
        self._cache_key = None
        self._cache = None

    @property
    def weight(self):  # some model code reads proj.weight (dtype, device checks)
        return self.base.weight

    def _concat(self, batch: BatchLoras):
        if self._cache_key is batch.key:
            return self._cache
        parts = [a.weights.get(self.name) for a in batch.adapters]
        if all(p is None for p in parts):
            cat = None
        else:
            dtype = self.base.weight.dtype
            ranks = tuple(0 if p is None else p[0].shape[0] for p in parts)
            a_cat = torch.cat([p[0] for p in parts if p is not None], dim=0)          # [R, in]
            b_cat = torch.cat([p[1] for p in parts if p is not None], dim=1).t()      # [R, out]
            # one adapter on every row needs no mask
            one = len(batch.adapters) == 1 and all(r == 0 for r in batch.rows)
            cat = (a_cat.t().contiguous(), b_cat.contiguous(), None if one else batch.mask_for(ranks, dtype))
        self._cache_key, self._cache = batch.key, cat
        return cat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        batch = self.context.current
        if batch is None or not batch.adapters:
            return y
        cat = self._concat(batch)
        if cat is None:
            return y
        a_t, b, mask = cat
        h = torch.matmul(x, a_t)           # [rows, tokens, R]
        if mask is not None:
            h.mul_(mask)
        # y += h @ B in one pass over y
        y.view(-1, y.shape[-1]).addmm_(h.view(-1, h.shape[-1]), b)
        return y


def wrap_linears(model: torch.nn.Module, context: LoraContext) -> list[str]:
    """Wrap every ``nn.Linear`` inside the decoder layers; return the wrapped module names
    (the names peft uses, without its ``base_model.model.`` prefix)."""
    layers_root = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers"):
            layers_root = name
            break
    if layers_root is None:
        raise EngineError("cannot find the decoder layers of this model to attach LoRA adapters", status=500)
    wrapped = []
    for name, module in list(model.named_modules()):
        if not name.startswith(layers_root + "."):
            continue
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                full = f"{name}.{child_name}"
                setattr(module, child_name, MultiLoraLinear(child, full, context))
                wrapped.append(full)
    return wrapped


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def load_adapter(name: str, path: str | Path, module_shapes: dict[str, tuple[int, int]],
                 dtype: torch.dtype, device: str | torch.device = "cpu") -> LoadedAdapter:
    """Read a peft LoRA folder into per-module (A, B * scaling) tensors.

    Raises EngineError (status 400, naming the adapter and the file) when the folder is
    missing, unreadable, of another kind, or does not fit the base model's shapes."""
    folder = Path(path)
    cfg_file = folder / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise EngineError(f"adapter '{name}': {cfg_file} is missing; the adapter's folder was moved or "
                          f"deleted (re-train it, or `modelmill adapters remove {name}`)", status=400,
                          code="adapter_unavailable", param="model") from None
    except (OSError, ValueError) as e:
        raise EngineError(f"adapter '{name}': cannot read {cfg_file}: {e}", status=400,
                          code="adapter_unavailable", param="model") from None
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise EngineError(f"adapter '{name}' is {cfg.get('peft_type')}, only LoRA adapters can be served",
                          status=400, code="adapter_unsupported", param="model")
    unsupported = [k for k in ("use_dora",) if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        unsupported.append(f"bias={cfg['bias']}")
    if cfg.get("modules_to_save"):
        unsupported.append("modules_to_save")
    if unsupported:
        raise EngineError(f"adapter '{name}' uses {', '.join(unsupported)}, which serving does not support; "
                          "train a plain LoRA adapter", status=400, code="adapter_unsupported", param="model")

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_file = folder / "adapter_model.safetensors"
    try:
        tensors = load_file(str(weights_file), device="cpu")
    except FileNotFoundError:
        raise EngineError(f"adapter '{name}': {weights_file} is missing", status=400,
                          code="adapter_unavailable", param="model") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise EngineError(f"adapter '{name}': {weights_file} is corrupt ({e}); re-train or remove it",
                          status=400, code="adapter_unavailable", param="model") from None

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise EngineError(f"adapter '{name}': {weights_file} holds '{key}', which is not a LoRA A/B "
                              "weight (embedding or full-layer adapters cannot be served)", status=400,
                              code="adapter_unsupported", param="model")
        pairs.setdefault(m.group("module"), {})[m.group("which")] = t

    # ranks come from the tensors' own shapes (rank_pattern included); alpha may vary by module
    alpha, alpha_pattern = cfg.get("lora_alpha", 8), cfg.get("alpha_pattern") or {}
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    nbytes = 0
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise EngineError(f"adapter '{name}': module {module} has lora_{''.join(ab)} only", status=400,
                              code="adapter_unavailable", param="model")
        shape = module_shapes.get(module)
        a, b = ab["A"], ab["B"]
        if shape is None or a.ndim != 2 or b.ndim != 2 or a.shape[1] != shape[1] or b.shape[0] != shape[0] \
                or a.shape[0] != b.shape[1]:
            raise EngineError(f"adapter '{name}' does not fit this base model at {module} (A {tuple(a.shape)}, "
                              f"B {tuple(b.shape)}, layer {shape}); was it trained on another base?",
                              status=400, code="adapter_mismatch", param="model")
        r = a.shape[0]
        a_alpha = _pattern_value(alpha_pattern, module, alpha)
        scale = a_alpha / math.sqrt(r) if cfg.get("use_rslora") else a_alpha / r
        a = a.to(device=device, dtype=dtype).contiguous()
        b = (b.to(torch.float32) * scale).to(device=device, dtype=dtype).contiguous()
        out[module] = (a, b)
        nbytes += a.numel() * a.element_size() + b.numel() * b.element_size()
    if not out:
        raise EngineError(f"adapter '{name}': {weights_file} holds no LoRA weights", status=400,
                          code="adapter_unavailable", param="model")
    return LoadedAdapter(name=name, path=str(folder), weights=out, nbytes=nbytes)


def _pattern_value(pattern: dict, module: str, default):
    """peft's rank/alpha patterns: the first key that matches the end of the module name."""
    for key, value in pattern.items():
        if re.search(rf"(^|\.){key}$", module) or re.fullmatch(key, module):
            return value
    return default
