"""Many LoRA adapters in one forward pass: each row of the batch with its own adapter (or none).

The base model's linear layers are wrapped once by :func:`wrap_linears`. The engine tells
:class:`LoraRows` which adapter each batch row serves and which rows a forward covers; every
wrapped layer then adds its LoRA product in one of three ways:

* **one adapter** (beside rows of the base model): its matrices, with a 0/1 mask that zeroes
  the rows without an adapter::

      y = base(x) + ((x @ A) * row_mask) @ B                  # B scaled by alpha / r

* **a few distinct adapters** (2 to ``CONCAT_MAX_ADAPTERS``): the rows are gathered into one
  group per adapter (padded to the largest group) and each group multiplies its own adapter
  only, in one batched product for all groups, as Punica's SGMV does::

      y[rows of g] += (x[rows of g] @ A_g) @ B_g              # bmm over the groups, one index_add_

  The adapters' matrices are stacked once per set of adapters, the row plan once per step; a
  prefill over another set (newcomers joining the decoding rows) multiplies adapter by adapter
  instead, so the decode's stack stays in place.
  Concatenating the adapters along the rank axis instead (``x @ A_cat``, masked) reads each
  adapter once too but multiplies every row by every adapter: with 8 adapters of rank 16 that is
  37% of SmolLM2's base layers' work in a decode step: 8 mixed adapters ran at 0.77x of one
  adapter on an AVX2 host (float32, 32 HTTP clients), and at 0.94x grouped.
  ``GROUP_MIN_ADAPTERS`` set above ``CONCAT_MAX_ADAPTERS`` restores that concatenated path for
  every few-adapter batch.
* **many distinct adapters**: each row has a slot per layer holding its own adapter (copied in
  when a forward first needs it, not per step)::

      y = base(x) + bmm(bmm(x, A_rows[first:first+n]), B_rows[first:first+n])

  the exact work of each row's own adapter, as S-LoRA/Punica's per-row kernels do.

Measured on 2 CPU cores (bfloat16 model, rank 16, all linear layers, 32 rows, over HTTP):
concatenation 339 tokens/s with one adapter and 274 with 8, per-row slots 260 and 244; with
~30 distinct adapters the slots win (222 vs 179). The per-row products run in float32 (CPU bmm
in bfloat16 was 2-4x slower); ranks below the largest are zero-padded, which adds zeros, exactly.

The layers of a decoder block that read one input (q/k/v, gate/up: :data:`SHARED_INPUT`) are
served as one layer, weights side by side, and each adapter's matrices for them as one (A side by
side, B block-diagonal): one base product and one LoRA product per group instead of one per layer.
``bench/decode_steps.py --compare unjoined`` measures it against separate layers in one process.

Adapters are peft folders (``adapter_config.json`` + ``adapter_model.safetensors``), read by
:func:`load_adapter` into plain tensors keyed by our module names. Plain LoRA only: DoRA,
LoRA biases, ``modules_to_save`` and embedding adapters are refused with a clear error.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from modelmill.models.int8 import Int8Linear
from modelmill.serve.engine import EngineError

LORA_DTYPE = torch.float32
CONCAT_MAX_ADAPTERS = 12   # above this many distinct adapters in a forward: per-row slots
GROUP_MIN_ADAPTERS = 2     # from this many: grouped products; below (one adapter): concatenated
# Linear layers of a decoder block that read the same input. Each group is served as one layer,
# their weights side by side, and so are the adapters' matrices for them (A side by side, B block-
# diagonal): a decode step runs one base product and one LoRA product per group, not one per
# layer. At a few rows a step's time goes to the number of small operations, not to arithmetic
# (4 rows over 3 adapters and the base: ~1,050 LoRA operations a step, see bench/decode_steps.py).
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# Up to this many rows (tokens) a float32 base layer on a CPU computes (W @ x.T).T, not x @ W.T:
# MKL then picks another kernel for the same product. Whole decode steps of SmolLM2 on AVX2 (2
# threads, bench/decode_steps.py --compare rows-first) were 1.31x / 1.31x / 1.22x faster at 2 / 3 / 4
# rows, the same at 6 and 8, 0.95x at 16. (Timing one layer in a loop, its weights stay in cache,
# and said otherwise at 2-3 rows: a decode step reads them from memory.) 0: always x @ W.T.
WEIGHTS_FIRST_MAX_ROWS = 4


@dataclass
class LoadedAdapter:
    """One adapter's weights, ready to serve: module name -> (A.T [in, r], B.T scaled [r, out])."""

    name: str
    path: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int = 0
    nbytes: int = 0


