"""Keys and values of prompt prefixes, kept between requests (automatic prefix caching).

Requests to one model often begin alike: a chat template's system prompt, a task's instruction,
a bot module's few-shot examples. The engine keeps the keys and values of such prefixes, in
blocks of ``block`` tokens, and a newcomer whose prompt starts with cached blocks copies them
into its row and prefills only the rest (vLLM's automatic prefix caching works the same way).

A block is found by its exact tokens and by the block before it (a chain, so a block's key never
has to hold the whole prefix), under a root per adapter: a LoRA adapter changes the keys and
values of every layer, so blocks are never shared between adapters, nor between the base
model and an adapter. Blocks are evicted least recently used, leaves before the blocks they
extend, within ``budget`` bytes.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

import torch


@dataclass(eq=False)
class Block:
    id: int
    root: object
    key: tuple
    k: torch.Tensor            # [layers, kv_heads, block, head_dim]
    v: torch.Tensor
    nbytes: int


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int = 16):
        if block < 1:
            raise ValueError("block must be >= 1")
        self.block = block
        self.budget = max(0, int(budget_bytes))
        self._blocks: collections.OrderedDict[tuple, Block] = collections.OrderedDict()
        self._roots: dict[object, int] = {}
        self._ids = itertools.count(1)
        self.nbytes = 0
        self.queried_tokens = 0    # prompt tokens of the requests looked up
        self.hit_tokens = 0        # of those, read from the cache instead of computed
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def _root(self, root: object) -> int:
        rid = self._roots.get(root)
        if rid is None:
            rid = self._roots[root] = -next(self._ids)
        return rid

    def _chain(self, root: object, ids: list[int]) -> list[Block]:
        """The cached blocks that begin ``ids``, leaving at least its last token to compute (its
        logits give the first new token)."""
        parent = self._roots.get(root)
        found: list[Block] = []
        if parent is None:
            return found
        b = self.block
        for start in range(0, len(ids) - 1 - b + 1, b):
            blk = self._blocks.get((parent, tuple(ids[start:start + b])))
            if blk is None:
                break
            found.append(blk)
            parent = blk.id
        return found

    def peek(self, root: object, ids: list[int]) -> int:
        """How many blocks of ``ids`` ``match`` would find (no side effects)."""
        return len(self._chain(root, ids))

    def match(self, root: object, ids: list[int]) -> list[Block]:
        """``_chain``'s blocks, counted as a hit and made the most recently used."""
        self.queried_tokens += len(ids)
        if not self.enabled:
            return []
        found = self._chain(root, ids)
        for blk in reversed(found):  # the ancestors end up more recently used than their leaves
            self._blocks.move_to_end(blk.key)
        self.hit_tokens += len(found) * self.block
        return found

    def insert(self, root: object, ids: list[int], k_row: torch.Tensor, v_row: torch.Tensor) -> int:
        """Keep the full blocks of ``ids`` (a prompt whose keys and values are ``k_row``/``v_row``,
        [layers, kv_heads, tokens, head_dim]) that are not cached yet. Returns how many it added."""
        if not self.enabled:
            return 0
        parent = self._root(root)
        b = self.block
        added = 0
        chain: list[Block] = []
        for start in range(0, len(ids) - b + 1, b):
            key = (parent, tuple(ids[start:start + b]))
            blk = self._blocks.get(key)
            if blk is None:
                k = k_row[:, :, start:start + b].clone()
                v = v_row[:, :, start:start + b].clone()
                nbytes = k.numel() * k.element_size() * 2
                if nbytes > self.budget:
                    break
                blk = Block(next(self._ids), root, key, k, v, nbytes)
                self._blocks[key] = blk
                self.nbytes += nbytes
                added += 1
            chain.append(blk)
            parent = blk.id
        for blk in reversed(chain):
            self._blocks.move_to_end(blk.key)
        self._evict(keep={blk.key for blk in chain})
        return added

    def _evict(self, keep: set):
        while self.nbytes > self.budget and self._blocks:
            key = next((k for k in self._blocks if k not in keep), None)
            if key is None:
                return
            blk = self._blocks.pop(key)
            self.nbytes -= blk.nbytes
            self.evictions += 1

    def drop(self, root: object) -> None:
        """Forget every block under ``root`` (its adapter left memory: a reload may differ)."""
        if self._roots.pop(root, None) is None:
            return
        for key in [k for k, blk in self._blocks.items() if blk.root == root]:
            self.nbytes -= self._blocks.pop(key).nbytes
