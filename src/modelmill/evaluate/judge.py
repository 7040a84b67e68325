"""Judge: an LLM grades each answer against a rubric, through any OpenAI-compatible endpoint.

    # support-judge.yaml
    name: support-judge
    kind: judge
    data: support-test          # prompts, with or without reference answers (as for generation)
    judge:
      model: gpt-judge          # a registered model: remote (`modelmill models add gpt-judge --endpoint URL`)
                                # or local; it is asked for "Score: N"
      rubric: "Is the answer correct, polite and specific to the customer's order?"
      scale: [1, 5]

Metrics: ``score`` (mean grade mapped to 0..1), ``mean_grade`` (on the scale), ``unjudged`` (grades
that could not be read from the judge's answer; they count as the lowest grade and are kept).
"""

from __future__ import annotations

import re

from modelmill.errors import InputError
from modelmill.evaluate.generation import GenerationTask, prompt_of, reference_of
from modelmill.evaluate.tasks import register_task_kind

DEFAULT_RUBRIC = "Rate how well the answer responds to the question: correct, complete and clear."

JUDGE_PROMPT = """You are grading an assistant's answer.

Rubric: {rubric}

Question:
{question}
{reference}
Answer to grade:
{answer}

Give a grade from {lo} (worst) to {hi} (best). Reply with one line: "Score: N", then one sentence of reason."""


# "Score: 4", "**Score:** 4. Good", "score = 4/5": markdown and punctuation may sit between the word
# and the number (not a bracket: "Score (1-5): 4" is read by the fallback)
_SCORE = re.compile(r"score[\s:=*_#]{0,8}(-?\d+)(?!\d)", re.I)
# a whole number ("4." ending a sentence counts, "4.5" does not); one after "out of", "of" or "/"
# is the scale's end, not a grade
_NUMBER = re.compile(r"(?<![\d.])(?<!/)(?<!/ )(?<!\bof )(-?\d+)(?!\d|\.\d)", re.I)


def parse_grade(text: str, lo: int, hi: int) -> int | None:
    """The grade a judge gave: after "Score", else the last whole number in ``lo..hi`` that is not
    the scale's top ("I'd give it 3 out of 5" -> 3). None when there is none (or it is out of range)."""
    m = _SCORE.search(text)
    if m:
        g = int(m.group(1))
        return g if lo <= g <= hi else None
    # No "Score:": the last number in range ("on a scale of 1 to 5 I give it a 4" -> 4)
    found = [int(x) for x in _NUMBER.findall(text) if lo <= int(x) <= hi]
    return found[-1] if found else None


class JudgeTask(GenerationTask):
    name = "judge"
    metric_names = ("score", "mean_grade", "unjudged")
    version = 2  # 2: "**Score:** 4." is read; "3 out of 5" is 3, not 5
    max_new_tokens = 256

    def check_spec(self, spec):
        j = spec.judge or {}
        where = {"file": spec.source} if spec.source else {}
        unknown = set(j) - {"model", "rubric", "scale", "max_tokens"}
        if unknown:
            raise InputError(f"unknown judge setting(s): {', '.join(sorted(unknown))}", field="judge",
                             fix="use model, rubric, scale, max_tokens", **where)
        if not isinstance(j.get("model"), str) or not j["model"]:
            raise InputError("a judge task names the judging model", field="judge.model",
                             fix="add `judge: {model: NAME}` (a registered model, e.g. a remote endpoint)", **where)
        scale = j.get("scale", [1, 5])
        if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                    for x in scale) and scale[0] < scale[1]):
            raise InputError(f"expected [low, high] integers, got {scale!r}", field="judge.scale",
                             fix="e.g. scale: [1, 5]", **where)

    def from_raw(self, record, where, spec):
        return {"messages": prompt_of(record, where), "reference": reference_of(record, where, required=False)}

    def score(self, candidate, items, spec, data, progress=True):
        from modelmill.evaluate.candidates import candidate as make_candidate

        j = spec.judge
        lo, hi = j.get("scale", [1, 5])
        outs = self.generate(candidate, items, spec, data, progress)
        judge = make_candidate(data.store, j["model"])
        asks, which = [], []
        for k, (it, out) in enumerate(zip(items, outs)):
            if isinstance(out, Exception):
                continue
            question = "\n".join(m["content"] for m in it["messages"] if m["role"] == "user")
            ref = f"\nReference answer:\n{it['reference']}\n" if it.get("reference") else ""
            asks.append([{"role": "user", "content": JUDGE_PROMPT.format(
                rubric=j.get("rubric") or DEFAULT_RUBRIC, question=question, reference=ref, answer=out, lo=lo, hi=hi)}])
            which.append(k)
        try:
            verdicts = judge.generate(asks, max_new_tokens=int(j.get("max_tokens", 64)), batch_size=spec.batch_size,
                                      progress=progress) if asks else []
        finally:
            judge.close()
        res: list[dict] = [{"error": str(o)} if isinstance(o, Exception) else {} for o in outs]
        for k, v in zip(which, verdicts):
            if isinstance(v, Exception):
                res[k] = {"error": f"judge {j['model']}: {v}"}
                continue
            g = parse_grade(v, lo, hi)
            res[k] = {"gold": items[k].get("reference"), "pred": outs[k], "grade": g, "judgment": v,
                      "correct": None}
        return res

    def metrics(self, results, spec, data):
        lo, hi = spec.judge.get("scale", [1, 5])
        grades = [r["grade"] if r["grade"] is not None else lo for r in results]
        mean = sum(grades) / len(grades) if grades else float(lo)
        return {"n": len(results), "score": (mean - lo) / (hi - lo), "mean_grade": mean,
                "unjudged": sum(r["grade"] is None for r in results)}


register_task_kind(JudgeTask())
