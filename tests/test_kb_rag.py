"""Answers from knowledge bases: the library (prompt, citations, groundedness on real MiniLM
embeddings) and `modelmill serve` end to end through the official `openai` client, with the
knowledge base built and changed by `modelmill kb` while the server runs."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import CLI, Server

from modelmill.kb import rag
from modelmill.kb.base import Hit

REFUNDS = """# Refunds

Refunds are paid back to the original card within 14 days of the return being received.

## Conditions

Items must be unused and in their original packaging.
"""
REFUNDS_NEW = """# Refunds

Refunds are now paid as a store gift card within 3 days of the return being received.
"""
SHIPPING = """# Shipping

Shipping is free on orders over 50 euros. Express delivery costs 9 euros and arrives the next day.
"""
QUESTION = [{"role": "user", "content": "How long do refunds take?"}]


def _item(text: str, i: int = 0, doc: str = "refunds.md", section: str = "") -> tuple[str, Hit]:
    return "policies", Hit(id=f"chunk-{i}", doc=doc, title="Refunds", section=section, page=None, start=0,
                           end=len(text), text=text, score=0.03)


ITEMS = [
    _item("Refunds are paid back to the original card within 14 days of the return being received. "
          "Items must be unused and in their original packaging.", 0),
    _item("Shipping is free on orders over 50 euros. Standard delivery takes 3 to 5 working days; express "
          "delivery costs 9 euros and arrives the next day.", 1, "shipping.md", "Delivery"),
    _item("退货政策：商品在收到后30天内可以退货。退款将在7个工作日内退回原支付方式。", 2, "退货.md"),
]


# ----------------------------------------------------------------------------- the library

@pytest.fixture(scope="module")
def minilm():
    from modelmill.kb.embed import open_embedder

    return open_embedder("all-minilm-l6-v2")


def _verdicts(answer: str, embedder) -> list[tuple[str, bool, int | None]]:
    g = rag.groundedness(answer, ITEMS, embedder)
    assert g["supported"] + g["unsupported"] == len(g["sentences"])
    return [(s["text"], s["supported"], s["item"]) for s in g["sentences"]]


def test_groundedness_supports_paraphrases_and_flags_invented_claims(minilm):
    answer = ("You will get your money back on your original card within 14 days after we receive the return [1]. "
              "Orders above 50 euros ship for free [2]. "
              "Refunds are paid in cash at any of our stores. "
              "Express delivery costs 25 euros. "
              "The capital of France is Paris.")
    assert _verdicts(answer, minilm) == [
        ("You will get your money back on your original card within 14 days after we receive the return [1].",
         True, 1),
        ("Orders above 50 euros ship for free [2].", True, 2),
        ("Refunds are paid in cash at any of our stores.", False, None),   # an invented claim
        ("Express delivery costs 25 euros.", False, None),                 # the wrong price
        ("The capital of France is Paris.", False, None),                  # unrelated
    ]
    g = rag.groundedness(answer, ITEMS, minilm)
    assert g["score"] == pytest.approx(2 / 5) and g["sentences"][0]["chunk_id"] == "chunk-0"
    assert 0 <= g["sentences"][2]["similarity"] <= 1 and g["sentences"][2]["overlap"] < 0.5


def test_groundedness_flags_a_flipped_negation(minilm):
    """Seen with the real SmolLM2 on the quickstart's pharmacy documents: it said the opposite of
    the policy in the policy's own words, which similarity and overlap alone call supported."""
    items = [_item("Unopened products can be returned within 30 days. For safety reasons, dispensed prescription "
                   "medicines cannot be returned or exchanged once they have left the pharmacy.", 0)]
    g = rag.groundedness("Yes, you can return a prescription medicine. Dispensed prescription medicines cannot "
                         "be returned. Unopened products can be returned within 30 days.", items, minilm)
    assert [x["supported"] for x in g["sentences"]] == [False, True, True]
    g = rag.groundedness("退货后不能退款。", [_item("收到退货后七天内退款。", 0)], minilm)
    assert g["unsupported"] == 1


