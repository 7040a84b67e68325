"""The transformers engine without HTTP: sampling filters, adapter files, many-adapter batches,
the LRU cache under pressure, and failures that must stay with their own request."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from modelmill.serve.engine import AdapterRef, EngineError, GenerationRequest, SamplingParams
from modelmill.serve.hf_engine import HFEngine, _find_stop, sample_rows
from modelmill.serve.multilora import load_adapter


def test_sampling_filters_keep_only_allowed_tokens():
    torch.manual_seed(0)
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(4, 1)
    params = [SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0, top_p=0.5),
              SamplingParams(temperature=1.0, min_p=0.3), SamplingParams(temperature=0.0)]
    seen = [set() for _ in params]
    for draw in range(300):
        gens = [torch.Generator().manual_seed(draw * 10 + i) for i in range(4)]
        out = sample_rows(logits.clone(), params, gens)
        for i, t in enumerate(out.tolist()):
            seen[i].add(t)
    assert seen[0] == {0, 1}                     # top_k 2
    assert seen[1] == {0}                        # p(0) = 0.64 > 0.5 already
    assert seen[2] == {0, 1}                     # p(1)/p(0) = 0.37 >= 0.3, p(2)/p(0) = 0.14 < 0.3
    assert seen[3] == {0}                        # greedy


def test_a_seed_reproduces_a_row_whatever_shares_its_batch():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    p = SamplingParams(temperature=1.0)
    a = sample_rows(logits.clone(), [p] * 3, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    b = sample_rows(logits[1:2].clone(), [p], [torch.Generator().manual_seed(6)])
    assert a[1] == b[0]


def test_stop_strings_are_found_from_the_earliest():
    assert _find_stop("abc STOP def END", ["END", "STOP"], 0) == (4, "STOP")
    assert _find_stop("abc", ["x"], 0) is None


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    paths = {}
    for i, (name, kw) in enumerate({"plain": {"target_modules": ["q_proj", "v_proj"]},
                                     "rslora": {"target_modules": "all-linear", "use_rslora": True},
                                     "dora": {"target_modules": ["q_proj"], "use_dora": True}}.items()):
        torch.manual_seed(i)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **kw))
        m.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def shapes_of(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    return {n: tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n}


def test_load_adapter_reads_peft_files_and_scales_b(adapters, tiny_model):
    shapes = shapes_of(tiny_model)
    a = load_adapter("plain", adapters["plain"], shapes, torch.float32)
    assert set(a.weights) == {n for n in shapes if n.endswith(("q_proj", "v_proj"))}
    from safetensors.torch import load_file

    raw = load_file(str(adapters["plain"] / "adapter_model.safetensors"))
    key = next(k for k in raw if k.endswith("layers.0.self_attn.q_proj.lora_B.weight"))
    torch.testing.assert_close(a.weights["model.layers.0.self_attn.q_proj"][1], raw[key].t() * 2.0)  # alpha/r
    rs = load_adapter("rslora", adapters["rslora"], shapes, torch.float32)
    key = next(k for k in load_file(str(adapters["rslora"] / "adapter_model.safetensors"))
               if k.endswith("layers.0.mlp.up_proj.lora_B.weight"))
    raw = load_file(str(adapters["rslora"] / "adapter_model.safetensors"))[key]
    torch.testing.assert_close(rs.weights["model.layers.0.mlp.up_proj"][1], raw.t() * 4.0)  # alpha/sqrt(r)


def test_load_adapter_refuses_what_it_cannot_serve(adapters, tiny_model, tmp_path):
    shapes = shapes_of(tiny_model)
    with pytest.raises(EngineError, match="use_dora"):
        load_adapter("dora", adapters["dora"], shapes, torch.float32)
    with pytest.raises(EngineError, match="adapter_config.json is missing"):
        load_adapter("none", tmp_path / "nowhere", shapes, torch.float32)
    wrong = {k: (v[0] + 1, v[1]) for k, v in shapes.items()}
    with pytest.raises(EngineError, match="another base"):
        load_adapter("plain", adapters["plain"], wrong, torch.float32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(EngineError, match="only LoRA"):
        load_adapter("bad", bad, shapes, torch.float32)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("concat_max,group_min", [(12, 2), (12, 99), (0, 2)],
                         ids=["grouped", "concatenated", "per-row-slots"])
def test_many_adapters_with_a_small_cache_all_finish_and_match_alone(tiny_model, adapters, tmp_path, monkeypatch,
                                                                     concat_max, group_min):
    """More distinct adapters waiting than resident slots: every request finishes, in any order,
    with what it returns alone; at most max_loras adapters are ever resident. The three ways of
    applying the adapters (rows grouped by adapter, concatenated, per-row slots) give the same tokens."""
    import shutil

    from modelmill.serve import multilora

    monkeypatch.setattr(multilora, "CONCAT_MAX_ADAPTERS", concat_max)
    monkeypatch.setattr(multilora, "GROUP_MIN_ADAPTERS", group_min)
    taken = []
    monkeypatch.setattr(multilora.MultiLoraLinear, "_grouped",
                        lambda self, *a, _f=multilora.MultiLoraLinear._grouped: taken.append(1) or _f(self, *a))

    paths = []
    for i in range(6):  # six adapters: copies with their own names (the engine keys by name and path)
        p = tmp_path / f"copy{i}"
        shutil.copytree(adapters["plain" if i % 2 else "rslora"], p)
        paths.append(p)

    async def main():
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=4, max_loras=2, dtype="float32")
        await eng.start()
        ids = eng.tokenizer("hello there")["input_ids"]
        peak = []

        async def one(i, tag):
            ref = AdapterRef(f"copy{i}", str(paths[i]))
            toks = []
            async for o in eng.generate(GenerationRequest(f"{tag}{i}", ids, SamplingParams(
                    max_tokens=8, temperature=0, ignore_eos=True), ref)):
                toks += o.token_ids
                peak.append(len(eng.stats().resident_adapters))
            return toks

        alone = [await one(i, "a") for i in range(6)]
        together = await asyncio.gather(*(one(i, "t") for i in range(6)))
        stats = eng.stats()
        await eng.shutdown()
        return alone, together, max(peak), stats

    alone, together, peak, stats = run(main())
    assert together == alone
    assert alone == reference_tokens(tiny_model, paths)
    assert peak <= 2 and stats.adapter_evictions >= 4
    assert bool(taken) == (group_min == 2 and concat_max == 12)  # the grouped path ran where it was chosen
    assert len({tuple(t) for t in alone}) > 1


def test_length_groups_minimise_padded_tokens_plus_a_cost_per_group():
    """The dynamic programme against every way of cutting the sorted lengths into groups."""
    import itertools
    import random

    from modelmill.serve.hf_engine import length_groups

    def cost(lengths, ends, c):
        total, start = 0, 0
        for end in ends:
            total += (end - start) * lengths[end - 1] + c
            start = end
        return total

    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 8)
        lengths = sorted(rng.randint(1, 120) for _ in range(n))
        c = rng.choice([0, 5, 64, 1000])
        ends = length_groups(lengths, c)
        assert ends[-1] == n and ends == sorted(set(ends))
        best = min(cost(lengths, [*cut, n], c) for k in range(n)
                   for cut in itertools.combinations(range(1, n), k))
        assert cost(lengths, ends, c) == best
    assert length_groups([3, 3, 7, 9], 0) == [2, 3, 4]          # free forwards: no padding at all
    assert length_groups([3, 3, 7, 9], 10 ** 6) == [4]          # costly forwards: one group
    assert length_groups([], 64) == []


@pytest.mark.parametrize("group_cost,head_block", [(0, 16), (10 ** 6, 10 ** 6)],
                         ids=["a-group-per-length,head-in-blocks", "one-group,whole-head"])
def test_prompts_of_different_lengths_prefilled_together_match_each_alone(tiny_model, adapters, monkeypatch,
                                                                          group_cost, head_block):
    """Newcomers are prefilled in groups of similar length and the output layer runs in blocks of
    the vocabulary on a CPU: neither may change a request's tokens, whatever shares its batch."""
    from modelmill.serve import hf_engine

    monkeypatch.setattr(hf_engine, "PREFILL_GROUP_COST", group_cost)
    monkeypatch.setattr(hf_engine, "HEAD_BLOCK", head_block)
    texts = ["hi", "hello there", "hello there, how are you today",
             "the cat sat on the mat and looked at the dog for a long while", "hello"]
    refs = [None, AdapterRef("plain", str(adapters["plain"])), AdapterRef("rslora", str(adapters["rslora"])),
            AdapterRef("plain", str(adapters["plain"])), None]

    async def main():
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=8, dtype="float32")
        await eng.start()
        forwards = []
        real_forward = eng._forward
        eng._forward = lambda ids, pos, st: forwards.append((st.mode, tuple(ids.shape))) or real_forward(ids, pos, st)

        async def one(i, tag):
            ids = eng.tokenizer(texts[i])["input_ids"]
            toks = []
            async for o in eng.generate(GenerationRequest(f"{tag}{i}", ids, SamplingParams(
                    max_tokens=6, temperature=0, ignore_eos=True), refs[i])):
                toks += o.token_ids
            return toks

        alone = [await one(i, "a") for i in range(len(texts))]
        forwards.clear()
        together = await asyncio.gather(*(one(i, "t") for i in range(len(texts))))
        lengths = [len(eng.tokenizer(t)["input_ids"]) for t in texts]
        await eng.shutdown()
        return alone, together, [f for f in forwards if f[0] == "prefill"], lengths

    alone, together, prefills, lengths = run(main())
    assert together == alone
    assert len({tuple(t) for t in alone}) > 1
    assert sum(rows for _, (rows, _) in prefills) == len(texts)  # each newcomer prefilled once
    if group_cost == 0:  # forwards cost nothing: every group is of one length, so nothing is padded
        assert sum(rows * length for _, (rows, length) in prefills) == sum(lengths)


