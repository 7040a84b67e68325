"""The three training speed-ups compute what the plain path computes.

- ``fused_lora``: the fused LoRA forward/backward gives peft's loss and gradients.
- ``answer_head``: trl's fused LM head projects only labelled positions on CPU, same loss.
- ``varlen_attention``: packed sequences with boundaries give each sequence's own logits.

Tiny models built from a config; no network, no download.
"""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from modelmill.train.fused_lora import FusedLoraLinear, fuse_lora_layers  # noqa: E402

ATOL = 1e-5


def tiny_config(**kw) -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, **kw)


def tiny_llama(seed: int = 0, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config())
    model.set_attn_implementation(attn)
    return model.float()


def lora_model(dropout: float = 0.0, seed: int = 0):
    """A peft LoRA model on the tiny Llama with non-zero lora_B, so every LoRA weight gets a gradient."""
    model = get_peft_model(tiny_llama(seed), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                        target_modules="all-linear", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def batch(seed: int = 0, batch_size: int = 2, length: int = 12):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (batch_size, length), generator=gen)
    return ids


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# ---------------------------------------------------------------- fused LoRA


def test_fuse_lora_layers_switches_every_lora_linear_and_keeps_state_dict_keys():
    model = lora_model()
    keys = list(model.state_dict().keys())
    n_lora = sum(type(m) is peft.tuners.lora.layer.Linear for m in model.modules())
    # all-linear on Llama: q, k, v, o, gate, up, down per layer (lm_head excluded)
    assert n_lora == 7 * 2

    assert fuse_lora_layers(model) == n_lora
    assert sum(isinstance(m, FusedLoraLinear) for m in model.modules()) == n_lora
    assert list(model.state_dict().keys()) == keys
    # already fused layers are not counted again
    assert fuse_lora_layers(model) == 0


def test_fused_lora_loss_and_gradients_match_peft():
    ref = lora_model()
    fused = copy.deepcopy(ref)
    assert fuse_lora_layers(fused) > 0
    ref.train()
    fused.train()

    # the fused autograd function is what actually runs in training
    seen = []
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    layer.register_forward_hook(lambda m, i, o: seen.append(type(o.grad_fn).__name__))

    ids = batch()
    loss_ref = ref(input_ids=ids, labels=ids).loss
    loss_fused = fused(input_ids=ids, labels=ids).loss
    assert seen and "LoraLinearFunction" in seen[0]
    torch.testing.assert_close(loss_fused, loss_ref, atol=ATOL, rtol=0)

    loss_ref.backward()
    loss_fused.backward()
    g_ref, g_fused = lora_grads(ref), lora_grads(fused)
    assert g_ref.keys() == g_fused.keys() and len(g_ref) == 2 * 14
    for name in g_ref:
        assert g_ref[name].abs().sum() > 0, name  # meaningful: every LoRA weight has a gradient
        torch.testing.assert_close(g_fused[name], g_ref[name], atol=ATOL, rtol=0, msg=name)
    # the frozen base weights get no gradient on either path
    assert all(p.grad is None for n, p in fused.named_parameters() if "lora_" not in n)


def test_fused_lora_with_dropout_is_stochastic_in_train_and_exact_in_eval():
    ref = lora_model(dropout=0.1)
    fused = copy.deepcopy(ref)
    fuse_lora_layers(fused)
    ids = batch()

    fused.train()
    with torch.no_grad():
        a = fused(input_ids=ids).logits
        b = fused(input_ids=ids).logits
    assert not torch.equal(a, b)

    ref.eval()
    fused.eval()
    with torch.no_grad():
        assert torch.equal(fused(input_ids=ids).logits, ref(input_ids=ids).logits)


class _OneLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 6)


def _one_fused_layer(dropout: float, dtype=torch.float64) -> FusedLoraLinear:
    torch.manual_seed(0)
    model = get_peft_model(_OneLinear().to(dtype), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                              target_modules=["proj"]))
    assert fuse_lora_layers(model) == 1
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.5)
    return layer.train()


