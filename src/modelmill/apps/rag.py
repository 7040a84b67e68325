"""Retrieval-augmented answers for chat requests: the items retrieved for the last user message,
then the answer's citations and groundedness (the library parts are in ``modelmill.kb.rag``).

    answers = KnowledgeAnswers(store)
    items = await answers.retrieve(["policies"], messages, k=4, mode="hybrid")   # None: nothing applies
    ...generate from rag.build_messages(messages, items)...
    top, per_choice = await answers.finish(texts, items)   # {"citations"}, [{"groundedness"}, ...]

A KnowledgeBase is cached per name: it re-reads its revision on every query, so documents
added, replaced or removed by ``modelmill kb`` show in the next answer. A knowledge base
deleted and created again under the same name is a new row, and is opened afresh.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from modelmill.errors import EngineError

log = logging.getLogger("modelmill.serve")


class KnowledgeAnswers:
    def __init__(self, store):
        from modelmill.kb.base import KnowledgeBases

        self.store = store
        self.kbs = KnowledgeBases(store)
        self.cache: dict = {}

    @staticmethod
    def embedder():
        """The bundled MiniLM (the one /v1/embeddings uses), which checks groundedness."""
        from modelmill.kb.embed import DEFAULT_EMBEDDER, open_embedder

        return open_embedder(DEFAULT_EMBEDDER)

    def open(self, name: str):
        """The cached KnowledgeBase named ``name`` (NotFoundError when there is none)."""
        from modelmill.kb.base import KnowledgeBase

        row = self.kbs.get(name).row
        kb = self.cache.get(name)
        if kb is not None and (kb.row.id, kb.row.created_at) == (row.id, row.created_at):
            return kb
        kb = KnowledgeBase(self.store, row)  # its embedder, if MiniLM, is the process's one
        self.cache[name] = kb
        return kb

    async def retrieve(self, names: list[str], messages: list[dict], k: int, mode: str):
        """The items retrieved from ``names`` for the last user message, or None when ``names`` is empty.
        Errors are EngineErrors with the request's field as param (``knowledge_bases``, ``messages``)."""
        from modelmill.errors import ModelmillError, NotFoundError
        from modelmill.kb import rag
        from modelmill.models.embedder import embedding_executor

        if not names:
            return None
        question = rag.question_of(messages)
        if not question.strip():
            raise EngineError("answering from knowledge bases needs a user message to retrieve for",
                              param="messages")
        run = functools.partial(rag.retrieve, self.kbs, names, question, k, mode, open_kb=self.open)

        def remote_embedder() -> bool:
            return any(self.open(n).row.embedder.startswith("remote:") for n in names)

        try:
            # MiniLM work stays on the one embedding thread; a remote embedder's HTTP call must not
            # hold it (the endpoint may be this very server, whose /v1/embeddings needs that thread)
            executor = None if await asyncio.to_thread(remote_embedder) else embedding_executor()
            return await asyncio.get_running_loop().run_in_executor(executor, run)
        except NotFoundError as e:
            raise EngineError(str(e), status=404, code="knowledge_base_not_found", param="knowledge_bases") from None
        except ModelmillError as e:
            raise EngineError(str(e), status=400, code="invalid_value",
                              param="messages" if e.field == "question" else "knowledge_bases") from None
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken index or vector store: the request cannot be answered
            log.exception("retrieval failed")
            raise EngineError(f"retrieval from {', '.join(names)} failed: {type(e).__name__}: {e}", status=503,
                              code="retrieval_failed", param="knowledge_bases") from None

    async def finish(self, texts: list[str], items: list) -> tuple[dict, list[dict]]:
        """Citations (top level) and each answer's groundedness."""
        from modelmill.kb import rag
        from modelmill.models.embedder import embedding_executor

        def check():
            return [rag.groundedness(t, items, self.embedder()) for t in texts]

        try:
            grounded = await asyncio.get_running_loop().run_in_executor(embedding_executor(), check)
        except Exception:  # noqa: BLE001 - the answer stands without its check
            log.exception("groundedness check failed")
            grounded = [None] * len(texts)
        return {"citations": rag.citations(texts, items)}, [{"groundedness": g} for g in grounded]
