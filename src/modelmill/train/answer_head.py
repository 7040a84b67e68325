"""Send only the answer positions through trl's fused LM head on every device, CPU included.

trl's SFT trainer computes the loss with a fused LM head (``trl.trainer.utils.add_fused_lm_head``)
that projects only the positions whose next-token label is not -100 -- but only on Triton devices
(CUDA, XPU). Elsewhere it projects every position, because on compiled backends (XLA, Neuron) a
number of positions that changes every batch would change the tile shapes and force a recompile.
Eager CPU has no such cost, and there projecting every position is the largest waste of a LoRA
step: with the loss on answers only (a classification label is about 3 of an example's 160 tokens),
the vocab x hidden projection (49152 x 576 for SmolLM2), its backward and trl's recomputation of it
in the backward run for logits that nobody reads -- 45% of a SmolLM2-135M LoRA step on 2 CPU
cores. The loss is the same: the same log-probabilities of the same answer tokens, averaged over
the same count.
"""

from __future__ import annotations

_MARK = "_modelmill_answers_only"


def score_answers_only() -> bool:
    """Make trl's fused LM head project only labelled positions on CPU too (idempotent).

    Returns whether the head now does; False leaves trl exactly as it was, which happens when
    trl is missing or its internals no longer look as this patch expects.
    """
    import inspect

    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None:
        return False
    if getattr(decide, _MARK, False):
        return True
    # The patched name must decide only whether positions are compacted (trl 1.x: one call, in
    # add_fused_lm_head); the kernel choice reads its own copy in trl.kernels.chunked_logprob.
    try:
        module_src = inspect.getsource(trl_utils)
        head_src = inspect.getsource(trl_utils.add_fused_lm_head)
    except (AttributeError, OSError, TypeError):
        return False
    if module_src.count("_use_triton(") != 1 or "compact = _use_triton(hidden_states.device)" not in head_src:
        return False

    def compact_here(device) -> bool:
        # Eager CPU: indexing the labelled positions costs nothing to recompile
        return device.type == "cpu" or decide(device)

    setattr(compact_here, _MARK, True)
    compact_here.__wrapped__ = decide  # trl's own, for whoever needs it back (tests)
    trl_utils._use_triton = compact_here
    return True