def test_fused_lora_dropout_gradients_are_exact():
    """Gradients (x, A, B) under dropout equal the numerical derivatives of the same draw."""
    layer = _one_fused_layer(0.3)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    a = layer.lora_A["default"].weight.detach().clone().requires_grad_()
    b = layer.lora_B["default"].weight.detach().clone().requires_grad_()

    def f(x, a, b):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # the same dropout mask on every call
            return torch.func.functional_call(layer, {"lora_A.default.weight": a, "lora_B.default.weight": b}, (x,))

    out = f(x, a, b)
    assert "LoraLinearFunction" in type(out.grad_fn).__name__
    assert torch.autograd.gradcheck(f, (x, a, b), eps=1e-6, atol=1e-7)


def test_fused_lora_dropout_is_unbiased():
    """Dropout scales kept inputs by 1 / (1 - p): the mean train output is the eval output."""
    layer = _one_fused_layer(0.2, dtype=torch.float32)
    x = torch.randn(4, 8)
    with torch.no_grad():
        layer.eval()
        want = layer(x)
        base = layer.base_layer(x)
        layer.train()
        got = layer(x.expand(20000, 4, 8)).mean(0)  # every row draws its own mask
    lora_part = (want - base).abs().mean()
    # a wrong keep-scale (e.g. no 1 / (1 - p)) would be off by ~20% of the LoRA part
    assert (got - want).abs().mean() < 0.05 * lora_part


def test_fused_adapter_saves_and_loads_into_fresh_peft(tmp_path):
    model = lora_model()
    fuse_lora_layers(model)
    # a training step on the fused path, so the saved weights are the fused ones
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = batch()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()

    loaded = PeftModel.from_pretrained(tiny_llama(0), tmp_path / "adapter")
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=ATOL, rtol=0)
    # and the adapter really changed the output (so the comparison is not vacuous)
    with torch.no_grad(), loaded.disable_adapter():
        assert not torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-3)


# ---------------------------------------------------------------- answers-only LM head


@pytest.fixture()
def trl_utils(monkeypatch):
    """trl's utils module as installed (unpatched: an earlier test in this process may have trained
    in-process, which patches it), with whatever it had restored after the test."""
    utils = pytest.importorskip("trl.trainer.utils")
    original = getattr(utils._use_triton, "__wrapped__", utils._use_triton)
    monkeypatch.setattr(utils, "_use_triton", original)
    return utils


def head_rows(trl_utils, monkeypatch) -> list[int]:
    """A list that gets, per call of trl's fused LM head, how many rows it projected (the real
    function still runs)."""
    rows: list[int] = []
    real = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    return rows


def test_score_answers_only_patches_compaction_but_not_the_kernel_choice(trl_utils):
    from trl.kernels import chunked_logprob

    from modelmill.train.answer_head import score_answers_only

    cpu = torch.device("cpu")
    assert trl_utils._use_triton(cpu) is False
    assert score_answers_only() is True
    patched = trl_utils._use_triton
    assert trl_utils._use_triton(cpu) is True
    assert chunked_logprob._use_triton(cpu) is False  # the Triton kernel is still not chosen on CPU
    assert score_answers_only() is True  # idempotent: no second wrapper
    assert trl_utils._use_triton is patched
    assert trl_utils._use_triton(torch.device("meta")) is False  # other devices keep trl's answer


def test_answers_only_fused_head_loss_matches_plain_loss(trl_utils, monkeypatch):
    from trl.trainer.utils import add_fused_lm_head

    from modelmill.train.answer_head import score_answers_only

    rows = head_rows(trl_utils, monkeypatch)

    model = tiny_llama(0)
    plain = copy.deepcopy(model)
    add_fused_lm_head(model)
    ids = batch(length=16)
    labels = ids.clone()
    labels[:, :12] = -100  # only the answers (last 4 tokens of each row) are scored
    labels[1, 13] = -100
    n_scored = int((labels[:, 1:] != -100).sum())

    want = plain(input_ids=ids, labels=labels)
    want.loss.backward()

    def fused_loss():
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss

    loss_all = fused_loss()  # trl as installed: every position projected on CPU
    assert rows[-1] == ids.shape[0] * (ids.shape[1] - 1)
    torch.testing.assert_close(loss_all, want.loss, atol=ATOL, rtol=0)

    assert score_answers_only() is True
    loss = fused_loss()
    assert rows[-1] == n_scored  # the compact path: only labelled positions
    torch.testing.assert_close(loss, want.loss, atol=ATOL, rtol=0)
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=ATOL, rtol=0, msg=name)

    # a row with no answer at all still gives a differentiable loss
    none = torch.full_like(labels, -100)
    model.zero_grad()
    empty = model(input_ids=ids, labels=none, fused_lm_head=True).loss
    empty.backward()
    assert float(empty.detach()) == 0.0


