"""int8 linear layers for CPU inference: SmoothQuant-smoothed weights, activations quantized per call.

On a CPU without native bfloat16 (AVX2 only), decoding runs in float32 and its time goes to the
linear layers. PyTorch's x86 int8 kernels (fbgemm: int8 weights per output channel, activations
quantized per call with ``reduce_range``) run those layers about 3x faster at a batch of 32 rows.
Plain int8 hurts small models: SmolLM2-135M's perplexity on drug reviews went 41.7 -> 102,
because a few hidden channels carry values far above the rest and one activation scale per call
flattens everything else. So, as SmoothQuant (Xiao et al., 2023) does:

* the largest input value of every channel is measured on a few calibration texts (shipped with
  modelmill, :data:`CALIBRATION`, so nothing is downloaded);
* each channel's range is moved from the activations into the weights, ``s = a^alpha / w^(1-alpha)``,
  folded into the RMSNorm before ``q/k/v`` and before ``gate/up`` (no cost at run time);
* ``q, k, v, o, gate, up`` become int8; ``down_proj`` and the output head stay float32 (their
  inputs are the hardest to quantize; measured: with down_proj in int8 too, perplexity +10%).

Measured on SmolLM2-135M (``bench/int8_quality.py``, 200 drug reviews, alpha 0.8): perplexity
42.17 float32, 42.56 int8 (+0.9%). The int8 kernels alone are ~3x float32's at 32 rows; with the
per-row scaling and the float32 down_proj and head, a 32-row decode step with one adapter took
261 ms instead of 318 (AVX2, 2 cores). ``bench/serve_multilora.py --quantize int8`` measures serving.

A LoRA adapter trained on the float32 model still applies: the smoothed layers see their input
divided by ``s``, so the adapter's ``A`` is multiplied by the same ``s`` (what :func:`quantize_int8`
returns, which the serving engine hands to ``load_adapter``).
Supported: Llama-style decoders whose RMSNorm multiplies by its weight (Llama, Mistral, Qwen2/3,
SmolLM); others are refused with a clear error.
"""

from __future__ import annotations

import threading
import warnings

import torch

from modelmill.errors import InputError

ALPHA = 0.8
QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "smollm3")

# Varied, plain texts (prose, dialogue, lists, numbers, code, Chinese): enough to find each
# model's outlier channels, which are a property of the model, not of the domain.
CALIBRATION = [
    "The pharmacy on the corner opens at nine. Customers who bring a prescription should also bring "
    "their insurance card, and anyone collecting for someone else needs a signed note.",
    "User: My order arrived damaged. Can I get a refund?\nAssistant: I'm sorry to hear that. Please send a "
    "photo of the package and your order number, and we will arrange a replacement or a full refund.",
    "Quarterly revenue rose 12% to $4.3 billion, while operating margin fell from 18.2% to 16.9% as "
    "freight and labour costs increased. The board kept its full-year guidance unchanged.",
    "def mean(xs):\n    \"\"\"Return the arithmetic mean of a non-empty list.\"\"\"\n    return sum(xs) / len(xs)\n\n"
    "print(mean([3, 5, 10]))  # 6.0",
    "Ingredients: 200 g flour, 2 eggs, 300 ml milk, a pinch of salt. Whisk until smooth, rest for "
    "thirty minutes, then fry thin pancakes in a hot, lightly oiled pan.",
    "This medication worked well for my migraines at first, but after two months the side effects "
    "(dizziness, a dry mouth and trouble sleeping) were worse than the headaches.",
    "Classify the text into one of: negative, neutral, positive.\n\nText: The hotel room was clean "
    "and the staff friendly, although breakfast was rather expensive.\nAnswer: positive",
    "我们的客服时间是周一至周五上午九点到下午六点。如需退货，请在收到商品后七天内联系我们，并保留原包装。",
    "Q: What is the capital of Australia?\nA: Canberra. Many people guess Sydney, the largest city, "
    "but Canberra was chosen as a compromise between Sydney and Melbourne.",
    "Job posting: Senior data engineer, remote (EU time zones). Requirements: 5+ years with Python and "
    "SQL, experience with Spark or Flink, and a track record of running pipelines in production.",
    "The mitochondria produce most of the cell's supply of adenosine triphosphate, which is used as a "
    "source of chemical energy; they also take part in signalling and in cell death.",
    "1. Turn off the power at the breaker.\n2. Remove the cover plate.\n3. Disconnect the old switch, "
    "noting which wire went where.\n4. Connect the new switch the same way and restore power.",
    "Dear Ms. Alvarez, thank you for your application. We would like to invite you to a second "
    "interview on Thursday, 14 March, at 10:30 in our Rotterdam office.",
    "SELECT customer_id, SUM(amount) AS total FROM payments WHERE paid_at >= '2024-01-01' "
    "GROUP BY customer_id ORDER BY total DESC LIMIT 10;",
    "It was late in the evening when the train finally pulled into the station; the platform was "
    "empty except for a porter and a dog asleep beside a stack of crates.",
    "Die Rechnung ist innerhalb von 14 Tagen ohne Abzug zu bezahlen. Bei Fragen wenden Sie sich "
    "bitte an unsere Buchhaltung.",
]


