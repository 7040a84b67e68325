"""Classification evaluation: score every label's likelihood after the training prompt.

    from modelmill.evaluate.classification import score_labels, classification_metrics, format_metrics
    rows = score_labels(model, tokenizer, records, labels)       # records: {"text", "label", ...}
    metrics = classification_metrics([r["gold"] for r in rows], [r["pred"] for r in rows], labels)
    print(format_metrics("reviews-lora", metrics))

The prediction is the label whose answer turn (label text + end-of-turn marker, tokenized
exactly as training saw it) has the highest total log-probability after the prompt. No
text is generated, so no answer can be unparsable, and the end-of-turn marker keeps a
label that is a prefix of another ("positive" / "positive-ish") from winning by default.

Fast path ("packed"): one sequence per record holds the prompt once followed by every
label's answer; a 4D attention mask lets each answer see the prompt and itself only, and
each answer's positions restart where the prompt ends. The prompt is computed once
rather than once per label, without copying a KV cache, and logits are computed only
for the few answer positions. The part every prompt shares (system prompt, instruction,
label list) is computed once per call and its KV cache reused by every batch. Models whose layers are not plain attention (recurrent
or linear-attention hybrids) or whose attention kernel takes no custom mask fall back to
"pairs": one ordinary sequence per (record, label), batched by length.

``generate_labels`` is the slow baseline (greedy generation, one example at a time,
then parsing), kept for benchmarks and for models that must be judged on their text.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, replace

from modelmill.data.formats import classification_prompt, to_messages
from modelmill.errors import InputError
from modelmill.data.chat_tokens import IGNORE, shorten_text, tokenize_chat

NONE_LABEL = "<unparsed>"  # stands for a None prediction inside scikit-learn; never a real label


@dataclass
class _Encoded:
    """One record, tokenized for every label. ``prefix`` is shared by all labels; label l
    continues with ``suffixes[l]``, whose tokens at ``scored[l]`` (indices into the suffix)
    are the answer turn."""

    prefix: list[int]
    suffixes: list[list[int]]
    scored: list[list[int]]

    @property
    def length(self) -> int:
        return len(self.prefix) + sum(len(s) for s in self.suffixes)


# ---- tokenization: the training view -------------------------------------------------------

def classification_messages(record: dict, labels: list[str], label: str | None) -> list[dict]:
    """The training view of a record: the classification prompt, and ``label`` as the answer
    (no answer turn when ``label`` is None)."""
    msgs = to_messages({**record, "label": label or labels[0]}, "classification", labels=labels)
    return msgs if label is not None else msgs[:-1]


def _tokenize_pairs(record: dict, labels: list[str], tokenizer, chat_template, messages=None) -> list[dict]:
    messages = messages or classification_messages
    out = []
    for label in labels:
        ex = tokenize_chat(messages(record, labels, label), tokenizer, None, chat_template)
        if ex is None:
            raise InputError("the chat template renders no assistant turn", field="chat_template",
                             fix="use a chat template that renders the assistant's message")
        out.append(ex)
    return out


def _fit_text(record: dict, labels: list[str], tokenizer, max_length: int, chat_template,
              messages=None) -> tuple[list[dict], str]:
    """(every label's tokenized conversation, the text used): the text's end is cut so that
    the longest fits ``max_length``, as ``train.chat_tokens.tokenize_record`` does for one label."""
    pairs = _tokenize_pairs(record, labels, tokenizer, chat_template, messages)
    longest = max(len(p["input_ids"]) for p in pairs)
    if longest <= max_length:
        return pairs, record["text"]
    short = shorten_text(record["text"], tokenizer, longest - max_length)
    if short is None:  # the instruction alone is too long: score the whole thing rather than cut answers
        return pairs, record["text"]
    return _tokenize_pairs({**record, "text": short}, labels, tokenizer, chat_template, messages), short


def _last_answer(labels: list[int]) -> list[int]:
    """Positions of the last assistant turn: the answer being scored. Earlier assistant turns
    (few-shot examples) are part of the prompt, shared by every label."""
    end = max(k for k, t in enumerate(labels) if t != IGNORE)
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return list(range(start, end + 1))


def _encode(record: dict, labels: list[str], tokenizer, max_length: int, chat_template, messages=None) -> _Encoded:
    pairs, _ = _fit_text(record, labels, tokenizer, max_length, chat_template, messages)
    # The prompt is everything before the first answer token. Labels almost always share it
    # token for token; where a template or a merge makes them differ, the shared part is the
    # common prefix and the rest of each prompt rides (unscored) in that label's suffix.
    answers = [_last_answer(p["labels"]) for p in pairs]
    firsts = [a[0] for a in answers]
    shared = min(firsts)
    first_ids = pairs[0]["input_ids"]
    for p in pairs[1:]:
        ids = p["input_ids"]
        n = 0
        while n < shared and ids[n] == first_ids[n]:
            n += 1
        shared = n
    if shared == 0:
        raise InputError("the prompts of different labels share no token", field="chat_template",
                         fix="use a chat template that renders the user turn the same way for every answer")
    suffixes = [p["input_ids"][shared:] for p in pairs]
    scored = [[k - shared for k in a] for a in answers]
    return _Encoded(prefix=first_ids[:shared], suffixes=suffixes, scored=scored)


def _check_template(tokenizer, chat_template) -> None:
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template", field="chat_template",
                         fix="pass chat_template= (the base model's template), as training used")


# ---- model plumbing --------------------------------------------------------------------------

def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _can_pack(model, longest: int) -> bool:
    """Whether a custom 4D mask gives the same answer as separate sequences."""
    config = _base(model).config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False  # flash-attention kernels take no arbitrary mask; flex wants a BlockMask
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if not types <= {"full_attention", "sliding_attention"}:
        return False  # recurrent / linear-attention layers see every earlier token regardless
    if any(w in (config.model_type or "") for w in ("mamba", "rwkv", "ssm", "recurrent", "jamba")):
        return False
    window = getattr(config, "sliding_window", None)
    uses_window = "sliding_attention" in types or getattr(config, "use_sliding_window", True)
    if window and uses_window and longest > window:
        return False  # the custom mask would let sliding layers see past their window
    return True


def _shares_prefix_safely(model) -> bool:
    """Whether a plain KV cache of the common prefix can be reused: every layer keeps every
    past token (sliding-window caches drop some)."""
    config = _base(model).config
    return set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"} and not (
        getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))


def _keeps_logits(model) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(_base(model).forward).parameters


def _forward_logprobs(model, input_ids, attention_mask, position_ids, keep: int, **extra):
    """Log-probabilities [B, keep, V] (float32) of the last ``keep`` positions."""
    import torch

    kw = {"use_cache": False, **extra}
    if _keeps_logits(model):
        kw["logits_to_keep"] = keep
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)
    logits = out.logits[:, -keep:, :]
    return torch.log_softmax(logits.float(), dim=-1)


def _pick(logp, rows: list[int], cols: list[int], targets: list[int]):
    """``logp[rows[i], cols[i], targets[i]]`` for every i, as float32 on the CPU."""
    import torch

    at = [torch.tensor(x, device=logp.device) for x in (rows, cols, targets)]
    return logp[at[0], at[1], at[2]].cpu()


def _pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return t
    return 0


def _common_prefix(model, encoded: list[_Encoded]):
    """(KV cache, length) of the tokens every record's prompt starts with (system prompt,
    instruction, label list), computed once per call; None when there is nothing to share."""
    common = encoded[0].prefix
    for e in encoded[1:]:
        n = 0
        while n < len(common) and n < len(e.prefix) and e.prefix[n] == common[n]:
            n += 1
        common = common[:n]
    # Each record keeps at least its last prompt token: its logits predict the answers.
    common = common[:min(len(e.prefix) for e in encoded) - 1]
    if not common:
        return None
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([common], device=device)
    kw = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **kw)
    return out.past_key_values, len(common)


def _score_packed(model, batch: list[_Encoded], pad_id: int, past=None):
    """Scores [B, L]: one left-padded sequence per record, prompt + every label's suffix.

    ``past``: ``_common_prefix``'s (cache, C); the records' prefixes then start after those C tokens.
    """
    import copy

    import torch

    device = next(model.parameters()).device
    dtype = model.get_input_embeddings().weight.dtype
    C = past[1] if past is not None else 0
    B, L = len(batch), len(batch[0].suffixes)
    T = max(e.length for e in batch)
    keep = max(e.length - len(e.prefix) + 1 for e in batch)  # last prompt token + all suffixes
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # -1 pad, 0 prompt, l+1 label l's suffix
    rows, cols, targets, which = [], [], [], []
    for b, e in enumerate(batch):
        o = T - e.length  # left padding
        P = len(e.prefix)
        ids[b, o:o + P] = torch.tensor(e.prefix)
        pos[b, o:o + P] = torch.arange(C, C + P)
        seg[b, o:o + P] = 0
        start = o + P
        for l, (suf, scored) in enumerate(zip(e.suffixes, e.scored)):
            n = len(suf)
            ids[b, start:start + n] = torch.tensor(suf)
            pos[b, start:start + n] = torch.arange(C + P, C + P + n)
            seg[b, start:start + n] = l + 1
            for j in scored:
                prev = start + j - 1 if j > 0 else o + P - 1  # the token that predicts suffix[j]
                rows.append(b)
                cols.append(prev - (T - keep))
                targets.append(suf[j])
                which.append(b * L + l)
            start += n
    # allowed[b, q, k]: causal, never a pad, and a suffix sees the prompt and itself only.
    sq, sk = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal & (sk >= 0) & ((sk == 0) | (sk == sq))
    allowed |= torch.eye(T, dtype=torch.bool)  # pads attend to themselves: no empty softmax row
    allowed = torch.cat([torch.ones(B, T, C, dtype=torch.bool), allowed], dim=2)  # [B, T, C + T]
    mask = torch.zeros(B, 1, T, C + T, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    extra = {}
    if past is not None:
        cache = copy.deepcopy(past[0])  # the forward appends to it; the shared one stays as is
        cache.batch_repeat_interleave(B)
        extra = {"past_key_values": cache, "use_cache": True}
    logp = _forward_logprobs(model, ids.to(device), mask.to(device), pos.to(device), keep, **extra)  # [B, keep, V]
    picked = _pick(logp, rows, cols, targets)
    scores = torch.zeros(B * L, dtype=torch.float64).index_add_(0, torch.tensor(which), picked.double())
    return scores.view(B, L).tolist()


def _score_pairs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    """One score per (ids, scored positions) sequence; left-padded so answers end together."""
    import torch

    device = next(model.parameters()).device
    B = len(pairs)
    T = max(len(ids) for ids, _ in pairs)
    keep = max(len(ids) - min(sc) + 1 for ids, sc in pairs)
    ids_t = torch.full((B, T), pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    rows, cols, targets = [], [], []
    for b, (ids, scored) in enumerate(pairs):
        o = T - len(ids)
        ids_t[b, o:] = torch.tensor(ids)
        att[b, o:] = 1
        pos[b, o:] = torch.arange(len(ids))
        for k in scored:
            rows.append(b)
            cols.append(o + k - 1 - (T - keep))
            targets.append(ids[k])
    logp = _forward_logprobs(model, ids_t.to(device), att.to(device), pos.to(device), keep)
    picked = _pick(logp, rows, cols, targets)
    scores = torch.zeros(B, dtype=torch.float64).index_add_(0, torch.tensor(rows), picked.double())
    return scores.tolist()


@contextmanager
def _eval_mode(model):
    """Eval mode and no autograd for the block; the model's mode is put back after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _check_labels(labels: list[str]) -> list[str]:
    labels = [str(x) for x in labels]
    if not labels:
        raise InputError("no labels to choose from", field="labels", fix="pass the dataset's labels (data.labels_of)")
    if len(set(labels)) != len(labels):
        raise InputError(f"labels repeat: {labels}", field="labels", fix="give each label once")
    return labels