def test_groundedness_splits_cjk_sentences_and_lists(minilm):
    answer = "收到商品后30天内可以退货。退款将在7个工作日内退回。我们提供免费的礼品包装服务。\n- Items must be unused.\n1. Refunds take 60 days."
    assert _verdicts(answer, minilm) == [
        ("收到商品后30天内可以退货。", True, 3),
        ("退款将在7个工作日内退回。", True, 3),
        ("我们提供免费的礼品包装服务。", False, None),  # free gift wrapping: not in any item
        ("- Items must be unused.", True, 1),
        ("1. Refunds take 60 days.", False, None),      # the list number is not a claim; 60 is
    ]


def test_groundedness_without_sources_or_sentences(minilm):
    g = rag.groundedness("Refunds take 14 days.", [], minilm)
    assert g["no_sources"] is True and g["unsupported"] == 1 and g["score"] == 0.0
    assert g["sentences"][0]["item"] is None
    g = rag.groundedness("", ITEMS, minilm)
    assert g == {"supported": 0, "unsupported": 0, "score": None, "sentences": []}


def test_prompt_numbers_the_items_and_keeps_the_question_last():
    msgs = rag.build_messages(QUESTION, ITEMS[:2])
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[-1] == QUESTION[0]
    system = msgs[0]["content"]
    assert "[1] (refunds.md) Refunds are paid back" in system
    assert "[2] (shipping.md › Delivery) Shipping is free" in system
    assert "cite" in system and "do not know" in system
    # the conversation's own system message is kept, first, with the items appended
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "system", "content": "You are the shop's assistant."}, *QUESTION]
    msgs = rag.build_messages(convo, ITEMS[:1])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("You are the shop's assistant.\n\n") and "[1] (refunds.md)" in msgs[0]["content"]
    assert convo[2]["content"] == "You are the shop's assistant."  # the caller's list is not changed
    # SmolLM2's ChatML template renders it
    from jinja2 import Template

    from modelmill.models.chat_templates import builtin_chat_template

    text = Template(builtin_chat_template("chatml")).render(messages=msgs, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are the shop's assistant.") and text.endswith("<|im_start|>assistant\n")
    assert rag.build_messages(QUESTION, [])[0]["content"].endswith("No items were found.")


def test_citations_mark_what_the_answer_cites():
    cites = rag.citations("Refunds take 14 days [1]. 运费【2】", ITEMS)
    assert [(c["index"], c["cited"]) for c in cites] == [(1, True), (2, True), (3, False)]
    assert cites[0] == {**ITEMS[0][1].citation("policies"), "index": 1, "score": 0.03, "cited": True}
    assert [c["cited"] for c in rag.citations(["see [1, 3]", "no"], ITEMS)] == [True, False, True]


# ----------------------------------------------------------------------------- modelmill serve

@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("rag-home")
    docs = tmp_path_factory.mktemp("rag-docs")
    (docs / "refunds.md").write_text(REFUNDS, encoding="utf-8")
    (docs / "shipping.md").write_text(SHIPPING, encoding="utf-8")
    cli = CLI(home)
    cli("models", "add", "tiny", tiny_model)
    cli("kb", "create", "policies")
    cli("kb", "add", "policies", docs / "refunds.md", docs / "shipping.md")
    return home


@pytest.fixture(scope="module")
def server(home):
    s = Server(home, "--knowledge", "tiny=policies")
    yield s
    s.stop()


def ask(client, model="tiny", **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=model, messages=QUESTION, **kw)


def test_chat_with_knowledge_bases_returns_citations_and_groundedness(server):
    r = ask(server.client(), extra_body={"knowledge_bases": ["policies"], "rag": {"k": 2, "mode": "hybrid"}})
    cites = r.model_extra["citations"]
    assert [c["index"] for c in cites] == [1, 2]
    first = cites[0]
    assert first["knowledge_base"] == "policies" and first["document"] == "refunds.md"
    assert first["text"].startswith("Refunds are paid back to the original card within 14 days")
    assert first["chunk_id"] and first["end"] - first["start"] == len(first["text"])
    g = r.choices[0].model_extra["groundedness"]
    assert set(g) >= {"supported", "unsupported", "score", "sentences"}
    # the tiny model's words are random: whatever it said, nothing supports it
    assert g["supported"] == 0 and g["unsupported"] == len(g["sentences"])
    assert all(not s["supported"] for s in g["sentences"])
    assert r.usage.prompt_tokens > 60  # the items are in the prompt


def test_a_binding_applies_without_extra_body_and_a_request_can_override_it(server):
    r = ask(server.client())
    assert r.model_extra["citations"][0]["document"] == "refunds.md"
    r = ask(server.client(), extra_body={"knowledge_bases": []})
    assert "citations" not in (r.model_extra or {}) and r.usage.prompt_tokens < 30


def test_unknown_knowledge_base_is_a_404_naming_it(server):
    with pytest.raises(openai.NotFoundError) as info:
        ask(server.client(max_retries=0), extra_body={"knowledge_bases": ["policies", "no-such-kb"]})
    assert "no-such-kb" in info.value.message and info.value.code == "knowledge_base_not_found"
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "tiny", "messages": QUESTION, "max_tokens": 2, "rag": {"k": 0}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rag.k"
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "system", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 400 and "user message" in r.json()["error"]["message"]


def test_streaming_sends_citations_before_done(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "model": "tiny", "messages": QUESTION, "max_tokens": 4, "n": 2, "stream": True,
            "knowledge_bases": ["policies"], "rag": {"k": 1}}, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and [c["document"] for c in last["citations"]] == ["refunds.md"]
    assert [g["index"] for g in last["groundedness"]] == [0, 1]
    assert all(set(g) >= {"supported", "unsupported", "score", "sentences"} for g in last["groundedness"])
    # the official client reads the same stream
    chunks = list(ask(server.client(), stream=True))
    assert chunks[-1].choices == [] and chunks[-1].model_extra["citations"]


def test_documents_added_replaced_and_removed_show_in_the_next_answer(server, home, tmp_path):
    cli = CLI(home)
    (tmp_path / "refunds.md").write_text(REFUNDS_NEW, encoding="utf-8")
    assert "replaced: refunds.md" in cli("kb", "add", "policies", tmp_path / "refunds.md").stdout
    cites = ask(server.client()).model_extra["citations"]
    assert "store gift card within 3 days" in cites[0]["text"]
    assert not any("original card" in c["text"] for c in cites)
    cli("kb", "remove", "policies", "refunds.md")
    cites = ask(server.client()).model_extra["citations"]
    assert cites and {c["document"] for c in cites} == {"shipping.md"}


def test_serve_refuses_a_binding_to_an_unknown_knowledge_base(home):
    p = CLI(home)("serve", "--knowledge", "tiny=policies+nope", ok=False)
    assert "--knowledge" in p.stderr and "'nope'" in p.stderr
    p = CLI(home)("serve", "--knowledge", "tiny", ok=False)
    assert "--knowledge" in p.stderr and "MODEL=KB" in p.stderr


def test_a_knowledge_base_embedded_by_a_remote_endpoint(server, home, tmp_path):
    """`--embedder remote:NAME`: the vectors come from an OpenAI-compatible /v1/embeddings (here the
    running server's MiniLM), for both the documents and the questions."""
    cli = CLI(home)
    cli("models", "add", "emb", "--endpoint", server.url + "/v1", "--remote-model", "all-minilm-l6-v2")
    p = cli("kb", "create", "remote-kb", "--embedder", "remote:emb")
    assert "remote:emb" in p.stdout and "384 dimensions" in p.stdout
    (tmp_path / "refunds.md").write_text(REFUNDS, encoding="utf-8")
    (tmp_path / "shipping.md").write_text(SHIPPING, encoding="utf-8")
    cli("kb", "add", "remote-kb", tmp_path)  # a folder: every supported file in it
    out = cli("kb", "query", "remote-kb", QUESTION[-1]["content"], "--mode", "vector", "-k", "1", "--json").stdout
    assert json.loads(out)["document"] == "refunds.md"
    # RAG through the server on that knowledge base: the server calls its own /v1/embeddings
    r = ask(server.client(timeout=60, max_retries=0), extra_body={"knowledge_bases": ["remote-kb"], "rag": {"k": 1}})
    assert r.model_extra["citations"][0]["document"] == "refunds.md"
    p = cli("kb", "create", "bad-kb", "--embedder", "remote:tiny", ok=False)
    assert "not a remote endpoint" in p.stderr and "--embedder" in p.stderr