# ---------------------------------------------------------------- padding-free attention


def _packed(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 128, (n,), generator=gen) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    kwargs = dict(
        input_ids=torch.cat(seqs)[None],
        position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
        cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths), use_cache=False,
    )
    return seqs, kwargs


def test_varlen_attention_packed_logits_match_each_sequence_alone(tmp_path):
    from modelmill.train.varlen_attention import register

    name = register()
    assert register() == name  # idempotent
    ref = tiny_llama(0, attn="sdpa").eval()
    ref.save_pretrained(tmp_path / "tiny")
    # loaded the way sft.py loads it
    packed = LlamaForCausalLM.from_pretrained(tmp_path / "tiny", attn_implementation=name).eval()
    assert packed.config._attn_implementation == name

    lengths = [5, 9, 3]
    seqs, kwargs = _packed(lengths)
    with torch.no_grad():
        got = packed(**kwargs).logits[0]  # [17, vocab]
        want = torch.cat([ref(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        # without the boundaries it is plain causal sdpa over the whole row
        whole = packed(input_ids=kwargs["input_ids"], use_cache=False).logits
        whole_ref = ref(input_ids=kwargs["input_ids"], use_cache=False).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(whole, whole_ref, atol=ATOL, rtol=0)
    # the boundaries matter: the later sequences differ from attending across the whole row
    assert not torch.allclose(whole[0, lengths[0]:], want[lengths[0]:], atol=1e-3)


def test_varlen_attention_packed_gradients_match_each_sequence_alone():
    from modelmill.train.varlen_attention import register

    name = register()
    ref = tiny_llama(0, attn="sdpa").train()
    packed = tiny_llama(0, attn=name).train()
    seqs, kwargs = _packed([4, 7, 6], seed=1)
    labels = torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in seqs])[None]
    packed(**kwargs, labels=labels).loss.backward()
    n = sum(len(s) - 1 for s in seqs)
    total = sum(ref(input_ids=s[None], labels=s[None], use_cache=False).loss * (len(s) - 1) for s in seqs) / n
    total.backward()
    for (pname, p), q in zip(packed.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=ATOL, rtol=0, msg=pname)


@pytest.mark.parametrize("bounds", [[0, 5, 9], [0, 10, 5, 17], [1, 5, 17]], ids=["short", "decreasing", "offset"])
def test_varlen_attention_rejects_malformed_boundaries(bounds):
    from modelmill.train.varlen_attention import register

    name = register()
    model = tiny_llama(0, attn=name).eval()
    _, kwargs = _packed([5, 9, 3])
    cu = torch.tensor(bounds, dtype=torch.int32)
    kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    with torch.no_grad(), pytest.raises(ValueError, match="cu_seq_lens_q"):
        model(**kwargs)


def test_varlen_attention_keeps_the_sliding_window():
    """Windowed models (Mistral, Gemma, ...) must not attend past their window when packed."""
    import copy

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from modelmill.train.varlen_attention import register

    name = register()
    torch.manual_seed(0)
    cfg = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, sliding_window=4)
    ref = MistralForCausalLM(cfg).eval()
    ref.set_attn_implementation("sdpa")
    vl = copy.deepcopy(ref)
    vl.set_attn_implementation(name)
    ids = torch.randint(0, 128, (1, 12))
    cu = torch.tensor([0, 12], dtype=torch.int32)
    with torch.no_grad():
        a = ref(input_ids=ids, use_cache=False).logits
        b = vl(input_ids=ids, position_ids=torch.arange(12)[None], cu_seq_lens_q=cu, cu_seq_lens_k=cu,
               max_length_q=12, max_length_k=12, use_cache=False).logits
    assert (a - b).abs().max().item() < 1e-5