def test_a_queue_over_its_limit_is_refused_at_once(tiny_model):
    async def main():
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=1, max_waiting=1, dtype="float32")
        await eng.start()
        ids = eng.tokenizer("hi")["input_ids"]
        p = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
        first = eng.generate(GenerationRequest("r1", ids, p))
        second = eng.generate(GenerationRequest("r2", ids, p))
        with pytest.raises(EngineError) as info:
            eng.generate(GenerationRequest("r3", ids, p))
        assert info.value.status == 429 and info.value.retry_after
        outs = [o async for o in first], [o async for o in second]
        await eng.shutdown()
        return outs

    a, b = run(main())
    assert a[-1].completion_tokens == 50 and b[-1].finish_reason == "length"


def reference_tokens(tiny_model, paths) -> list[list[int]]:
    """Greedy tokens of peft + transformers generate for each adapter (what serving must return)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = torch.tensor([tok("hello there")["input_ids"]])
    out = []
    for p in paths:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), p).eval()
        gen = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def test_int8_serves_the_base_and_its_adapters_as_float32_does(tiny_model, adapters):
    """--quantize int8 smooths and quantizes the base model's q/k/v/o/gate/up projections; the
    adapters, trained on float32 inputs, must still apply (their A is rescaled by the smoothing:
    without that, the all-linear adapter's log-probabilities here are off by about as much as the
    adapter changes them)."""
    paths = [adapters["plain"], adapters["rslora"]]

    async def top5(quantize):
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=4, dtype="float32", quantize=quantize)
        await eng.start()
        ids = eng.tokenizer("hello there, how are you today")["input_ids"]
        out = []
        for i, p in enumerate([None, *paths]):
            ref = AdapterRef(f"a{i}", str(p)) if p else None
            async for o in eng.generate(GenerationRequest(f"{quantize}{i}", ids, SamplingParams(
                    max_tokens=1, temperature=0, ignore_eos=True, logprobs=5), ref)):
                if o.logprobs:
                    out.append({t.token_id: t.logprob for t in o.logprobs[0][3]})
        kinds = [type(m.base).__name__ for m in eng._lora.rows.layers.values()]
        await eng.shutdown()
        return out, kinds

    f32, kinds32 = run(top5("none"))
    i8, kinds8 = run(top5("int8"))
    assert set(kinds32) == {"Linear"}
    assert kinds8.count("Int8Linear") == 6 * kinds8.count("Linear")  # down_proj stays float32
    assert len({max(d, key=d.get) for d in f32}) > 1  # the adapters change the answer
    for want, got in zip(f32, i8):
        assert max(got, key=got.get) == max(want, key=want.get)
        shared = set(want) & set(got)
        assert len(shared) >= 4 and max(abs(want[t] - got[t]) for t in shared) < 0.05, (want, got)


def test_int8_is_refused_where_it_does_not_apply(tiny_model):
    async def start(**kw):
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=2, quantize="int8", **kw)
        await eng.start()
        await eng.shutdown()

    with pytest.raises(EngineError, match="--quantize int8 runs on a CPU in float32"):
        run(start(dtype="bfloat16"))


def test_an_int8_row_does_not_depend_on_the_rest_of_its_batch():
    """One quantization range for a whole batch would make a request's tokens depend on who
    else is served with it; each row is scaled to its own range."""
    from modelmill.models.int8 import Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear(lin)
    x = torch.randn(3, 64)
    loud = torch.randn(5, 64) * 50
    with torch.inference_mode():
        alone = q(x)
        batched = q(torch.cat([loud, x, loud]))[5:8]
        near = lin(x)
    assert torch.allclose(alone, batched, rtol=0, atol=1e-6)
    assert (alone - near).abs().max() < 0.05 * near.abs().max()


def test_logprobs_of_a_model_that_caps_its_logits_are_the_models_own(tmp_path):
    """Gemma 2 caps its logits (tanh(x / c) * c) in its forward: the engine samples from its own
    output layer, so it must cap too, or its probabilities (and any sampling) differ from the model's."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from modelmill.models.tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                       final_logit_softcapping=5.0, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)  # logits far beyond the cap, so capping changes them
    model.save_pretrained(tmp_path / "g2")
    tok.save_pretrained(tmp_path / "g2")
    ids = tok("the cat sat on the mat")["input_ids"]
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert float(want.max() - want.min()) < 10.0 + 1e-4  # capped at +-5

    async def main():
        eng = HFEngine("g2", str(tmp_path / "g2"), max_batch_size=4, dtype="float32")
        await eng.start()
        outs = [o async for o in eng.generate(GenerationRequest("r", ids, SamplingParams(
            max_tokens=1, temperature=0, ignore_eos=True, logprobs=3)))]
        await eng.shutdown()
        return outs

    outs = run(main())
    tid, _, lp, top = next(o for o in outs if o.logprobs).logprobs[0]
    assert tid == int(want.argmax())
    assert lp == pytest.approx(float(want[tid]), abs=1e-4)
    assert [t.logprob for t in top] == pytest.approx(want.topk(3).values.tolist(), abs=1e-4)