def adapter_key(adapter: LoadedAdapter | None):
    """What identifies an adapter's weights: its name and folder (None: the base model)."""
    return None if adapter is None else (adapter.name, adapter.path)


class LoraRows:
    """Which adapter each batch row serves, their per-row slots, and the rows of the current forward."""

    def __init__(self, rows: int, device, dtype: torch.dtype):
        self.rows = rows
        self.device = device
        self.dtype = dtype                           # of the model: the concatenated path runs in it
        self.rank = 0
        self.layers: dict[str, MultiLoraLinear] = {}
        self.adapter: list[LoadedAdapter | None] = [None] * rows   # what each row serves
        self.in_slot: list[LoadedAdapter | None] = [None] * rows   # what each row's slot buffers hold
        self.first = 0                               # the current forward's rows: first .. first + n
        self.n = 0
        self.used: set[str] = set()                  # layers some row of the forward has an adapter for
        self.concat_key = None                       # set when this forward concatenates (few adapters)
        self.concat_adapters: list[LoadedAdapter] = []
        self.concat_set: tuple = ()                  # their keys: what a layer's concatenated copy is kept by
        self.concat_rows: list[int] = []
        self._masks: dict = {}
        self._forward_masks: dict = {}               # this forward's masks by ranks (concat_mask)
        self.group_key = None                        # set when this forward groups rows by adapter
        self.group_adapters: list[LoadedAdapter] = []
        self.group_plan: tuple | None = None         # (row index [G * most], pad mask [G, most, 1, 1] | None, G, most)
        self.group_rows: list[torch.Tensor] = []     # each group's rows (index), in group_adapters' order
        self.shapes: dict[str, tuple[int, int]] = {}  # every wrapped model layer: (out, in), by its own name
        self.shared: dict[str, list[tuple[str, int]]] = {}  # a SHARED_INPUT layer: its parts (name, out)

    def _grow(self, rank: int):
        for layer in self.layers.values():
            layer.grow(self.rows, rank, self.device)
        self.rank = rank

    def assign(self, row: int, adapter: LoadedAdapter | None):
        """``row`` now serves ``adapter`` (None: the base model). Its slots are filled only when a
        forward takes the per-row path (see _materialize), so the concatenated path copies nothing."""
        self.adapter[row] = adapter

    def move(self, src: int, dst: int):
        """Row ``src`` moved into ``dst`` (compaction)."""
        self.adapter[dst] = self.adapter[src]

    def _materialize(self, first: int, n: int):
        """Copy each row's adapter into its slot of every layer where the slot holds something else."""
        for row in range(first, first + n):
            adapter, old = self.adapter[row], self.in_slot[row]
            if adapter_key(old) == adapter_key(adapter):
                continue
            if adapter is not None and adapter.rank > self.rank:
                self._grow(adapter.rank)
            for name, layer in self.layers.items():
                w = adapter.weights.get(name) if adapter is not None else None
                if w is not None:
                    layer.set_slot(row, w[0], w[1])
                elif old is not None and name in old.weights:
                    layer.clear_slot(row)
            self.in_slot[row] = adapter

    def select(self, first: int, n: int):
        """The rows of the next forward; few distinct adapters are concatenated instead (see below)."""
        self.first, self.n = first, n
        adapters = self.adapter[first:first + n]
        keys = [adapter_key(a) for a in adapters]
        order: dict = {}
        for k, a in zip(keys, adapters):
            if k is not None and k not in order:
                order[k] = (len(order), a)
        self.used = set().union(*(a.weights for _, a in order.values()))
        self.concat_key = self.group_key = None
        self._forward_masks = {}
        if not order:
            return
        if GROUP_MIN_ADAPTERS <= len(order) <= CONCAT_MAX_ADAPTERS:
            self._plan_groups(keys, order)
        elif len(order) <= CONCAT_MAX_ADAPTERS:
            # Per-row slots read every row's own copy of its adapter each step; with few distinct adapters,
            # concatenating them along the rank axis reads each once (measured: 339 vs 260 tokens/s with one
            # adapter on 32 rows, 274 vs 244 with 8; with ~30 distinct adapters the slots win, 222 vs 179).
            self.concat_key = (first, tuple(keys))
            self.concat_adapters = [a for _, a in order.values()]
            self.concat_set = tuple(order)
            self.concat_rows = [-1 if k is None else order[k][0] for k in keys]
            if len(self._masks) > 64:
                self._masks.clear()
        else:
            self._materialize(first, n)

    def _plan_groups(self, keys: list, order: dict):
        """Group this forward's rows by adapter: the stacked weights are keyed by the set of adapters
        (sorted, so rows that come and go keep them), the gather/scatter index by this step's rows."""
        distinct = sorted(order, key=repr)
        self.group_key = tuple(distinct)
        self.group_adapters = [order[k][1] for k in distinct]
        slot = {k: g for g, k in enumerate(distinct)}
        groups: list[list[int]] = [[] for _ in distinct]
        for row, k in enumerate(keys):
            if k is not None:
                groups[slot[k]].append(row)
        most = max(len(g) for g in groups)
        index = [g[i] if i < len(g) else g[0] for g in groups for i in range(most)]  # pads repeat a row ...
        pad = None
        if any(len(g) < most for g in groups):  # ... whose product the mask then zeroes
            pad = torch.tensor([[1.0 if i < len(g) else 0.0 for i in range(most)] for g in groups],
                               dtype=LORA_DTYPE, device=self.device).view(len(groups), most, 1, 1)
        self.group_plan = (torch.tensor(index, dtype=torch.long, device=self.device), pad, len(groups), most)
        self.group_rows = [torch.tensor(g, dtype=torch.long, device=self.device) for g in groups]

    def concat_mask(self, ranks: tuple[int, ...]) -> torch.Tensor | None:
        """[rows, 1, sum(ranks)] 0/1 keeping each row's own adapter's block; None when one adapter
        covers every row. Every layer of a forward asks: answered from this forward's own few."""
        if ranks in self._forward_masks:
            return self._forward_masks[ranks]
        if len(ranks) == 1 and all(r == 0 for r in self.concat_rows):
            self._forward_masks[ranks] = None
            return None
        key = (self.concat_key, ranks)
        m = self._masks.get(key)
        if m is None:
            offsets = [0]
            for r in ranks:
                offsets.append(offsets[-1] + r)
            m = torch.zeros(len(self.concat_rows), 1, offsets[-1], dtype=self.dtype, device=self.device)
            for i, a in enumerate(self.concat_rows):
                if a >= 0:
                    m[i, 0, offsets[a]:offsets[a + 1]] = 1
            self._masks[key] = m
        self._forward_masks[ranks] = m
        return m


