"""Padding-free attention for machines without flash-attention (CPU, older GPUs).

trl's padding-free collator concatenates a batch into one row and passes the sequence
boundaries as ``cu_seq_lens_q``. Flash-attention reads them directly; plain SDPA would need
a (tokens x tokens) block-diagonal mask, which costs attention over the whole row. This
function runs SDPA with ``is_causal=True`` on each sequence in turn, so the work is the
sum of the sequences' own attention and no pad token is ever computed. Without boundaries
(generation, evaluation) it is plain SDPA.
"""

from __future__ import annotations

NAME = "modelmill_varlen"


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                is_causal=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    # A sliding-window layer needs its window: the masked SDPA path (block-diagonal and windowed
    # mask, built by transformers from the position ids) is exact there, if slower.
    if cu is None or kwargs.get("sliding_window") or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    # query: [1, heads, tokens, head_dim]; key/value: [1, kv_heads, tokens, head_dim]
    gqa = key.shape[1] != query.shape[1]
    bounds = cu.tolist()
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    if bounds[0] != 0 or bounds[-1] != query.shape[2] or min(lengths) < 0:
        raise ValueError(f"cu_seq_lens_q {bounds} does not cover the {query.shape[2]} tokens of the batch")
    # split, not slicing: the backward of split is one cat, while each slice's backward writes its
    # gradient into a zero tensor the size of the whole batch (3 x sequences x layers of them a step)
    outs = [
        torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True, enable_gqa=gqa)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
        if q.shape[2] > 0
    ]
    out = torch.cat(outs, dim=2)  # [1, heads, tokens, head_dim]
    return out.transpose(1, 2).contiguous(), None  # [1, tokens, heads, head_dim], as sdpa returns


def register() -> str:
    """Register the function under NAME with transformers (idempotent) and return NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
