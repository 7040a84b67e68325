"""Tiny random chat models for tests: a Llama with a few thousand weights and a tokenizer
trained here, in-process, so that no test needs a download.

    from modelmill.models.tiny import make_tiny_model
    folder = make_tiny_model(tmp_path / "tiny")          # ~0.3 s after imports
    AutoModelForCausalLM.from_pretrained(folder); AutoTokenizer.from_pretrained(folder)

The tokenizer is byte-level BPE, so it encodes any text (English, Chinese, emoji) without
unknown tokens, and it carries a ChatML chat template shaped like SmolLM2's, with
``<|im_end|>`` as end of sequence. The weights are random: generations are gibberish, but
shapes, templates, saving, LoRA and serving code paths are all real.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from modelmill.errors import InputError
from modelmill.models._files import progress_bars, replace_dir, share_like_new_files, temp_sibling

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# Order fixes the ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2 (as in SmolLM2).
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
TINY_VOCAB_SIZE = 512
TINY_CONTEXT_LENGTH = 512

# Text the BPE merges are learnt from. Byte-level BPE can encode anything; this only
# decides which frequent pieces get a token of their own.
_CORPUS = """\
system
user
assistant
You are a helpful assistant. Answer the question briefly and correctly.
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.
What is the capital of France? The capital of France is Paris.
Translate the following sentence into Chinese. Summarize the text in one sentence.
Classify the sentiment of this review as positive, negative or neutral.
Extract the name, the date and the amount from the invoice below.
The customer asked for a refund because the order arrived late and the box was damaged.
Please reset my password. Your account has been updated. Thank you for your patience.
Question: How many days are there in a week? Answer: There are seven days in a week.
Instruction: Write a short poem about the sea. Response: The sea is wide and blue.
Input: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Output: 55. 100% of 42 is 42; 3.14 > 3.
def add(a, b):
    return a + b
{"instruction": "hello", "input": "", "output": "world"}
你好，请问有什么可以帮您？我们的客服会尽快回复。
今天天气很好，我们去公园散步吧。
请把下面的句子翻译成英文。这个产品的质量非常好，价格也很合理。
用户问题：如何重置密码？回答：请点击登录页面上的“忘记密码”。
中华人民共和国的首都是北京。上海是中国最大的城市。
合同金额为一万元，付款日期为二零二四年三月一日。
"""


def _chatml_template() -> str:
    from modelmill.models.chat_templates import builtin_chat_template

    return builtin_chat_template("chatml")


def make_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=IM_START, eos_token=IM_END, pad_token=ENDOFTEXT,
        unk_token=ENDOFTEXT, chat_template=_chatml_template(),
        model_max_length=TINY_CONTEXT_LENGTH, padding_side="right", clean_up_tokenization_spaces=False)


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 32, layers: int = 2,
                    overwrite: bool = False) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` plus tokenizer to ``out_dir`` and return it.

    Same ``seed`` and sizes give byte-identical weights. ``hidden_size`` must be a multiple
    of 4 (4 attention heads, 2 key/value heads). The folder appears whole or not at all;
    an existing non-empty ``out_dir`` is an error unless ``overwrite=True``.
    """
    out_dir = Path(out_dir)
    if hidden_size < 8 or hidden_size % 4:
        raise InputError(f"hidden_size must be a multiple of 4 and at least 8, got {hidden_size}",
                         field="hidden_size", fix="use 32, 64 or 128")
    if layers < 1:
        raise InputError(f"layers must be at least 1, got {layers}", field="layers", fix="use 2")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InputError("the folder already exists and is not empty", file=str(out_dir),
                         fix="choose a new folder, or pass overwrite=True")

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT_LENGTH, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START), eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id, architectures=["LlamaForCausalLM"], dtype="float32")
    # fork_rng: seed the init without changing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=False, max_new_tokens=16)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    try:
        with progress_bars(False):
            model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        share_like_new_files(tmp)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
