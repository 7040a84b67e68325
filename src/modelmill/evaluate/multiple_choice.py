"""Multiple choice (MMLU style): a question, lettered choices, one right letter.

    # mmlu.yaml
    name: mmlu
    kind: multiple_choice
    data: ../shared/data/mmlu/test.jsonl     # {"question", "choices": [...], "answer": "B" | 1 | "choice text"}
    limit: 500

Local models are scored by the likelihood of each letter as the answer; remote models answer in
text and the first letter named (or a choice quoted) is taken.
"""

from __future__ import annotations

import re
import string

from modelmill.evaluate.classification import choice_results, classification_metrics
from modelmill.evaluate.tasks import TaskKind, register_task_kind

LETTERS = string.ascii_uppercase


def format_question(question: str, choices: list[str]) -> str:
    lines = [question.strip(), ""] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines)


def parse_letter(output: str, choices: list[str]) -> str | None:
    """The letter the answer names: "B", "(B)", "B.", "Answer: B", or the text of a choice."""
    letters = LETTERS[:len(choices)]
    text = output.strip()
    lower = letters.lower()
    for pat in (rf"(?i:answer)\s*(?:is|:)?\s*\(?([{letters}])\b",  # "The answer is C", "Answer: (B)"
                # a small letter only where it cannot be the article: "answer: c", "answer is (b)" but
                # not "the answer is a city"
                rf"(?i:answer)\s*(?:is|:)?\s*\(?([{lower}])(?=\s*[).:]|\s*$)",
                rf"^\(?([{letters}])(?:[.):]|$|\s*$)",  # "B", "B.", "(B)" first
                rf"\(([{letters}])\)",  # "(C)" anywhere
                rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])(?!\s+[a-z])"):  # a lone letter, not the article "A good"
        m = re.search(pat, text)
        if m:
            return m.group(1).upper()
    low = output.lower()
    for i, c in enumerate(choices):
        if c.strip() and c.strip().lower() in low:
            return LETTERS[i]
    return None


class MultipleChoiceTask(TaskKind):
    name = "multiple_choice"
    metric_names = ("accuracy", "unparsed")
    version = 2  # 2: "the answer is a ..." is not read as choice A (generated answers)
    max_new_tokens = 8

    def from_raw(self, record, where, spec):
        q = record.get("question")
        if not isinstance(q, str) or not q.strip():
            raise where.error("question", "missing or not a text", fix="give every item a 'question'")
        choices = record.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= 26:
            raise where.error("choices", "expected a list of 2 to 26 choices", fix='e.g. "choices": ["Paris", "Rome"]')
        choices = [str(c) for c in choices]
        ans = record.get("answer")
        if isinstance(ans, bool) or ans is None:
            raise where.error("answer", "missing", fix='give the right choice as a letter ("B"), an index (1) or its text')
        if isinstance(ans, int):
            if not 0 <= ans < len(choices):
                raise where.error("answer", f"index {ans} is out of range for {len(choices)} choices",
                                  fix="use a 0-based index")
            letter = LETTERS[ans]
        elif isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper() in LETTERS[:len(choices)]:
            letter = ans.strip().upper()
        elif isinstance(ans, str) and ans in choices:
            letter = LETTERS[choices.index(ans)]
        else:
            raise where.error("answer", f"{ans!r} is not one of the choices' letters ({LETTERS[:len(choices)]})",
                              fix='give the right choice as a letter ("B"), an index (1) or its text')
        item = {"text": format_question(q, choices), "choices": choices, "label": letter}
        if record.get("subject"):
            item["subject"] = str(record["subject"])
        return item

    def labels_for(self, spec, items, dataset_labels):
        return list(LETTERS[:max(len(it["choices"]) for it in items)])

    def prompt(self, item, spec, data):
        return [{"role": "user", "content": item["text"] + "\n\nAnswer with the letter of the correct choice."}]

    def answer(self, item, spec, data):
        return item["label"]

    def score(self, candidate, items, spec, data, progress=True):
        # Items with fewer choices than the most are scored among their own letters only.
        groups: dict[int, list[int]] = {}
        for j, it in enumerate(items):
            groups.setdefault(len(it["choices"]), []).append(j)
        out: list[dict] = [{}] * len(items)
        for n, idx in groups.items():
            sub = [items[j] for j in idx]
            res = choice_results(self, candidate, sub, spec, data, list(LETTERS[:n]),
                                 lambda text, it: parse_letter(text, it["choices"]), progress)
            for j, r in zip(idx, res):
                out[j] = r
        return out

    def metrics(self, results, spec, data):
        m = classification_metrics([r["gold"] for r in results], [r["pred"] for r in results], data.labels)
        m.pop("macro_f1", None)
        subjects: dict[str, list[bool]] = {}
        for r in results:
            subject = data.items[r["i"]].get("subject") if "i" in r else None
            if subject:
                subjects.setdefault(subject, []).append(bool(r["correct"]))
        if subjects:
            m["by_subject"] = {s: sum(v) / len(v) for s, v in sorted(subjects.items())}
        return m


register_task_kind(MultipleChoiceTask())
