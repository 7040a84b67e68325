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


def test_an_engine_started_after_another_loaded_an_adapter_decodes_on_every_thread(tiny_model, adapters):
    """The adapter loader runs with one OpenMP thread; a thread created after that would start with
    one too. Each engine sets its own thread's count to the process default."""
    async def main():
        first = HFEngine("tiny", str(tiny_model), max_batch_size=2, dtype="float32")
        await first.start()
        ids = first.tokenizer("hello")["input_ids"]
        async for _ in first.generate(GenerationRequest("r", ids, SamplingParams(max_tokens=1, ignore_eos=True),
                                                        AdapterRef("plain", str(adapters["plain"])))):
            pass
        assert first._loader.submit(torch.get_num_threads).result() == 1
        second = HFEngine("tiny", str(tiny_model), max_batch_size=2, dtype="float32")
        await second.start()
        counts = first.threads, second.threads
        await first.shutdown()
        await second.shutdown()
        return counts

    assert run(main()) == (torch.get_num_threads(), torch.get_num_threads())


def test_an_engine_built_on_a_thread_created_after_the_embeddings_thread_still_gets_every_thread(tiny_model):
    """A server builds its engines on worker threads (asyncio.to_thread); a retrieval request before
    the first chat one starts the one-thread embeddings thread first. The engine still gets the
    process's count, not the one a thread created after that starts with."""
    import threading

    from modelmill.models.embedder import embedding_executor

    embedding_executor().submit(lambda: None).result()
    built = {}

    def build():  # a thread created now starts with the count the embeddings thread left
        built["start"] = torch.get_num_threads()
        built["engine"] = HFEngine("tiny", str(tiny_model), max_batch_size=2, dtype="float32")

    t = threading.Thread(target=build)
    t.start()
    t.join()

    async def main():
        await built["engine"].start()
        await built["engine"].shutdown()
        return built["engine"].threads

    assert built["start"] == 1 < torch.get_num_threads() or torch.get_num_threads() == 1
    assert run(main()) == torch.get_num_threads()


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
        # no prefix cache: the second round would read the first's prompts (tested on its own below)
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=8, dtype="float32", prefix_cache_mb=0)
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



def test_newcomers_joining_a_mixed_batch_leave_its_stacked_adapters_in_place(tiny_model, adapters, tmp_path,
                                                                             monkeypatch):
    """Rows decoding over three adapters keep one stacked copy of them per layer: two newcomers on
    two of those adapters, prefilled mid-decode, read their own adapters' matrices and do not make
    the next decode step stack all three again. Every request still gets what it gets alone."""
    import shutil

    from modelmill.serve import multilora

    builds = []
    real_stacked = multilora.MultiLoraLinear._stacked

    def counting(self, rows):
        if self.name.endswith("layers.0.self_attn.o_proj") and self._stack_key != rows.group_key:
            builds.append(rows.group_key)
        return real_stacked(self, rows)

    monkeypatch.setattr(multilora.MultiLoraLinear, "_stacked", counting)
    paths = []
    for i in range(3):
        p = tmp_path / f"mix{i}"
        shutil.copytree(adapters["plain" if i % 2 else "rslora"], p)
        paths.append(p)

    async def main():
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=8, max_loras=4, dtype="float32", prefix_cache_mb=0)
        await eng.start()
        ids = eng.tokenizer("hello there")["input_ids"]

        async def one(i, tag, tokens, started=None):
            toks = []
            async for o in eng.generate(GenerationRequest(f"{tag}{i}", ids, SamplingParams(
                    max_tokens=tokens, temperature=0, ignore_eos=True), AdapterRef(f"mix{i}", str(paths[i])))):
                toks += o.token_ids
                if started is not None and len(toks) >= 2:
                    started.set()
            return toks

        alone = [await one(i, "a", 6) for i in range(3)]
        builds.clear()
        started = asyncio.Event()
        long = [asyncio.ensure_future(one(i, "l", 24, started if i == 0 else None)) for i in range(3)]
        await started.wait()
        newcomers = await asyncio.gather(one(0, "n", 6), one(1, "n", 6))
        joined = await asyncio.gather(*long)
        await eng.shutdown()
        return alone, newcomers, joined

    alone, newcomers, joined = run(main())
    assert newcomers == alone[:2] and [t[:6] for t in joined] == alone
    assert len(builds) == 1 and len(builds[0]) == 3  # the three decoding adapters, stacked once


