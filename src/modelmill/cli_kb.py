"""The knowledge-base commands.

    modelmill kb create policies
    modelmill kb add policies docs/*.pdf faq.xlsx
    modelmill kb query policies "how long do refunds take?"
    modelmill kb list [policies]
    modelmill kb remove policies refunds.pdf
    modelmill kb eval policies --questions questions.jsonl
"""

from __future__ import annotations

import json

import click

from modelmill.cli import Group, _store, _table, main


def _weights(text: str | None) -> dict[str, float] | None:
    """``bm25=0.5,vector=1`` as a dict; the library checks names and values."""
    if not text:
        return None
    from modelmill.errors import InputError

    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"'{part}' is not RETRIEVER=WEIGHT", field="--weights", fix="e.g. bm25=0.5,vector=1") from None
    return out


def _kbs():
    from modelmill.kb.base import KnowledgeBases

    return KnowledgeBases(_store())


@main.group(cls=Group)
def kb():
    """Knowledge bases: documents for retrieval-augmented answers with citations."""


@kb.command("create")
@click.argument("name")
@click.option("--embedder", default=None, metavar="SPEC",
              help="all-minilm-l6-v2 (bundled, default), remote:MODEL (a model registered with --endpoint), "
                   "or a sentence-transformers folder.")
@click.option("--vector-store", default="lancedb", show_default=True, metavar="URL",
              help="lancedb (embedded, under $MODELMILL_HOME/kb/NAME) or a Qdrant server URL.")
@click.option("--chunk-tokens", default=200, show_default=True, help="Most tokens in one chunk.")
@click.option("--chunk-overlap", default=40, show_default=True, help="Tokens a chunk repeats from the one before.")
@click.option("--rerank", default=None, metavar="FOLDER",
              help="A cross-encoder folder that reranks every query's fused candidates.")
def kb_create(name, embedder, vector_store, chunk_tokens, chunk_overlap, rerank):
    """Create an empty knowledge base."""
    kb_ = _kbs().create(name, embedder=embedder, vector_store=vector_store, chunk_tokens=chunk_tokens,
                        chunk_overlap=chunk_overlap, reranker=rerank)
    r = kb_.row
    click.echo(f"created knowledge base '{name}' (embedder {r.embedder}, {r.dimensions} dimensions, "
               f"{r.vector_store}, chunks of {r.chunk_tokens} tokens)")


@kb.command("add")
@click.argument("name")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--encoding", default=None, help="Text encoding of txt/md/html/csv files (default: UTF-8).")
@click.option("--max-bytes", type=int, default=None, help="Largest file accepted [default: 50 MiB].")
def kb_add(name, files, encoding, max_bytes):
    """Add documents (txt, md, html, pdf, docx, csv, xlsx). A file with the same name replaces
    the one there; the next query sees the change."""
    report = _kbs().get(name).add(list(files), encoding=encoding, max_bytes=max_bytes)
    for what, names in (("added", report.added), ("replaced", report.replaced), ("unchanged", report.unchanged)):
        for n in names:
            click.echo(f"{what}: {n}")
    for path, err in report.failed:
        click.echo(f"error: {err}", err=True)
    click.echo(f"{len(report.added)} added, {len(report.replaced)} replaced, {len(report.unchanged)} unchanged, "
               f"{len(report.failed)} failed; {report.chunks} chunks in {report.seconds:.1f} s")
    if report.failed:
        raise SystemExit(2)


@kb.command("remove")
@click.argument("name")
@click.argument("documents", nargs=-1)
@click.option("--all", "whole", is_flag=True, help="Delete the whole knowledge base.")
def kb_remove(name, documents, whole):
    """Remove documents by file name, or the whole knowledge base with --all."""
    from modelmill.errors import InputError

    if whole == bool(documents):
        raise InputError("name documents to remove, or pass --all (not both)", field="DOCUMENTS",
                         fix=f"e.g. modelmill kb remove {name} refunds.pdf")
    if whole:
        _kbs().delete(name)
        click.echo(f"deleted knowledge base '{name}'")
        return
    for n in _kbs().get(name).remove(list(documents)):
        click.echo(f"removed: {n}")


@kb.command("list")
@click.argument("name", required=False)
def kb_list(name):
    """The knowledge bases, or one knowledge base's documents."""
    if name is None:
        from modelmill.store.tables import KBDocument

        kbs = _kbs()
        rows = []
        with kbs.store.session() as s:
            for r in kbs.list():
                docs = s.query(KBDocument).filter_by(kb=r.name).all()
                rows.append([r.name, str(len(docs)), str(sum(d.n_chunks for d in docs)), r.embedder, r.vector_store,
                             str(r.revision), r.updated_at.strftime("%Y-%m-%d %H:%M")])
        _table(rows, ["NAME", "DOCS", "CHUNKS", "EMBEDDER", "STORE", "REV", "UPDATED"])
        return
    docs = _kbs().get(name).documents()
    _table([[d.name, d.format, d.title[:40], str(d.n_chunks), str(d.n_tokens), d.added_at.strftime("%Y-%m-%d %H:%M")]
            for d in docs], ["DOCUMENT", "FORMAT", "TITLE", "CHUNKS", "TOKENS", "ADDED"])


@kb.command("query")
@click.argument("name")
@click.argument("question")
@click.option("-k", default=5, show_default=True, help="Chunks to return.")
@click.option("--mode", type=click.Choice(["hybrid", "bm25", "vector"]), default="hybrid", show_default=True)
@click.option("--weights", default=None, metavar="bm25=W,vector=W",
              help="Each retriever's vote in hybrid fusion [default: bm25=0.5,vector=1].")