# ---- public API ------------------------------------------------------------------------------

def score_labels(model, tokenizer, records: list[dict], labels: list[str], *, batch_size: int = 16,
                 max_length: int = 1024, chat_template: str | None = None, progress: bool = True,
                 method: str = "auto", messages=None) -> list[dict]:
    """Predict each record's label by the log-likelihood of every label's answer turn.

    Returns, per record and in order, ``{"pred": label, "scores": {label: total log-prob},
    "gold": record["label"]}`` (gold is None for unlabeled records). ``model`` is any causal
    LM, a peft model included; ``chat_template`` overrides the tokenizer's, as in training.
    Texts too long for ``max_length`` lose their end, as in training. ``batch_size`` is
    sequences per forward pass; ``method`` is "packed" (one sequence per record, all labels
    in it), "pairs" (one sequence per record and label) or "auto" (packed where the model
    allows it). ``messages(record, labels, label)`` builds the conversation to score (default
    ``classification_messages``, the training view); its answer turn must be ``label`` and it
    must put the record's ``text`` in the prompt (that is what gets cut when too long).
    """
    from tqdm.auto import tqdm

    labels = _check_labels(labels)
    if method not in ("auto", "packed", "pairs"):
        raise InputError(f"unknown method '{method}'", field="method", fix="use auto, packed or pairs")
    if batch_size < 1:
        raise InputError(f"must be >= 1, got {batch_size}", field="batch_size", fix="e.g. 16")
    _check_template(tokenizer, chat_template)
    encoded = [_encode(r, labels, tokenizer, max_length, chat_template, messages) for r in records]
    if not encoded:
        return []
    if method == "auto":
        method = "packed" if _can_pack(model, max(e.length for e in encoded)) else "pairs"
    pad_id = _pad_id(tokenizer)

    scores: list[list[float]] = [[0.0] * len(labels) for _ in encoded]
    with _eval_mode(model):
        if method == "packed":
            # Longest first: similar lengths share a batch (little padding), and memory
            # trouble, if any, shows at once.
            order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)
            batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            past = _common_prefix(model, encoded) if _shares_prefix_safely(model) else None
            if past is not None:
                encoded = [replace(e, prefix=e.prefix[past[1]:]) for e in encoded]
            for idx in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
                for i, row in zip(idx, _score_packed(model, [encoded[i] for i in idx], pad_id, past)):
                    scores[i] = row
        else:
            items = [(i, l) for i in range(len(encoded)) for l in range(len(labels))]
            seqs = {(i, l): (encoded[i].prefix + encoded[i].suffixes[l],
                             [len(encoded[i].prefix) + k for k in encoded[i].scored[l]]) for i, l in items}
            items.sort(key=lambda it: -len(seqs[it][0]))
            batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
            for batch in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
                for (i, l), s in zip(batch, _score_pairs(model, [seqs[it] for it in batch], pad_id)):
                    scores[i][l] = s

    out = []
    for r, row in zip(records, scores):
        best = max(range(len(labels)), key=lambda l: row[l])  # ties: the first label
        out.append({"pred": labels[best], "scores": dict(zip(labels, row)),
                    "gold": None if r.get("label") is None else str(r["label"])})
    return out