PREFIX = ("You are a careful assistant for a pharmacy. Read the review, decide whether it is positive, "
          "neutral or negative, and say why in one sentence.\n\nReview: ")
ENDINGS = ["it worked", "terrible side effects, I stopped after a week", "no change at all", "it worked",
           "my headaches are gone and I sleep well again"]


def _prefix_run(tiny_model, refs, prefix_cache_mb, rounds):
    """Greedy tokens and logprobs of PREFIX + each ending with its adapter, over ``rounds``
    (each a list of indices run together), on an engine with that prefix cache; and what it prefilled."""
    async def main():
        eng = HFEngine("tiny", str(tiny_model), max_batch_size=8, dtype="float32", prefix_cache_mb=prefix_cache_mb)
        await eng.start()
        prefilled = []
        real_forward = eng._forward
        eng._forward = lambda ids, pos, st: (prefilled.append(tuple(ids.shape)) if st.mode == "prefill" else None) \
            or real_forward(ids, pos, st)

        async def one(i, tag):
            ids = eng.tokenizer(PREFIX + ENDINGS[i])["input_ids"]
            toks, lps = [], []
            async for o in eng.generate(GenerationRequest(f"{tag}{i}", ids, SamplingParams(
                    max_tokens=5, temperature=0, ignore_eos=True, logprobs=0), refs[i])):
                toks += o.token_ids
                lps += [lp for _, _, lp, _ in o.logprobs or []]
            return toks, lps

        out = []
        for r, idx in enumerate(rounds):
            out.append(await asyncio.gather(*(one(i, f"r{r}-") for i in idx)))
        st = eng.stats()
        await eng.shutdown()
        return out, prefilled, st

    return run(main())


def test_prefix_cache_reads_shared_prompt_blocks_and_changes_no_token(tiny_model, adapters):
    """Prompts that begin alike (a system prompt, an instruction) reuse the cached keys and values of
    that beginning, per adapter, and get the same tokens as without the cache."""
    refs = [None, AdapterRef("plain", str(adapters["plain"])), AdapterRef("rslora", str(adapters["rslora"])),
            AdapterRef("rslora", str(adapters["rslora"])), None]
    rounds = [[0], [1], [2, 3, 4], [0, 1, 2, 3, 4]]
    off, prefilled_off, st_off = _prefix_run(tiny_model, refs, 0, rounds)
    on, prefilled_on, st_on = _prefix_run(tiny_model, refs, 64, rounds)
    for a, b in zip(off, on):
        for (ta, la), (tb, lb) in zip(a, b):
            assert ta == tb
            assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4
    # adapters give other tokens than the base model: a block cached under one must not serve another
    assert off[3][0][0] != off[3][1][0] or off[3][0][0] != off[3][2][0]
    assert st_off.prefix_cached_tokens == 0 and st_on.prompt_tokens == st_off.prompt_tokens
    assert st_on.prefix_cached_tokens > 0
    computed = lambda shapes: sum(r * n for r, n in shapes)  # noqa: E731 - padded tokens computed
    assert computed(prefilled_on) < computed(prefilled_off)


def test_newcomers_sharing_an_uncached_prefix_compute_it_once(tiny_model):
    """Several new prompts with a common beginning that nothing cached yet: the shortest is prefilled
    first and the others read its blocks, in the same step."""
    refs = [None] * len(ENDINGS)
    off, _, _ = _prefix_run(tiny_model, refs, 0, [[0, 1, 2, 4]])
    on, prefilled, st = _prefix_run(tiny_model, refs, 64, [[0, 1, 2, 4]])
    assert [t for t, _ in off[0]] == [t for t, _ in on[0]]
    assert prefilled[0][0] == 1                        # the leader, alone
    assert sum(r for r, _ in prefilled) == 4           # each prompt prefilled once
    assert st.prefix_cached_tokens >= 3 * 24           # the three others read the shared blocks