def test_cpu_dropout_mask_is_bernoulli_p_and_follows_torchs_seed():
    from modelmill.train.fused_lora import dropout_mask, keep_probability

    x = torch.empty(400, 500)
    torch.manual_seed(7)
    a = dropout_mask(x, 0.05)
    b = dropout_mask(x, 0.05)
    torch.manual_seed(7)
    again = dropout_mask(x, 0.05)
    assert a.dtype == torch.bool and a.shape == x.shape
    assert torch.equal(a, again) and not torch.equal(a, b)  # torch's generator decides; each call draws anew
    # 200,000 draws: the rate is within 5 standard deviations (0.0024) of p, and so is every column's mean
    assert abs(a.float().mean().item() - 0.05) < 0.0024
    assert abs(a.float().mean(0).std().item() - (0.05 * 0.95 / 400) ** 0.5) < 0.004  # no stuck lanes
    assert abs(keep_probability(x, 0.05) - 0.95) < 1 / 65536
    assert dropout_mask(x, 1e-6) is None  # rounds to no dropout: nothing to mask


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _budget_run(tmp_path, monkeypatch, seconds_per_step: float, budget_s: float, steps: int = 100,
                resume_at: int | None = None):
    """Drive TimeBudget as the Trainer does (optimizer step, scheduler step, on_step_end) with a
    clock where each step takes ``seconds_per_step``; return (callback, lrs of each step, state, control)."""
    from transformers import TrainerControl, TrainerState, TrainingArguments, get_scheduler

    from modelmill.train import callbacks

    clock = _Clock()
    monkeypatch.setattr(callbacks.time, "monotonic", clock)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=1e-3, lr_scheduler_type="linear",
                             warmup_steps=0.1, max_steps=steps, report_to=[], use_cpu=True)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=args.learning_rate)
    sched = get_scheduler("linear", opt, num_warmup_steps=args.get_warmup_steps(steps), num_training_steps=steps)
    state, control = TrainerState(), TrainerControl()
    state.max_steps = steps
    if resume_at:
        for _ in range(resume_at):
            opt.step()
            sched.step()
        state.global_step = resume_at
    cb = callbacks.TimeBudget(budget_s, tmp_path / "time_budget.json")
    cb.on_train_begin(args, state, control, lr_scheduler=sched, optimizer=opt)
    lrs = []
    while state.global_step < state.max_steps and not control.should_training_stop:
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        state.global_step += 1
        clock.now += seconds_per_step
        cb.on_step_end(args, state, control, lr_scheduler=sched, optimizer=opt)
    return cb, lrs, state, control


def test_time_budget_cuts_the_steps_and_fits_the_schedule(tmp_path, monkeypatch):
    # 10 s a step, 300 s: 4 steps timed by 40 s, 26 more fit -> 30 of 100 steps
    cb, lrs, state, control = _budget_run(tmp_path, monkeypatch, seconds_per_step=10, budget_s=300)
    assert cb.planned == 30 and state.global_step == 30 and state.max_steps == 30 and control.should_training_stop
    plan = json.loads((tmp_path / "time_budget.json").read_text())
    assert plan["max_steps"] == 30 and plan["asked_steps"] == 100 and plan["seconds_per_step"] == 10
    # the schedule now decays over 30 steps: the last step runs at 1/27 of the peak (warm-up 3 of 30
    # steps, linear to zero), not at the 0.7 of the peak that 30 of 100 steps would have
    assert lrs[-1] == pytest.approx(1e-3 / 27, rel=1e-6)
    assert lrs[4] == pytest.approx(1e-3 * 26 / 27, rel=1e-6)  # the first step after the plan: the fitted rate


def test_time_budget_leaves_a_run_that_fits_alone_and_a_resume_keeps_the_plan(tmp_path, monkeypatch):
    cb, lrs, state, control = _budget_run(tmp_path, monkeypatch, seconds_per_step=1, budget_s=300)
    assert cb.planned == 100 and state.global_step == 100 and len(lrs) == 100

    # a resumed run (step 12 of a run cut to 30) keeps the plan and its schedule at once
    (tmp_path / "time_budget.json").write_text(json.dumps({"max_steps": 30}))
    cb, lrs, state, control = _budget_run(tmp_path, monkeypatch, seconds_per_step=100, budget_s=1,
                                          resume_at=12)
    assert state.global_step == 30 and len(lrs) == 18
    assert lrs[0] == pytest.approx(1e-3 * (30 - 12) / 27, rel=1e-6)


