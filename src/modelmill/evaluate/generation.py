"""Generation: a prompt in, free text out, compared with a reference answer.

    # faq.yaml
    name: faq
    kind: generation
    data: faq-test              # a chat dataset (the last answer is the reference), or a file of
                                # {"prompt" | "instruction" (+ "input") | "messages", "reference" | "output"}

Metrics (all 0..1): ``rouge_l`` (F-measure, rouge-score), ``bleu`` and ``chrf`` (sacrebleu, corpus
level). Chinese and Japanese text is segmented with jieba for ROUGE, and other non-ASCII text
(Cyrillic, Arabic, accented Latin ...) split into lowercased words; BLEU uses sacrebleu's ``zh``
tokenizer for Chinese and Korean and ``char`` for Japanese (kana), so CJK answers are not scored
as one long word.
"""

from __future__ import annotations

import re

from modelmill.evaluate.tasks import TaskKind, register_task_kind
from modelmill.text import has_cjk


_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script: what rouge-score keeps of ASCII text


class _Tokenizer:
    """rouge-score's tokenizer drops every non-ASCII letter; this one keeps them: CJK words
    (jieba), and the words of other scripts (Cyrillic, Arabic, accented Latin ...) lowercased."""

    def tokenize(self, text: str) -> list[str]:
        from rouge_score import tokenize

        if text.isascii():
            return tokenize.tokenize(text, None)
        if not has_cjk(text):
            return _WORD.findall(text.lower())
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        return [t for t in jieba.lcut(text.lower()) if t.strip() and any(ch.isalnum() for ch in t)]


def bleu_tokenizer(refs: list[str]) -> str:
    """sacrebleu's tokenizer for these references (all of them): ``char`` where any has kana
    (Japanese: the ``zh`` tokenizer splits Han characters only, so kana-only text would be one
    word), ``zh`` where any has other CJK characters, else ``13a``."""
    if any(_KANA.search(r) for r in refs):
        return "char"
    return "zh" if any(has_cjk(r) for r in refs) else "13a"


_KANA = re.compile(r"[\u3040-\u30ff]")


def text_metrics(preds: list[str], refs: list[str]) -> dict:
    """rouge_l (mean F), bleu and chrf (corpus), each in 0..1; per item rouge_l too."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    per = [scorer.score(r, p)["rougeL"].fmeasure if r.strip() else 0.0 for p, r in zip(preds, refs)]
    bleu = sacrebleu.corpus_bleu(preds, [refs], tokenize=bleu_tokenizer(refs)).score / 100 if preds else 0.0
    chrf = sacrebleu.corpus_chrf(preds, [refs]).score / 100 if preds else 0.0
    return {"rouge_l": sum(per) / len(per) if per else 0.0, "bleu": bleu, "chrf": chrf, "per_item": per}


def prompt_of(record: dict, where) -> list[dict]:
    """The user turns of a file record: messages, prompt, or instruction (+ input)."""
    if isinstance(record.get("messages"), list):
        msgs = [m for m in record["messages"] if isinstance(m, dict)]
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        if not msgs:
            raise where.error("messages", "has no turns before the answer", fix="add the user's message")
        return [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in msgs]
    text = record.get("prompt") or record.get("instruction") or record.get("question")
    if not isinstance(text, str) or not text.strip():
        raise where.error("prompt", "missing", fix="give each item a 'prompt' (or 'instruction', 'question', 'messages')")
    if isinstance(record.get("input"), str) and record["input"].strip():
        text = f"{text}\n\n{record['input']}"
    return [{"role": "user", "content": text}]


def reference_of(record: dict, where, required: bool = True) -> str | None:
    for k in ("reference", "output", "answer"):
        if isinstance(record.get(k), str):
            return record[k]
    if isinstance(record.get("messages"), list) and record["messages"] and record["messages"][-1].get("role") == "assistant":
        return str(record["messages"][-1].get("content", ""))
    if required:
        raise where.error("reference", "missing", fix="give each item the expected answer as 'reference' (or 'output')")
    return None


class GenerationTask(TaskKind):
    name = "generation"
    metric_names = ("rouge_l", "bleu", "chrf")
    version = 2  # 2: ROUGE keeps the words of non-Latin scripts; BLEU splits Japanese into characters
    max_new_tokens = 256

    def from_raw(self, record, where, spec):
        return {"messages": prompt_of(record, where), "reference": reference_of(record, where)}

    def from_record(self, record, data_kind, ref, n, spec):
        if data_kind != "chat":
            return super().from_record(record, data_kind, ref, n, spec)
        return {"messages": record["messages"][:-1], "reference": record["messages"][-1]["content"]}

    def prompt(self, item, spec, data):
        return [dict(m) for m in item["messages"]]

    def answer(self, item, spec, data):
        return item.get("reference") or ""

    def score(self, candidate, items, spec, data, progress=True):
        outs = self.generate(candidate, items, spec, data, progress)
        ok = [(it, o) for it, o in zip(items, outs) if not isinstance(o, Exception)]
        per = iter(text_metrics([o for _, o in ok], [it["reference"] for it, _ in ok])["per_item"])
        return [{"error": str(o)} if isinstance(o, Exception) else
                {"gold": it["reference"], "pred": o, "rouge_l": round(next(per), 4), "correct": None}
                for it, o in zip(items, outs)]

    def metrics(self, results, spec, data):
        m = text_metrics([r["pred"] for r in results], [r["gold"] for r in results])
        m.pop("per_item")
        return {"n": len(results), **m}


register_task_kind(GenerationTask())