def _first_tokens_one_by_one(folder, prompts):
    """Each prompt's first greedy token with its log-probability and top 3, one request after
    another on one engine with a prefix cache (so later prompts read earlier ones' blocks)."""
    async def main():
        eng = HFEngine(folder.name, str(folder), max_batch_size=4, dtype="float32", prefix_cache_mb=16)
        await eng.start()
        got = []
        for i, ids in enumerate(prompts):
            async for o in eng.generate(GenerationRequest(f"r{i}", ids, SamplingParams(
                    max_tokens=1, temperature=0, ignore_eos=True, logprobs=3))):
                if o.logprobs:
                    got.append(o.logprobs[0])
        st = eng.stats()
        await eng.shutdown()
        return got, st

    return run(main())


def _assert_models_own(got, want):
    """The served first tokens are the model's own: argmax, its log-probability and the top 3."""
    assert len(got) == len(want)
    for (tid, _, lp, top), w in zip(got, want):
        assert tid == int(w.argmax())
        assert lp == pytest.approx(float(w[tid]), abs=1e-4)
        assert [t.logprob for t in top] == pytest.approx(w.topk(3).values.tolist(), abs=1e-4)


def test_prefix_cache_with_sliding_window_layers_gives_the_models_own_logprobs(tmp_path):
    """Gemma 3 mixes sliding-window and full layers: a prompt prefilled after cached blocks must
    still see exactly its window in each layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from modelmill.models.tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=6,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # large enough that the window changes the outputs
    model.save_pretrained(tmp_path / "g3")
    tok.save_pretrained(tmp_path / "g3")
    prompts = [tok(PREFIX + e)["input_ids"] for e in ENDINGS[:3]]
    with torch.no_grad():
        want = [torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1) for ids in prompts]
        model.config.sliding_window = 10 ** 6
        unwindowed = torch.log_softmax(model(torch.tensor([prompts[1]])).logits[0, -1].float(), -1)
    assert (unwindowed - want[1]).abs().max() > 1e-3        # the window matters for this model

    got, st = _first_tokens_one_by_one(tmp_path / "g3", prompts)  # 1 and 2 read the blocks 0 left
    assert st.prefix_cached_tokens >= 2 * 24
    _assert_models_own(got, want)


def test_a_model_that_caps_its_attention_scores_is_served_with_the_cap(tmp_path):
    """Gemma 2 caps its attention scores (tanh(s / c) * c) before the softmax: prefill (plain and after
    cached prefix blocks) and decode must all cap, or the served tokens are not the model's."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from modelmill.models.tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=64,
                       attn_logit_softcapping=2.0, final_logit_softcapping=None, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                       attn_implementation="eager")
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # attention scores far beyond the cap of 2
    model.save_pretrained(tmp_path / "g2")
    tok.save_pretrained(tmp_path / "g2")
    prompts = [tok(PREFIX + e)["input_ids"] for e in ENDINGS[:2]]
    with torch.no_grad():
        want = [torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1) for ids in prompts]
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        uncapped = torch.log_softmax(model(torch.tensor([prompts[0]])).logits[0, -1].float(), -1)
    assert (uncapped - want[0]).abs().max() > 1e-2             # the cap matters for this model

    got, st = _first_tokens_one_by_one(tmp_path / "g2", prompts)  # 1 is prefilled after 0's cached blocks
    assert st.prefix_cached_tokens > 0
    _assert_models_own(got, want)


def test_prefix_cache_keeps_its_budget_and_evicts_leaves_first():
    from modelmill.serve.prefix_cache import PrefixCache

    k = torch.arange(2 * 3 * 40 * 4, dtype=torch.float32).view(2, 3, 40, 4)   # [layers, heads, tokens, dim]
    block_bytes = 2 * 2 * 3 * 8 * 4 * 4
    pc = PrefixCache(budget_bytes=5 * block_bytes, block=8)
    ids = list(range(40))
    assert pc.insert("base", ids, k, k + 1) == 5 and pc.nbytes == 5 * block_bytes
    found = pc.match("base", ids)
    assert len(found) == 4                                     # the last token is always computed
    assert torch.equal(found[1].k, k[:, :, 8:16]) and torch.equal(found[1].v, k[:, :, 8:16] + 1)
    assert pc.match("adapter", ids) == [] and pc.match("base", [99] + ids[1:]) == []
    other = [7] * 17
    assert pc.insert("base", other, k, k) == 2                 # over budget: the oldest leaves go first
    assert pc.nbytes <= 5 * block_bytes
    assert len(pc.match("base", ids)) == 3 and len(pc.match("base", other)) == 2
    pc.drop("base")
    assert len(pc) == 0 and pc.nbytes == 0 and pc.match("base", ids) == []
    assert PrefixCache(0).insert("base", ids, k, k) == 0       # 0 MB: off


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
        kinds = {n.rsplit(".", 1)[1]: type(m.base).__name__ for n, m in eng._lora.rows.layers.items()}
        await eng.shutdown()
        return out, kinds

    f32, kinds32 = run(top5("none"))
    i8, kinds8 = run(top5("int8"))
    # q/k/v and gate/up read one input each and are served as one layer each
    assert kinds32 == dict.fromkeys(["q_proj+k_proj+v_proj", "o_proj", "gate_proj+up_proj", "down_proj"], "Linear")
    assert kinds8 == {**dict.fromkeys(kinds32, "Int8Linear"), "down_proj": "Linear"}  # down_proj stays float32
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