@click.option("--rerank", default=None, metavar="FOLDER|none",
              help="Rerank the fused candidates with this cross-encoder [default: the knowledge base's].")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON lines.")
def kb_query(name, question, k, mode, weights, rerank, as_json):
    """The chunks that best answer QUESTION, with each retriever's rank and score."""
    hits = _kbs().get(name).query(question, k=k, mode=mode, weights=_weights(weights), rerank=rerank)
    if as_json:
        for h in hits:
            click.echo(json.dumps({**h.citation(name), "score": h.score, "ranks": h.ranks, "scores": h.scores},
                                  ensure_ascii=False))
        return
    if not hits:
        click.echo("no matching chunks")
        return
    rows = []
    reranked = any("rerank" in h.ranks for h in hits)
    for i, h in enumerate(hits, 1):
        per = lambda r: f"#{h.ranks[r]} {h.scores[r]:.3f}" if r in h.ranks else "-"  # noqa: E731
        where = h.section + (f" p.{h.page}" if h.page else "")
        text = " ".join(h.text.split())
        rows.append([str(i), f"{h.score:.4f}", per("bm25"), per("vector")] + ([per("rerank")] if reranked else [])
                    + [h.doc, where[:30], text[:90] + ("…" if len(text) > 90 else "")])
    _table(rows, ["#", "SCORE", "BM25", "VECTOR"] + (["RERANK"] if reranked else []) + ["DOCUMENT", "SECTION", "TEXT"])


@kb.command("eval")
@click.argument("name")
@click.option("--questions", required=True,
              help="JSON Lines (question + documents or chunk_ids), or a NAME-test dataset from `data synthesize`.")
@click.option("-k", default=10, show_default=True, help="Rank cut-off for hit@k, MRR and nDCG.")
@click.option("--weights", default=None, metavar="bm25=W,vector=W",
              help="Each retriever's vote in hybrid fusion [default: bm25=0.5,vector=1].")
@click.option("--out", type=click.Path(), default=None, help="Also write the metrics as JSON here.")
def kb_eval(name, questions, k, weights, out):
    """Retrieval quality of BM25, vectors and hybrid on a question set, side by side."""
    from modelmill.kb.evaluate import evaluate_retrieval, load_questions

    from pathlib import Path

    if Path(questions).is_file():
        qs = load_questions(questions)
    else:
        from modelmill.data.catalog import DatasetCatalog
        from modelmill.kb.evaluate import questions_from_dataset

        catalog = DatasetCatalog(_store())
        ds = catalog.resolve(questions, "--questions")
        qs = questions_from_dataset(catalog.records(ds), ds.ref)
    report = evaluate_retrieval(_kbs().get(name), qs, k=k, weights=_weights(weights))
    names = list(next(iter(report.metrics.values())))
    _table([[mode] + [f"{m[n]:.3f}" for n in names] for mode, m in report.metrics.items()],
           ["RETRIEVER"] + [n.upper() for n in names])
    click.echo(f"{report.n} questions")
    if out:
        Path(out).write_text(json.dumps(report.as_dict(), indent=2))


@click.command("synthesize")
@click.option("--kb", "kb_name", required=True, help="The knowledge base whose chunks are the sources.")
@click.option("--model", required=True,
              help="A model registered with --endpoint (any OpenAI-compatible server, e.g. a local `modelmill serve`).")
@click.option("--name", required=True, help="Dataset name; the held-out pairs go to NAME-test.")
@click.option("--per-chunk", default=3, show_default=True, help="Pairs to ask for per chunk.")
@click.option("--test-size", default=0.1, show_default=True, help="Share of chunks whose pairs are held out.")
@click.option("--max-chunks", type=int, default=None, help="Use a random sample of this many chunks.")
@click.option("--concurrency", default=4, show_default=True, help="Requests in flight at once.")
@click.option("--response-format", type=click.Choice(["json_schema", "json_object", "none"]), default="json_schema",
              show_default=True, help="How to ask the server for JSON.")
@click.option("--seed", default=0, show_default=True)
def data_synthesize(kb_name, model, name, per_chunk, test_size, max_chunks, concurrency, response_format, seed):
    """Question/answer pairs from a knowledge base's documents, for training and testing."""
    from modelmill.errors import InputError
    from modelmill.kb.synthesize import synthesize
    from modelmill.models.registry import ModelRegistry, is_remote
    from modelmill.models.remote import RemoteModel

    store = _store()
    row = ModelRegistry(store).get(model)
    if not is_remote(row):
        raise InputError(f"'{model}' is a local model; synthesis asks a served model", field="--model",
                         fix=f"serve it (`modelmill serve --port 8000`) and register the endpoint: `modelmill models add "
                             f"{model}-api --endpoint http://127.0.0.1:8000/v1 --remote-model {model}`")
    kb_ = _kbs().get(kb_name)
    with RemoteModel.from_row(row) as remote:
        r = synthesize(kb_, remote, name=name, per_chunk=per_chunk, test_size=test_size, max_chunks=max_chunks,
                       concurrency=concurrency, seed=seed, response_format=response_format)
    for e in r.errors:
        click.echo(f"warning: {e}", err=True)
    cut = f" ({r.truncated} cut at max tokens)" if r.truncated else ""
    click.echo(f"{r.chunks} chunks asked: {r.generated} pairs generated, {r.unparsed} replies unparsed{cut}, "
               f"{r.failed_requests} requests failed, {r.duplicates} duplicates and {r.unsupported} unsupported "
               f"dropped; kept {r.train} for training, {r.test} held out")
    for ref in r.datasets:
        click.echo(f"saved: {ref}")


from modelmill.cli import data as _data_group  # noqa: E402

_data_group.add_command(data_synthesize)
