"""Constrained decoding for OpenAI ``response_format`` (JSON mode and JSON schema) with xgrammar.

One :class:`JsonGrammars` per engine compiles and caches grammars for the engine's tokenizer;
each constrained request (or row) gets its own :class:`JsonConstraint`. Every decode step the
engine masks the batch's logits with :func:`apply_constraints`, samples, then calls
:meth:`JsonConstraint.accept` with the chosen token; it ends the row when
:attr:`JsonConstraint.done` turns true, or when it samples end-of-sequence (once the JSON is
complete, the mask allows only the stop tokens).

    grammars = JsonGrammars(tokenizer, vocab_size=model.config.vocab_size)
    c = grammars.constraint(params.json_schema)      # {} or None: any JSON object
    apply_constraints(logits, [c, None, ...])        # rows without a constraint are untouched
    c.accept(token_id); c.done
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from modelmill.serve.engine import EngineError

if TYPE_CHECKING:
    import torch

# Grammars for this many distinct schemas stay compiled; clients can send endless variants.
_CACHE_SIZE = 64
# Whitespace allowed between JSON tokens: enough for pretty-printing a few levels deep, but
# a small model stuck on "\n\n\n..." cannot burn its whole max_tokens on it.
_MAX_WHITESPACE = 20
# xgrammar prefixes its C++ errors with "[12:00:00] /project/cpp/file.cc:123: ".
_CPP_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


class JsonGrammars:
    """Compiles JSON grammars for one tokenizer and vocabulary; build one per engine.

    ``vocab_size`` is the model's (rows of ``lm_head``), which may exceed ``len(tokenizer)``
    (SmolLM2: 49152); ids without a token are never allowed. ``stop_token_ids`` defaults to
    the tokenizer's end-of-sequence token; pass the generation config's list when it has more.
    Thread-safe: requests may ask for constraints from any thread.
    """

    def __init__(self, tokenizer, vocab_size: int, *, stop_token_ids: list[int] | None = None):
        import torch
        import xgrammar as xgr

        if stop_token_ids is None and tokenizer.eos_token_id is not None:
            stop_token_ids = [tokenizer.eos_token_id]
        detected = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                      stop_token_ids=stop_token_ids)
        # xgrammar treats special tokens (<|im_start|>, <|endoftext|>...) as ordinary text and
        # would allow them inside JSON strings. An empty entry is never allowed, so blank them.
        special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        vocab = [""] * vocab_size
        for token, i in tokenizer.get_vocab().items():
            if i < vocab_size and i not in special:
                vocab[i] = token
        self.info = xgr.TokenizerInfo.from_vocab_and_metadata(vocab, detected.dump_metadata())
        self.vocab_size = vocab_size
        self.stop_token_ids: list[int] = list(self.info.stop_token_ids)
        # We cache (and bound) compiled grammars ourselves, so xgrammar's unbounded cache is off.
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=min(8, os.cpu_count() or 1),
                                             cache_enabled=False)
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        # A bitmask row that allows only the stop tokens: what "done" looks like.
        stop_only = torch.zeros(xgr.get_bitmask_shape(1, vocab_size)[1], dtype=torch.int64)
        for t in self.stop_token_ids:
            stop_only[t // 32] |= 1 << (t % 32)
        self._stop_only = _to_int32(stop_only)

    def constraint(self, schema: dict | None) -> JsonConstraint:
        """A fresh matcher for one request: ``None``/``{}`` is any JSON object, else a JSON schema.

        An unusable schema raises :class:`EngineError` 400 with xgrammar's reason.
        """
        return JsonConstraint(self, self.compiled(schema))

    def compiled(self, schema: dict | None):
        """The ``xgrammar.CompiledGrammar`` for ``schema``, compiled once and then cached."""
        if schema is not None and not isinstance(schema, dict):
            raise EngineError(f"response_format.json_schema.schema must be a JSON object, got "
                              f"{type(schema).__name__}", status=400, param="response_format")
        # Not sort_keys: property order is meaningful, the output follows the schema's order.
        key = json.dumps(schema or {}, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
                return grammar
            grammar = self._compile(schema or {}, key)
            self._cache[key] = grammar
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return grammar

    def _compile(self, schema: dict, text: str):
        if not schema:
            # json_object mode: an object at the top (xgrammar's built-in JSON grammar also
            # allows arrays), with any keys and values inside.
            return self._compiler.compile_json_schema('{"type": "object"}', strict_mode=False,
                                                      max_whitespace_cnt=_MAX_WHITESPACE)
        try:
            return self._compiler.compile_json_schema(text, max_whitespace_cnt=_MAX_WHITESPACE)
        except (RuntimeError, ValueError, TypeError) as e:
            reason = _CPP_PREFIX.sub("", str(e).strip()) or type(e).__name__
            raise EngineError(f"response_format.json_schema.schema is not a usable JSON schema: "
                              f"{reason}. Fix the schema (see https://json-schema.org) or use "
                              f'{{"type": "json_object"}}', status=400, param="response_format") from None


class JsonConstraint:
    """The grammar state of one generation: which tokens may come next, and whether it is done."""

    def __init__(self, grammars: JsonGrammars, compiled):
        import xgrammar as xgr

        self.grammars = grammars
        self._matcher = xgr.GrammarMatcher(compiled)
        self._done = False

    @property
    def done(self) -> bool:
        """True when the JSON is complete and only a stop token may follow (or one was accepted)."""
        return self._done

    def accept(self, token_id: int) -> None:
        """Advance past the sampled token. A rejected token means the mask was not applied: a bug."""
        m = self._matcher
        if not m.accept_token(int(token_id)):
            raise EngineError(f"internal error: token {token_id} does not fit the response_format "
                              f"grammar (the logits were not masked)", status=500, code="grammar_error")
        if m.is_terminated():
            self._done = True
        elif m.is_completed():
            # Complete is not enough: after "12" a number may go on to "123". Done means the
            # grammar allows nothing but the stop tokens.
            row = self._fill()
            self._done = not bool((row & ~self.grammars._stop_only).any())

    def _fill(self, bitmask=None, index: int = 0):
        """Write the next-token mask into ``bitmask[index]`` (a new 1-row mask when None)."""
        import xgrammar as xgr

        if bitmask is None:
            bitmask = xgr.allocate_token_bitmask(1, self.grammars.vocab_size)
        if self._matcher.is_terminated():
            bitmask[index] = self.grammars._stop_only
        else:
            self._matcher.fill_next_token_bitmask(bitmask, index)
        return bitmask[index]


def apply_constraints(logits: torch.Tensor, constraints: list[JsonConstraint | None]) -> None:
    """Mask, in place, the rows of ``logits`` [rows, vocab] that have a constraint: tokens the
    grammar forbids become -inf. Rows whose constraint is None are left exactly as they were."""
    import xgrammar as xgr

    if len(constraints) != logits.shape[0]:
        raise ValueError(f"{len(constraints)} constraints for {logits.shape[0]} rows of logits")
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return
    vocab_size = constraints[rows[0]].grammars.vocab_size
    if logits.shape[-1] < vocab_size:
        raise ValueError(f"logits have {logits.shape[-1]} columns, the grammar's vocabulary {vocab_size}")
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], vocab_size)
    for i in rows:
        constraints[i]._fill(bitmask, i)
    bitmask = bitmask.to(logits.device, non_blocking=True)
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=rows)
    if logits.shape[-1] > vocab_size:  # columns no token maps to
        logits[rows, vocab_size:] = float("-inf")


def _to_int32(bits):
    """int64 words holding 32 bits each -> xgrammar's int32 bitmask words (same bit pattern)."""
    import torch

    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