def test_int8_layers_side_by_side_compute_what_each_computes():
    """q/k/v (and gate/up) are served as one int8 layer: each output channel keeps its own scale,
    so the joined layer gives each part's own result."""
    from modelmill.models.int8 import Int8Linear
    from modelmill.serve.multilora import _side_by_side

    torch.manual_seed(0)
    parts = [Int8Linear(torch.nn.Linear(64, n, bias=b)) for n, b in ((48, True), (16, False), (16, True))]
    joined = _side_by_side(parts)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        want = torch.cat([p(x) for p in parts], dim=-1)
        got = joined(x)
    assert joined.out_features == 80 and joined.in_features == 64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_base_layer_gives_its_own_result_whichever_way_round_it_multiplies():
    """Up to weights_first_max rows a float32 base layer on a CPU computes (W @ x.T).T (another,
    faster MKL kernel at a few rows): the same numbers, bias included, for any row count."""
    from modelmill.serve.multilora import LoraContext, MultiLoraLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40)
    ctx = LoraContext()
    ctx.weights_first_max = 64
    layer = MultiLoraLinear(lin, "x", ctx)
    with torch.inference_mode():
        for shape in [(1, 1, 48), (2, 3, 48), (64, 48), (5, 20, 48)]:     # 1, 6, 64 and 100 rows
            x = torch.randn(*shape)
            got = layer(x)
            assert got.shape == (*shape[:-1], 40) and got.is_contiguous()
            torch.testing.assert_close(got, lin(x))


def test_layers_of_one_input_are_computed_once_and_any_call_gets_its_own_output(tiny_model):
    """Wrapped, a decoder block's q/k/v and gate/up run as one layer each, computed once per block
    call; the model's output is unchanged, and a part called with some other input still gets
    what its own layer would give."""
    from transformers import AutoModelForCausalLM

    from modelmill.serve.multilora import LoraContext, SharedInputPart, wrap_linears

    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    attn0 = plain.model.layers[0].self_attn
    q, k = attn0.q_proj, attn0.k_proj
    ctx = LoraContext()
    wrapped = wrap_linears(model, ctx, 2, "cpu")
    assert set(wrapped) == {n for n, m in plain.named_modules() if type(m) is torch.nn.Linear and ".layers." in n}
    block = model.model.layers[0]
    assert isinstance(block.self_attn.k_proj, SharedInputPart) and isinstance(block.mlp.up_proj, SharedInputPart)
    calls = []
    for layer in ctx.rows.layers.values():
        layer.register_forward_hook(lambda m, i, o: calls.append(m.name))
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)
        layers = len(model.model.layers)
        assert len(calls) == 4 * layers and len(set(calls)) == 4 * layers  # each joined layer once
        x, other = torch.randn(2, 3, q.in_features), torch.randn(2, 3, q.in_features)
        got_q = block.self_attn.q_proj(x)                              # computes all three for x
        got_k = block.self_attn.k_proj(other)                          # another input: computed again
        torch.testing.assert_close(got_q, q(x))
        torch.testing.assert_close(got_k, k(other))
        torch.testing.assert_close(block.self_attn.v_proj(other), attn0.v_proj(other))
    assert block.self_attn.k_proj.weight.shape == k.weight.shape
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())


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
