"""Knowledge bases: parse documents, chunk them, embed and index them, retrieve with BM25 and
vectors fused by RRF, cite what answered, and synthesize QA pairs from them.

    parse.py      files -> Document (txt, md, html, pdf, docx, csv, xlsx; plugins add more)
    chunk.py      Document -> Chunks within a token budget, by structure, CJK-aware
    tokens.py     token counts and BM25 tokens (jieba for CJK)
    embed.py      embedders: the bundled MiniLM, a remote /v1/embeddings, a local folder
    vectors.py    the vector store: LanceDB (embedded, default); qdrant.py: a Qdrant server
    bm25.py       the BM25 index (bm25s), rebuilt per revision
    base.py       KnowledgeBases / KnowledgeBase: create, add, remove, query
    evaluate.py   hit@k, MRR, nDCG per retriever
    rag.py        retrieval-augmented prompts, citations, groundedness
    synthesize.py question/answer pairs from chunks, filtered, saved as datasets
"""