def parse_label(output: str, labels: list[str]) -> str | None:
    """The label named earliest in ``output`` (case-insensitive; at equal starts the longer
    name), preferring whole-word matches; None when no label appears."""
    low = output.lower()
    for bounded in (True, False):
        best = None  # (start, -length, label)
        for label in labels:
            pat = re.escape(label.lower())
            if bounded:
                pat = rf"(?<![a-z0-9]){pat}(?![a-z0-9])"
            m = re.search(pat, low)
            if m and (best is None or (m.start(), -len(label)) < best[:2]):
                best = (m.start(), -len(label), label)
        if best:
            return best[2]
    return None


def generate_labels(model, tokenizer, records: list[dict], labels: list[str], *, max_new_tokens: int = 8,
                    max_length: int = 1024, chat_template: str | None = None,
                    progress: bool = True) -> list[dict]:
    """The slow baseline: greedy-generate an answer one record at a time and parse it.

    Returns per record ``{"pred": label or None, "output": generated text, "gold": ...}``;
    a None pred (no label named) counts as wrong in ``classification_metrics``. Prompts and
    text shortening are those of ``score_labels``.
    """
    import torch
    from tqdm.auto import tqdm

    labels = _check_labels(labels)
    _check_template(tokenizer, chat_template)
    device = next(model.parameters()).device
    out = []
    with _eval_mode(model):
        for r in tqdm(records, desc="generating", unit="record", disable=not progress):
            _, text = _fit_text(r, labels, tokenizer, max_length, chat_template)
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": classification_prompt(text, labels)}], tokenize=False,
                add_generation_prompt=True, chat_template=chat_template)
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=_pad_id(tokenizer))
            answer = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            out.append({"pred": parse_label(answer, labels), "output": answer,
                        "gold": None if r.get("label") is None else str(r["label"])})
    return out