def test_time_budget_names_an_unreadable_plan_on_resume(tmp_path, monkeypatch):
    from modelmill.errors import InputError

    (tmp_path / "time_budget.json").write_text('{"max_st')  # cut off mid-write by hand
    with pytest.raises(InputError) as info:
        _budget_run(tmp_path, monkeypatch, seconds_per_step=1, budget_s=300, resume_at=5)
    assert "time_budget.json" in str(info.value) and "delete the file" in str(info.value)


# ---------------------------------------------------------------- every method takes them


def dpo_trainer(tiny_model, tmp_path, **settings):
    """``modelmill.train.dpo``'s trainer on four preference pairs, no dropout (deterministic steps)."""
    from modelmill.train.config import TrainJob
    from modelmill.train.dpo import PreferenceConfig, build_trainer

    rows = [{"prompt": [{"role": "user", "content": f"Is review {i} good? It was {w}."}],
             "chosen": w, "rejected": "neutral"} for i, w in enumerate(["great", "awful", "fine", "bad"])]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = PreferenceConfig(base="tiny", data="prefs", name="t", max_steps=1, batch_size=4, max_length=64,
                           lora_dropout=0.0, save_steps=10**6, **settings)
    return build_trainer(TrainJob(config=cfg, base_path=str(tiny_model), data_path=str(data), kind="preference",
                                  run_dir=str(tmp_path / f"run-{len(list(tmp_path.iterdir()))}"))).trainer


def test_dpo_sft_weight_adds_the_chosen_answers_loss(tiny_model, tmp_path):
    """--sft-weight w: the DPO loss plus w times the mean negative log-likelihood of the chosen
    answers' tokens, computed here from the model's own logits."""
    import torch.nn.functional as F

    plain, rpo = dpo_trainer(tiny_model, tmp_path), dpo_trainer(tiny_model, tmp_path, sft_weight=2.0)
    rpo.model.load_state_dict(plain.model.state_dict())
    inputs = plain._prepare_inputs(plain.data_collator([plain.train_dataset[i] for i in range(4)]))
    with torch.no_grad():
        dpo_loss = plain.compute_loss(plain.model, inputs)
        both = rpo.compute_loss(rpo.model, inputs)
        chosen = slice(0, inputs["input_ids"].shape[0] // 2)  # the batch is [chosen..., rejected...]
        ids, mask = inputs["input_ids"][chosen], inputs["completion_mask"][chosen]
        logits = rpo.model(input_ids=ids, attention_mask=inputs["attention_mask"][chosen]).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        nll = nll[mask[:, 1:].reshape(-1).bool()].mean()
    assert float(nll) > 0.1
    torch.testing.assert_close(both, dpo_loss + 2.0 * nll, atol=1e-4, rtol=0)


def test_dpo_takes_the_fast_paths_with_trls_own_loss_and_gradients(trl_utils, tiny_model, tmp_path, monkeypatch):
    """A DPO step built by ``modelmill.train.dpo`` (fused LoRA, answers-only head on CPU) gives the
    loss and LoRA gradients of the same trainer on trl's and peft's plain paths, reference pass
    (adapter off) included, and sends only the answers' positions through the LM head."""
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    trainer = dpo_trainer(tiny_model, tmp_path)
    model = trainer.model
    layers = [m for m in model.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(type(m) is FusedLoraLinear for m in layers)
    assert getattr(trl_utils._use_triton, "_modelmill_answers_only", False)
    with torch.no_grad():  # fresh lora_B is zero: make the adapter matter
        gen = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    answers = int(inputs["completion_mask"][:, 1:].sum())

    rows_seen = head_rows(trl_utils, monkeypatch)

    def step():
        model.zero_grad()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        return loss.detach(), lora_grads(model)

    fast_loss, fast_grads = step()
    assert rows_seen == [answers, answers]  # the policy and the reference pass, answers only
    for m in layers:
        m.__class__ = PeftLoraLinear
    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton.__wrapped__)
    plain_loss, plain_grads = step()
    assert rows_seen[-1] == inputs["input_ids"].numel() - inputs["input_ids"].shape[0]  # every position
    assert float(plain_loss) != pytest.approx(0.6931, abs=1e-3)  # the adapter moved the policy off the reference
    torch.testing.assert_close(fast_loss, plain_loss, atol=ATOL, rtol=0)
    assert fast_grads.keys() == plain_grads.keys()
    for name, g in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=ATOL, rtol=0, msg=name)
