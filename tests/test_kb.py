"""Knowledge bases end to end through the real CLI: create, add (several formats), query with
per-retriever scores, live replace and remove, bad files that leave nothing behind, retrieval
evaluation, the Qdrant backend, and QA synthesis against an OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import write_jsonl

REFUNDS = """# Acme returns policy

## Refunds

Refunds are paid to the original card within 14 days of the parcel arriving at our warehouse.
Store credit is issued at once instead, if the customer asks for it.

## Shipping

Standard shipping costs 4.90 euros and is free for orders above 50 euros.
Express delivery arrives the next working day when ordered before 3 pm.
"""

FAQ = "question,answer\nCan I change my delivery address?,Yes: until the parcel leaves the warehouse, in your account.\n" \
      "Do you ship to Norway?,We ship to every EU country and to Norway and Switzerland.\n"

WARRANTY_ZH = "保修条款\n\n所有电器享受两年保修。保修期内免费维修或更换。\n\n电池属于易耗品，保修期为六个月。"


@pytest.fixture()
def docs(tmp_path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "returns.md").write_text(REFUNDS, encoding="utf-8")
    (d / "faq.csv").write_text(FAQ, encoding="utf-8")
    (d / "warranty.txt").write_text(WARRANTY_ZH, encoding="utf-8")
    return d


def _hits(cli, kb: str, question: str, *flags) -> list[dict]:
    p = cli("kb", "query", kb, question, "--json", *flags)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def test_create_add_query_replace_remove(cli, docs):
    cli("kb", "create", "shop")
    p = cli("kb", "add", "shop", docs / "returns.md", docs / "faq.csv", docs / "warranty.txt")
    assert "3 added" in p.stdout

    listing = cli("kb", "list").stdout
    assert "shop" in listing and "all-minilm-l6-v2" in listing
    docs_listing = cli("kb", "list", "shop").stdout
    assert "returns.md" in docs_listing and "faq.csv" in docs_listing and "warranty.txt" in docs_listing

    # hybrid: the answer's chunk first, with both retrievers' ranks and scores shown
    hits = _hits(cli, "shop", "How many days until my refund is paid?")
    top = hits[0]
    assert top["document"] == "returns.md" and top["section"] == "Refunds" and "14 days" in top["text"]
    assert set(top["ranks"]) == {"bm25", "vector"} and top["scores"]["vector"] > 0
    # the citation's span is exactly that text in the parsed document
    from modelmill.kb.parse import parse

    assert parse(docs / "returns.md").text[top["start"]:top["end"]] == top["text"] and top["chunk_id"]
    table = cli("kb", "query", "shop", "How many days until my refund is paid?").stdout
    assert "BM25" in table and "VECTOR" in table and "returns.md" in table

    # a FAQ row is one unit; the Chinese document is found by its words (jieba) and by meaning
    assert _hits(cli, "shop", "deliver to Norway", "-k", "1")[0]["document"] == "faq.csv"
    zh = _hits(cli, "shop", "电池保修多久", "-k", "1", "--mode", "bm25")[0]
    assert zh["document"] == "warranty.txt" and "六个月" in zh["text"]

    # live update: the same file name with new content replaces the document; the next query sees it
    (docs / "returns.md").write_text(REFUNDS.replace("14 days", "30 days"), encoding="utf-8")
    p = cli("kb", "add", "shop", docs / "returns.md", docs / "faq.csv")
    assert "replaced: returns.md" in p.stdout and "unchanged: faq.csv" in p.stdout
    texts = " ".join(h["text"] for h in _hits(cli, "shop", "How many days until my refund is paid?"))
    assert "30 days" in texts and "14 days" not in texts

    cli("kb", "remove", "shop", "warranty.txt")
    assert all(h["document"] != "warranty.txt" for h in _hits(cli, "shop", "电池保修多久", "-k", "10"))
    p = cli("kb", "remove", "shop", "warranty.txt", ok=False)
    assert "no document named 'warranty.txt'" in p.stderr

    # the BM25 index is rebuilt from the store when its folder is gone (e.g. a crash mid-write)
    shutil.rmtree(cli.home / "kb" / "shop" / "bm25")
    assert _hits(cli, "shop", "express delivery", "-k", "1", "--mode", "bm25")[0]["section"] == "Shipping"

    cli("kb", "remove", "shop", "--all")
    assert "shop" not in cli("kb", "list").stdout
    assert not (cli.home / "kb" / "shop").exists()


def test_bad_files_leave_nothing_behind(cli, docs, tmp_path):
    cli("kb", "create", "shop")
    bad_pdf = tmp_path / "broken.pdf"
    bad_pdf.write_bytes(b"%PDF-1.4 this is not really a pdf")
    latin1 = tmp_path / "notes.txt"
    latin1.write_bytes("Prix: 12 francs la pièce, très élevé".encode("latin-1"))
    empty = tmp_path / "empty.md"
    empty.write_text("")
    odd = tmp_path / "slides.pptx"
    odd.write_bytes(b"PK\x03\x04")
    p = cli("kb", "add", "shop", docs / "returns.md", bad_pdf, latin1, empty, odd, ok=False)
    assert p.returncode == 2
    assert "1 added" in p.stdout and "4 failed" in p.stdout
    assert "broken.pdf" in p.stderr and "notes.txt" in p.stderr and "--encoding" in p.stderr
    assert "empty.md" in p.stderr and "slides.pptx" in p.stderr
    listing = cli("kb", "list", "shop").stdout
    assert "returns.md" in listing and "broken.pdf" not in listing and "notes.txt" not in listing
    assert {h["document"] for h in _hits(cli, "shop", "price per piece", "-k", "20")} == {"returns.md"}
    # the right encoding makes the same file work
    cli("kb", "add", "shop", latin1, "--encoding", "latin-1")
    assert "12 francs" in _hits(cli, "shop", "Prix pièce", "-k", "1", "--mode", "bm25")[0]["text"]

    p = cli("kb", "query", "nope", "anything", ok=False)
    assert p.returncode == 3 and "no knowledge base named 'nope'" in p.stderr and "kb create nope" in p.stderr
    p = cli("kb", "create", "shop", ok=False)
    assert "already exists" in p.stderr
    p = cli("kb", "query", "shop", "   ", ok=False)
    assert "question" in p.stderr and "empty" in p.stderr


def test_eval_reports_each_retriever(cli, docs, tmp_path):
    cli("kb", "create", "shop")
    cli("kb", "add", "shop", docs / "returns.md", docs / "faq.csv", docs / "warranty.txt")
    questions = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "When will I get my money back?", "documents": ["returns.md"]},
        {"question": "Can I ship to Switzerland?", "document": "faq.csv"},
        {"question": "电器保修几年", "documents": ["warranty.txt"]},
    ])
    out = tmp_path / "m.json"
    p = cli("kb", "eval", "shop", "--questions", questions, "-k", "3", "--out", out)
    assert "bm25" in p.stdout and "vector" in p.stdout and "hybrid" in p.stdout and "3 questions" in p.stdout
    m = json.loads(out.read_text())["metrics"]
    assert set(m) == {"bm25", "vector", "hybrid"}
    for mode in m.values():
        assert 0 <= mode["mrr"] <= 1 and mode["hit@1"] <= mode["hit@3"]
    assert m["hybrid"]["hit@3"] == 1.0

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "documents": ["returns.md"]}\n{"question": "y"}\n')
    p = cli("kb", "eval", "shop", "--questions", bad, ok=False)
    assert "bad.jsonl:2" in p.stderr and "documents" in p.stderr
    bad.write_text('{"question": "x", "documents": ["missing.md"]}\n')
    p = cli("kb", "eval", "shop", "--questions", bad, ok=False)
    assert "missing.md" in p.stderr


def test_qdrant_backend(cli, docs, tmp_path):
    store = f"qdrant+local:{tmp_path / 'qdrant'}"
    cli("kb", "create", "shop", "--vector-store", store)
    cli("kb", "add", "shop", docs / "returns.md", docs / "faq.csv")
    top = _hits(cli, "shop", "How many days until my refund is paid?")[0]
    assert top["document"] == "returns.md" and set(top["ranks"]) == {"bm25", "vector"}
    (docs / "returns.md").write_text(REFUNDS.replace("14 days", "30 days"), encoding="utf-8")
    cli("kb", "add", "shop", docs / "returns.md")
    texts = " ".join(h["text"] for h in _hits(cli, "shop", "refund days", "-k", "10"))
    assert "30 days" in texts and "14 days" not in texts
    cli("kb", "remove", "shop", "faq.csv")
    assert all(h["document"] != "faq.csv" for h in _hits(cli, "shop", "Norway", "-k", "10"))
    p = cli("kb", "create", "other", "--vector-store", "mongodb://x", ok=False)
    assert "--vector-store" in p.stderr


class _QAEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that writes QA pairs the way a model asked by
    `data synthesize` does: one pair quoted from the passage, one duplicate, one invented."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        passage = prompt.split(":\n\n", 1)[1].split("\n\nWrite up to", 1)[0]
        first = passage.split(". ")[0].split("\n")[0].strip().rstrip(".")
        pairs = [{"question": f"What does the policy say about: {first[:40]}?", "answer": first + "."},
                 {"question": f"What does the policy say about: {first[:40]}?", "answer": first + "."},
                 {"question": "What is the CEO's favourite colour?", "answer": "The CEO's favourite colour is purple."}]
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": json.dumps({"pairs": pairs})}}],
                 "usage": {}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_synthesize_qa_pairs(cli, docs):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QAEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cli("models", "add", "writer", "--endpoint", f"http://127.0.0.1:{server.server_port}/v1")
        cli("kb", "create", "shop", "--chunk-tokens", "40", "--chunk-overlap", "0")
        cli("kb", "add", "shop", docs / "returns.md", docs / "faq.csv")
        p = cli("data", "synthesize", "--kb", "shop", "--model", "writer", "--name", "shop-qa", "--test-size", "0.3")
    finally:
        server.shutdown()
    assert "duplicates" in p.stdout and "unsupported" in p.stdout and "saved: shop-qa@" in p.stdout
    out = p.stdout
    kept_train = int(out.split("kept ")[1].split(" ")[0])
    held = int(out.split("training, ")[1].split(" ")[0])
    assert kept_train > 0 and held > 0
    shown = cli("data", "show", "shop-qa-test", "-n", "100").stdout
    assert "purple" not in shown  # the invented answer is not supported by any chunk
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.store import open_store

    store = open_store()
    cat = DatasetCatalog(store)
    train = cat.records(cat.resolve("shop-qa"))
    test = cat.records(cat.resolve("shop-qa-test"))
    questions = [r["messages"][0]["content"] for r in train + test]
    assert len(questions) == len(set(questions))  # duplicates dropped
    assert all(r["source"]["kb"] == "shop" and r["source"]["chunk_id"] for r in train + test)
    # no chunk has questions on both sides
    assert not ({r["source"]["chunk_id"] for r in train} & {r["source"]["chunk_id"] for r in test})
    # the held-out set evaluates retrieval directly
    p = cli("kb", "eval", "shop", "--questions", "shop-qa-test")
    assert "hybrid" in p.stdout


def test_synthesize_refuses_a_local_model(cli_tiny):
    cli_tiny("kb", "create", "shop")
    p = cli_tiny("data", "synthesize", "--kb", "shop", "--model", "tiny", "--name", "x", ok=False)
    assert "modelmill serve" in p.stderr and "--endpoint" in p.stderr


def _tiny_cross_encoder(folder: Path) -> Path:
    """A randomly initialised BERT cross-encoder with MiniLM's tokenizer: scores mean nothing,
    but it loads and runs as a real reranker does."""
    import transformers

    from modelmill.models.embedder import bundled_model_path

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, num_labels=1)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(bundled_model_path() / f, folder / f)
    return folder


def test_rerank_reorders_the_fused_candidates(cli, docs, tmp_path):
    reranker = _tiny_cross_encoder(tmp_path / "reranker")
    cli("kb", "create", "shop", "--rerank", reranker)
    cli("kb", "add", "shop", docs)
    hits = _hits(cli, "shop", "How many days until my refund is paid?", "-k", "3")
    assert all("rerank" in h["ranks"] and {"bm25", "vector"} & set(h["ranks"]) for h in hits)
    assert [h["ranks"]["rerank"] for h in hits] == [1, 2, 3]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "RERANK" in cli("kb", "query", "shop", "refund", "-k", "2").stdout
    plain = _hits(cli, "shop", "How many days until my refund is paid?", "-k", "3", "--rerank", "none")
    assert all("rerank" not in h["ranks"] for h in plain)
    p = cli("kb", "query", "shop", "refund", "--rerank", tmp_path / "nothing-here", ok=False)
    assert "--rerank" in p.stderr and "config.json" in p.stderr


@pytest.mark.parametrize("text", [
    "，".join(["退货申请需要在收到商品后三十天内提交", "并保留原始包装和购物发票", "电池属于易耗品"] * 40),  # only "，"
    " ".join(f"word{i % 7} and then some more plain words" for i in range(120)),          # no sentence ends
], ids=["chinese-commas", "unpunctuated-english"])
def test_long_text_without_sentence_ends_still_overlaps(text):
    """Text with nothing to cut at but words or characters is cut into runs that leave room for the
    overlap, so consecutive chunks share about --chunk-overlap tokens there too."""
    from modelmill.kb.chunk import chunk
    from modelmill.kb.tokens import count_tokens
    from modelmill.kb.types import Document, Unit

    doc = Document("T", [Unit(text, "S")])
    chunks = chunk(doc, max_tokens=64, overlap=12)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        assert a.start < b.start < a.end < b.end  # overlapping, moving on
        shared = count_tokens(doc.text[b.start:a.end])
        assert 6 <= shared <= 12, (a.start, a.end, b.start, shared)
    assert all(count_tokens(c.text) <= 64 for c in chunks)
    assert chunks[-1].end == len(doc.text)