def classification_metrics(golds: list[str], preds: list[str | None], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``confusion[i][j]`` counts records of gold ``labels[i]`` predicted ``labels[j]``; a None
    prediction is wrong: it lowers accuracy and its gold class's recall, is counted in
    ``unparsed``, and appears in no column of the matrix. Macro-F1 averages over the classes
    that occur: in the scored items or in the predictions. A label of the task that is neither
    (a class the test set, or a ``--limit``, left out) has no F1: its per-class scores are None
    ("n/a") and it does not pull the average down.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = _check_labels(labels)
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} golds but {len(preds)} predictions")
    unknown = sorted({str(g) for g in golds} - set(labels))
    if unknown:
        raise InputError(f"gold labels not among the labels: {', '.join(unknown)}", field="labels",
                         fix="pass every label of the test set")
    y_true = [str(g) for g in golds]
    y_pred = [NONE_LABEL if p is None else str(p) for p in preds]
    absent = {"precision": None, "recall": None, "f1": None, "support": 0}
    if not y_true:
        return {"n": 0, "accuracy": 0.0, "macro_f1": 0.0, "unparsed": 0, "labels": labels,
                "per_class": {x: dict(absent) for x in labels},
                "confusion": [[0] * len(labels) for _ in labels]}
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    seen = set(y_true) | set(y_pred)
    present = [i for i, x in enumerate(labels) if x in seen]
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": sum(float(f[i]) for i in present) / len(present),  # y_true is not empty: present neither
        "unparsed": sum(p is None for p in preds),
        "labels": labels,
        "per_class": {x: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      if x in seen else dict(absent) for i, x in enumerate(labels)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _cell(v, width: int) -> str:
    return f"{'n/a':>{width}}" if v is None else f"{v:{width}.3f}"


def format_metrics(name: str, metrics: dict) -> str:
    """A short block: headline numbers, a per-class table, the confusion matrix."""
    labels = metrics["labels"]
    w = max([len(x) for x in labels] + [5])
    f1 = f"  macro-F1 {metrics['macro_f1']:.3f}" if "macro_f1" in metrics else ""
    lines = [f"{name}: accuracy {metrics['accuracy']:.3f}{f1}  "
             f"n={metrics['n']}" + (f"  unparsed {metrics['unparsed']}" if metrics.get("unparsed") else ""),
             f"  {'label':<{w}}  precision  recall     f1  support"]
    for x in labels:
        c = metrics["per_class"].get(x) or {}
        lines.append(f"  {x:<{w}}  {_cell(c.get('precision'), 9)}  {_cell(c.get('recall'), 6)}  {_cell(c.get('f1'), 5)}"
                     f"  {c.get('support', 0):7d}")
    cw = max([len(x) for x in labels] + [len(str(v)) for row in metrics["confusion"] for v in row])
    lines.append("  confusion (rows: gold, columns: predicted)")
    lines.append(f"  {'':<{w}}  " + "  ".join(f"{x:>{cw}}" for x in labels))
    for x, row in zip(labels, metrics["confusion"]):
        lines.append(f"  {x:<{w}}  " + "  ".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)


# ---- the task kind ------------------------------------------------------------------------------

from modelmill.evaluate.tasks import TaskKind, register_task_kind  # noqa: E402


def choose_scoring(candidate, spec) -> str:
    """loglik or generate for this candidate: likelihood where it can, text where it must."""
    if spec.scoring == "loglik" and not candidate.can_score:
        raise InputError(f"{candidate.name} cannot score answers by likelihood (a remote model gives text only)",
                         field="scoring", fix="use `scoring: auto` or `scoring: generate`")
    if spec.scoring == "generate" or not candidate.can_score:
        return "generate"
    return "loglik"


def choice_results(kind, candidate, items, spec, data, labels, parse, progress) -> list[dict]:
    """Predict one of ``labels`` per item: by likelihood of each answer turn, or by generating
    and parsing (``parse(text, item) -> label or None``; None is counted wrong and kept for the report)."""
    if choose_scoring(candidate, spec) == "loglik":
        shots = candidate.shots(items, spec, data) or [None] * len(items)
        def messages(record, labels_, label):
            return kind.conversation(record, spec, data, record.get("_shots"), answer=label)

        rows = candidate.choice_scores([{**it, "_shots": sh} for it, sh in zip(items, shots)], labels, messages,
                                       batch_size=spec.batch_size, progress=progress)
        return [{"gold": kind.answer(it, spec, data), "pred": r["pred"], "correct": r["pred"] == kind.answer(it, spec, data),
                 "scores": {k: round(v, 4) for k, v in r["scores"].items()}} for it, r in zip(items, rows)]
    outs = kind.generate(candidate, items, spec, data, progress)
    res = []
    for it, out in zip(items, outs):
        if isinstance(out, Exception):
            res.append({"error": str(out)})
        else:
            pred = parse(out, it)
            res.append({"gold": kind.answer(it, spec, data), "pred": pred, "output": out,
                        "correct": pred == kind.answer(it, spec, data)})
    return res


class ClassificationTask(TaskKind):
    """Text -> one of the labels. Scored by each label's likelihood after the training prompt
    (local models), or by generating an answer and finding the label named in it."""

    name = "classification"
    metric_names = ("accuracy", "macro_f1", "unparsed")
    version = 2  # 2: macro-F1 over the classes that occur (1 counted a label absent from items and answers as F1 0)
    max_new_tokens = 16

    def labels_for(self, spec, items, dataset_labels):
        from modelmill.data.formats import labels_of

        labels = spec.labels or dataset_labels or labels_of(items)
        labels = _check_labels(labels)
        if len(labels) < 2:
            raise InputError(f"only one label ({labels[0]}) in the data: nothing to choose between", field="labels",
                             file=spec.source, fix="list every label under `labels:`, or use a test set with several")
        unknown = sorted({it["label"] for it in items} - set(labels))
        if unknown:
            raise InputError(f"labels in the test set that the task does not list: {', '.join(unknown)}",
                             field="labels", file=spec.source,
                             fix="add them to `labels:`, or drop those items from the test set")
        return labels

    def from_raw(self, record, where, spec):
        from modelmill.data.formats import get_format

        out = get_format("classification").normalize(record, where)
        return {"text": out["text"], "label": out["label"]}

    def from_record(self, record, data_kind, ref, n, spec):
        if data_kind != "classification":
            return super().from_record(record, data_kind, ref, n, spec)
        return {"text": record["text"], "label": record["label"]}

    def prompt(self, item, spec, data):
        return [{"role": "user", "content": classification_prompt(item["text"], data.labels)}]

    def answer(self, item, spec, data):
        return item["label"]

    def check_candidate(self, candidate, spec, data):
        from modelmill.evaluate.candidates import FewShot, TfidfLR

        if candidate.kind == "classical" and not isinstance(candidate, TfidfLR):
            raise InputError(f"{candidate.name} is an extraction baseline", field="--baselines",
                             fix="for classification tasks use tfidf (or `classical`)")
        if isinstance(candidate, TfidfLR):
            if not data.train:
                raise InputError("the TF-IDF baseline learns from the task's training set, and there is none",
                                 field="train", fix="add `train: DATASET` to the task (or --train)")
            return
        if isinstance(candidate, FewShot) and not data.train:
            raise InputError(f"{candidate.name} needs training examples to show", field="train",
                             fix="add `train: DATASET` to the task (or --train)")
        choose_scoring(candidate, spec)  # refuses loglik for a text-only model

    def score(self, candidate, items, spec, data, progress=True):
        from modelmill.evaluate.candidates import TfidfLR

        if isinstance(candidate, TfidfLR):
            preds = candidate.fit_predict(data.train, items)
            return [{"gold": it["label"], "pred": p, "correct": p == it["label"]} for it, p in zip(items, preds)]
        return choice_results(self, candidate, items, spec, data, data.labels,
                              lambda out, _: parse_label(out, data.labels), progress)

    def metrics(self, results, spec, data):
        return classification_metrics([r["gold"] for r in results], [r["pred"] for r in results], data.labels)


register_task_kind(ClassificationTask())