def model_type(model) -> str | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "model_type", None)


def supported(model) -> bool:
    return model_type(model) in SUPPORTED


class Int8Linear(torch.nn.Module):
    """A float32 ``nn.Linear`` as int8: weights per output channel, activations per row and call.

    PyTorch's dynamic int8 linear quantizes its whole input with one range, so a row's result
    would depend on the other rows of its batch (a served request's tokens on who else is being
    served). Each row is divided by its own largest magnitude and two constant columns, +1 and
    -1, are appended (their weights are 0): every row then spans exactly [-1, 1], the range is
    the same whatever the batch, and each row is quantized as finely as it alone allows.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        w = torch.cat([w, w.new_zeros(w.shape[0], 2)], dim=1)       # the +1/-1 columns count for nothing
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).double()
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated (its issue 184982)
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qw, None)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(),
                                                                         requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        scaled, peak = _scaled_rows(x)
        # reduce_range: 7-bit activations, so AVX2's 16-bit accumulation (vpmaddubsw) cannot saturate
        y = torch.ops.quantized.linear_dynamic(scaled, self._packed, True).mul_(peak)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.nn.Linear:
        """The float32 layer whose quantization this is (its int8 values times their scales). Each
        output channel has its own scale, so quantizing its rows again, alone or stacked with another
        layer's, gives back the same int8 values."""
        qw, _ = torch.ops.quantized.linear_unpack(self._packed)
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(qw.dequantize()[:, :-2])                    # without the +1/-1 columns
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


_last = threading.local()


def _scaled_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as rows divided by their largest magnitude, with the +1/-1 columns, and those magnitudes.
    q, k and v (and gate and up) read the same input tensor: it is scaled once for all of them."""
    try:
        version = x._version
    except RuntimeError:  # an inference tensor keeps no version; the supported models change no input in place
        version = None
    last = getattr(_last, "value", None)
    if last is not None and last[0] is x and last[1] == version:
        return last[2], last[3]
    rows = x.reshape(-1, x.shape[-1])
    peak = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True).clamp_(min=1e-30)
    ends = _ends(rows.shape[0], rows.dtype)
    scaled = torch.cat([rows / peak, ends], dim=1)
    _last.value = (x, version, scaled, peak)
    return scaled, peak


def _ends(n: int, dtype) -> torch.Tensor:
    cache = getattr(_last, "ends", None)
    if cache is None or cache.shape[0] < n or cache.dtype != dtype:
        cache = torch.tensor([1.0, -1.0], dtype=dtype).repeat(max(n, 64), 1)
        _last.ends = cache
    return cache[:n]


def quantize_int8(model, tokenizer, texts: list[str] | None = None, alpha: float = ALPHA) -> dict[str, torch.Tensor]:
    """Make ``model``'s decoder linears int8 in place (see the module docstring); return the input
    scale of every smoothed linear by module name (``model.layers.3.self_attn.q_proj``): a LoRA
    adapter's ``A`` of that module is multiplied by it."""
    if not supported(model):
        raise InputError(f"int8 serving supports Llama-style models ({', '.join(SUPPORTED)}), not "
                         f"'{model_type(model)}'",
                         field="--quantize", fix="serve it with --quantize none")
    if next(model.parameters()).device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise InputError("int8 is for float32 models on a CPU", field="--quantize",
                         fix="use --quantize none with --dtype bfloat16 or on a GPU")
    layers = model.get_decoder().layers
    names = {id(m): n for n, m in model.named_modules()}
    amax: dict[int, torch.Tensor] = {}

    def record(mod, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        amax[id(mod)] = torch.maximum(amax[id(mod)], x) if id(mod) in amax else x

    hooks = [layer.self_attn.q_proj.register_forward_pre_hook(record) for layer in layers]
    hooks += [layer.mlp.gate_proj.register_forward_pre_hook(record) for layer in layers]
    attention = model.config._attn_implementation  # a serving engine's own attention runs only inside it
    if attention not in ("sdpa", "eager"):
        model.set_attn_implementation("sdpa")
    try:
        with torch.inference_mode():
            for text in texts or CALIBRATION:
                ids = tokenizer(text, return_tensors="pt").input_ids[:, :512]
                model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)

    scales: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer in layers:
            at, mlp = layer.self_attn, layer.mlp
            for norm, group in ((layer.input_layernorm, (at.q_proj, at.k_proj, at.v_proj)),
                                (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
                a = amax[id(group[0])]
                w = torch.stack([m.weight.abs().amax(0) for m in group]).amax(0)
                s = (a.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
                norm.weight.div_(s)
                for m in group:
                    m.weight.mul_(s[None, :])
                    scales[names[id(m)]] = s.clone()
            for child in QUANTIZED:
                parent = at if hasattr(at, child) else mlp
                setattr(parent, child, Int8Linear(getattr(parent, child)))
    return scales