class LoraContext:
    """Shared by every wrapped layer: the engine selects the rows of each forward."""

    def __init__(self):
        self.rows: LoraRows | None = None
        self.on = False            # outside the engine's forwards the wrapped layers are plain
        self.weights_first_max = 0  # WEIGHTS_FIRST_MAX_ROWS where the model runs in float32 on a CPU


class MultiLoraLinear(torch.nn.Module):
    """``base(x)`` plus, per row, that row's adapter's LoRA product (see the module docstring)."""

    def __init__(self, base: torch.nn.Linear, name: str, context: LoraContext, parts: int = 1):
        super().__init__()
        self.base = base
        self.name = name
        self.context = context
        self.parts = parts                        # model layers it computes at once (SHARED_INPUT)
        self.a_rows: torch.Tensor | None = None   # [rows, in, rank]
        self.b_rows: torch.Tensor | None = None   # [rows, rank, out]
        self._cat_key = None
        self._cat = None
        self._stack_key = None
        self._stack = None

    @property
    def weight(self):  # some model code reads proj.weight (dtype, device checks); an int8 base has none
        return getattr(self.base, "weight", None)

    def grow(self, rows: int, rank: int, device):
        rank *= self.parts                        # each part's matrices side by side
        a = torch.zeros(rows, self.base.in_features, rank, dtype=LORA_DTYPE, device=device)
        b = torch.zeros(rows, rank, self.base.out_features, dtype=LORA_DTYPE, device=device)
        if self.a_rows is not None:
            r = self.a_rows.shape[2]
            a[:, :, :r] = self.a_rows
            b[:, :r, :] = self.b_rows
        self.a_rows, self.b_rows = a, b

    def set_slot(self, row: int, a_t: torch.Tensor, b_t: torch.Tensor):
        r = a_t.shape[1]
        self.a_rows[row, :, :r] = a_t
        self.b_rows[row, :r, :] = b_t
        if r < self.a_rows.shape[2]:
            self.a_rows[row, :, r:] = 0
            self.b_rows[row, r:, :] = 0

    def clear_slot(self, row: int):
        self.a_rows[row] = 0
        self.b_rows[row] = 0

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        if type(base) is torch.nn.Linear:
            x2 = x.reshape(-1, x.shape[-1])
            if 1 < x2.shape[0] <= self.context.weights_first_max:
                return weights_first(base, x2).view(*x.shape[:-1], base.out_features)
        return base(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base(x)
        ctx = self.context
        rows = ctx.rows
        if not ctx.on or rows is None or self.name not in rows.used:
            return y
        if rows.group_key is not None:
            return self._grouped(x, y, rows)
        if rows.concat_key is not None:
            cat = self._concatenated(rows)
            if cat is None:
                return y
            a_cat, b_cat, mask = cat
            h = torch.matmul(x, a_cat)                  # [rows, tokens, sum of ranks]
            if mask is not None:
                h.mul_(mask)
            y.view(-1, y.shape[-1]).addmm_(h.view(-1, h.shape[-1]), b_cat)
            return y
        a, b = rows.first, rows.first + rows.n
        h = torch.bmm(x.reshape(rows.n, -1, x.shape[-1]).to(LORA_DTYPE), self.a_rows[a:b])  # [n, tokens, rank]
        return y.add_(torch.bmm(h, self.b_rows[a:b]).view(y.shape))

    def _grouped(self, x: torch.Tensor, y: torch.Tensor, rows: LoraRows) -> torch.Tensor:
        x3 = x.reshape(rows.n, -1, x.shape[-1])                       # [rows, tokens, in]
        tokens = x3.shape[1]
        if tokens > 1 and self._stack_key != rows.group_key:
            return self._by_adapter(x3, y, rows)
        a_st, b_st = self._stacked(rows)
        index, pad, groups, most = rows.group_plan
        xg = x3.index_select(0, index).to(LORA_DTYPE)                 # [groups * most, tokens, in]
        h = torch.bmm(xg.view(groups, most * tokens, -1), a_st)        # [groups, most * tokens, rank]
        if pad is not None:
            h.view(groups, most, tokens, -1).mul_(pad)
        out = torch.bmm(h, b_st).view(groups * most, tokens, -1)      # [groups * most, tokens, out]
        y.view(rows.n, tokens, -1).index_add_(0, index, out.to(y.dtype))
        return y

    def _by_adapter(self, x3: torch.Tensor, y: torch.Tensor, rows: LoraRows) -> torch.Tensor:
        """A prefill's rows, one adapter at a time, each product reading that adapter's own matrices:
        used where the layer's stacked weights are of another set of adapters. The newcomers' adapters
        are often a few of the decoding rows': stacking them would replace the decode's stacked
        weights, which the next step would then stack again (8 adapters of SmolLM2, every layer:
        ~34 ms on AVX2, twice each time several newcomers over several adapters join)."""
        tokens = x3.shape[1]
        y3 = y.view(rows.n, tokens, -1)
        for adapter, index in zip(rows.group_adapters, rows.group_rows):
            w = adapter.weights.get(self.name)
            if w is None:
                continue
            xs = x3.index_select(0, index).to(LORA_DTYPE)               # [its rows, tokens, in]
            out = torch.matmul(torch.matmul(xs, w[0]), w[1])           # [its rows, tokens, out]
            y3.index_add_(0, index, out.to(y.dtype))
        return y

    def _stacked(self, rows: LoraRows):
        """[G, in, rank], [G, rank, out]: each adapter of the set, zero-padded to the largest rank
        (zero where an adapter has no matrices for this layer)."""
        if self._stack_key == rows.group_key:
            return self._stack
        parts = [a.weights.get(self.name) for a in rows.group_adapters]
        rank = max(p[0].shape[1] for p in parts if p is not None)
        a_st = torch.zeros(len(parts), self.base.in_features, rank, dtype=LORA_DTYPE, device=rows.device)
        b_st = torch.zeros(len(parts), rank, self.base.out_features, dtype=LORA_DTYPE, device=rows.device)
        for g, p in enumerate(parts):
            if p is not None:
                a_st[g, :, :p[0].shape[1]] = p[0]
                b_st[g, :p[1].shape[0], :] = p[1]
        self._stack_key, self._stack = rows.group_key, (a_st, b_st)
        return self._stack

    def _concatenated(self, rows: LoraRows):
        """[in, R], [R, out] and the rows' mask for the forward's adapters side by side along the rank.
        Kept by adapters, not rows: a prefill's newcomers and the decoding rows (other rows, often
        the same adapters) then share one copy, and one adapter in the model's dtype is not copied."""
        key = rows.concat_set
        if self._cat_key != key:
            parts = [a.weights.get(self.name) for a in rows.concat_adapters]
            cat = None
            if any(p is not None for p in parts):
                dtype = rows.dtype
                ranks = tuple(0 if p is None else p[0].shape[1] for p in parts)
                present = [p for p in parts if p is not None]
                a_cat = torch.cat([p[0] for p in present], dim=1) if len(present) > 1 else present[0][0]
                b_cat = torch.cat([p[1] for p in present], dim=0) if len(present) > 1 else present[0][1]
                cat = (a_cat.to(dtype).contiguous(), b_cat.to(dtype).contiguous(), ranks)  # [in, R], [R, out]
            self._cat_key, self._cat = key, cat
        if self._cat is None:
            return None
        a_cat, b_cat, ranks = self._cat
        return a_cat, b_cat, rows.concat_mask(ranks)


def weights_first(linear: torch.nn.Linear, x2: torch.Tensor) -> torch.Tensor:
    """``linear(x2)`` for 2D ``x2`` computed as (W @ x2.T).T: see WEIGHTS_FIRST_MAX_ROWS."""
    w, bias = linear.weight, linear.bias
    yt = torch.mm(w, x2.t()) if bias is None else torch.addmm(bias[:, None], w, x2.t())
    return yt.t().contiguous()


class SharedInput:
    """The one layer behind a :data:`SHARED_INPUT` group. The first of the group's model layers
    called with an input computes every part's output; the others, called with that same tensor
    (as a decoder block calls them), take theirs. A part called with another input computes again:
    correct, only slower."""

    def __init__(self, layer: MultiLoraLinear, sizes: list[int]):
        self.layer = layer
        self.sizes = sizes
        self._x: torch.Tensor | None = None
        self._waiting: dict[int, torch.Tensor] = {}

    def output(self, part: int, x: torch.Tensor) -> torch.Tensor:
        if x is self._x and part in self._waiting:
            y = self._waiting.pop(part)
            if not self._waiting:
                self._x = None
            return y
        ys = self.layer(x).split(self.sizes, dim=-1)
        self._x, self._waiting = x, {i: y for i, y in enumerate(ys) if i != part}
        return ys[part]


class SharedInputPart(torch.nn.Module):
    """Where a model layer of a :data:`SHARED_INPUT` group was (``q_proj``, say): its columns of
    the group's output."""

    def __init__(self, shared: SharedInput, part: int, first: int, in_features: int, out_features: int):
        super().__init__()
        if part == 0:
            self.shared_layer = shared.layer      # registered once, so .to() and parameters() see it
        self.shared, self.part, self.first = shared, part, first
        self.in_features, self.out_features = in_features, out_features

    @property
    def weight(self):  # some model code reads proj.weight (dtype, device checks)
        w = self.shared.layer.weight
        return None if w is None else w[self.first:self.first + self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output(self.part, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, part {self.part} of a shared input"


def _side_by_side(parts: list) -> torch.nn.Module | None:
    """One layer computing ``parts`` (layers of one input) at once; None where they cannot be joined."""
    kinds = {type(p) for p in parts}
    if len(kinds) != 1 or len({p.in_features for p in parts}) != 1:
        return None
    if kinds == {Int8Linear}:
        return Int8Linear(_side_by_side([p.dequantized() for p in parts]))
    if kinds != {torch.nn.Linear} or len({(p.weight.dtype, p.weight.device) for p in parts}) != 1:
        return None
    w = parts[0].weight
    joined = torch.nn.Linear(w.shape[1], sum(p.out_features for p in parts),
                             bias=any(p.bias is not None for p in parts), device=w.device, dtype=w.dtype)
    with torch.no_grad():
        joined.weight.copy_(torch.cat([p.weight for p in parts]))
        if joined.bias is not None:
            joined.bias.copy_(torch.cat([p.bias if p.bias is not None else w.new_zeros(p.out_features)
                                         for p in parts]))
    joined.requires_grad_(False)
    return joined


def wrap_linears(model: torch.nn.Module, context: LoraContext, rows: int, device) -> list[str]:
    """Wrap every ``nn.Linear`` inside the decoder layers (the layers of a :data:`SHARED_INPUT`
    group as one); return the wrapped model layers' names (the names peft uses, without its
    ``base_model.model.`` prefix)."""
    layers_root = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers"):
            layers_root = name
            break
    if layers_root is None:
        raise EngineError("cannot find the decoder layers of this model to attach LoRA adapters", status=500)
    dtype = next(model.parameters()).dtype
    context.rows = LoraRows(rows, device, dtype)
    context.weights_first_max = WEIGHTS_FIRST_MAX_ROWS if (
        torch.device(device).type == "cpu" and dtype == torch.float32) else 0
    lora_rows = context.rows
    wrapped = []
    for name, module in list(model.named_modules()):
        if not name.startswith(layers_root + "."):
            continue
        children = dict(module.named_children())
        for group in SHARED_INPUT:
            parts = [children.get(c) for c in group]
            if not all(type(p) is torch.nn.Linear or type(p) is Int8Linear for p in parts):
                continue
            joined = _side_by_side(parts)
            if joined is None:
                continue
            full = f"{name}.{'+'.join(group)}"
            layer = MultiLoraLinear(joined, full, context, parts=len(parts))
            shared = SharedInput(layer, [p.out_features for p in parts])
            first = 0
            for i, (child_name, p) in enumerate(zip(group, parts)):
                setattr(module, child_name, SharedInputPart(shared, i, first, p.in_features, p.out_features))
                lora_rows.shapes[f"{name}.{child_name}"] = (p.out_features, p.in_features)
                wrapped.append(f"{name}.{child_name}")
                first += p.out_features
                del children[child_name]
            lora_rows.layers[full] = layer
            lora_rows.shared[full] = [(f"{name}.{c}", p.out_features) for c, p in zip(group, parts)]
        for child_name, child in children.items():
            if type(child) is torch.nn.Linear or type(child) is Int8Linear:
                full = f"{name}.{child_name}"
                layer = MultiLoraLinear(child, full, context)
                setattr(module, child_name, layer)
                lora_rows.layers[full] = layer
                lora_rows.shapes[full] = (child.out_features, child.in_features)
                wrapped.append(full)
    return wrapped


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def load_adapter(name: str, path: str | Path, module_shapes: dict[str, tuple[int, int]],
                 dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                 input_scales: dict[str, torch.Tensor] | None = None,
                 shared: dict[str, list[tuple[str, int]]] | None = None) -> LoadedAdapter:
    """Read a peft LoRA folder into per-module (A.T, (B * scaling).T) float32 tensors.

    ``input_scales``: per module, what the base model's smoothing (int8 serving) divided that
    linear's input by; the adapter's A is multiplied by it so that it sees the input it was
    trained on.

    ``shared``: layers served as one (``LoraRows.shared``: name -> its parts' names and output
    sizes); the parts' matrices become that layer's, A side by side and B block-diagonal.

    Raises EngineError (status 400, naming the adapter and the file) when the folder is
    missing, unreadable, of another kind, or does not fit the base model's shapes."""
    folder = Path(path)
    cfg_file = folder / "adapter_config.json"

    def unavailable(file: Path, what: str, e: Exception | None = None) -> EngineError:
        # API clients see the file by its name in the adapter's folder; the server's log has the path
        if e is not None:
            logging.getLogger("modelmill.serve").warning("adapter %s: %s: %s", name, file, e)
        why = f" ({e.strerror if isinstance(e, OSError) and e.strerror else _no_paths(str(e), folder)})" if e else ""
        return EngineError(f"adapter '{name}': its file {file.name} {what}{why}; re-train it, or `modelmill "
                           f"adapters remove {name}`", status=400, code="adapter_unavailable", param="model")

    try:
        cfg = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise unavailable(cfg_file, "is missing (the adapter's folder was moved or deleted)") from None
    except (OSError, ValueError) as e:
        raise unavailable(cfg_file, "cannot be read", e) from None
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
        raise unavailable(weights_file, "is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise unavailable(weights_file, "is corrupt", e) from None

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
    rank = 0
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
        a_t = a.to(device=device, dtype=LORA_DTYPE).t().contiguous()                  # [in, r]
        if input_scales and module in input_scales:
            a_t.mul_(input_scales[module].to(device=device, dtype=LORA_DTYPE)[:, None])
        b_t = (b.to(LORA_DTYPE) * scale).to(device=device).t().contiguous()             # [r, out]
        out[module] = (a_t, b_t)
        rank = max(rank, r)
    if not out:
        raise EngineError(f"adapter '{name}': {weights_file} holds no LoRA weights", status=400,
                          code="adapter_unavailable", param="model")
    for joined, parts in (shared or {}).items():
        mats = [out.pop(part, None) for part, _ in parts]
        if any(m is not None for m in mats):
            out[joined] = _block_diagonal(mats, [size for _, size in parts])
    nbytes = sum(t.numel() * t.element_size() for ab in out.values() for t in ab)
    return LoadedAdapter(name=name, path=str(folder), weights=out, rank=rank, nbytes=nbytes)


def _block_diagonal(mats: list, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several layers' (A [in, r], B [r, out]) as one layer's: A side by side [in, sum r], B
    block-diagonal [sum r, sum out]; a layer the adapter leaves alone adds no rank, only its
    (zero) output columns."""
    present = [m for m in mats if m is not None]
    a = torch.cat([m[0] for m in present], dim=1)
    b = present[0][1].new_zeros(a.shape[1], sum(sizes))
    r = col = 0
    for m, size in zip(mats, sizes):
        if m is not None:
            b[r:r + m[1].shape[0], col:col + size] = m[1]
            r += m[1].shape[0]
        col += size
    return a.contiguous(), b


def _pattern_value(pattern: dict, module: str, default):
    """peft's rank/alpha patterns: the first key that matches the end of the module name."""
    for key, value in pattern.items():
        if re.search(rf"(^|\.){key}$", module) or re.fullmatch(key, module):
            return value
    return default


def _no_paths(text: str, folder: Path) -> str:
    """A library's message with the server's folders taken out of it."""
    return text.replace(str(folder.resolve()), folder.name).replace(str(folder), folder.name)[:300]
