"""Preference pairs (DPO): ``{"prompt", "chosen", "rejected"}``, and OpenAI's DPO JSONL
(``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``).

``prompt`` is a string (one user message) or a list of messages; ``chosen``/``rejected``
are strings or message lists whose last assistant content is the answer. Without a
``prompt``, the messages before the answer in ``chosen`` are the prompt (TRL's implicit
prompt), or ``instruction`` (+ ``input``) is, as in Alpaca-style preference files.
"""

from __future__ import annotations

from .base import (ROLES, Format, Where, extras, get_str, register_format, type_name,
                   with_meta)

KNOWN = {"prompt", "chosen", "rejected", "instruction", "input"}


class Preference(Format):
    name = "preference"
    kind = "preference"
    fields = "prompt, chosen, rejected"

    def detect(self, record: dict) -> bool:
        return "chosen" in record and "rejected" in record

    def normalize(self, record: dict, where: Where) -> dict:
        chosen, chosen_before = _answer(record, "chosen", where)
        rejected, _ = _answer(record, "rejected", where)
        if record.get("prompt") is not None:
            prompt = _messages(record["prompt"], "prompt", where)
        elif record.get("instruction") is not None:
            text = get_str(record, "instruction", where)
            extra = get_str(record, "input", where, required=False)
            prompt = [{"role": "user", "content": text + ("\n\n" + extra if extra else "")}]
        else:
            prompt = chosen_before
        if not any(m["role"] == "user" for m in prompt):
            raise where.error("prompt", "missing" if not prompt else "has no user turn",
                              fix="give each record a 'prompt': a text, or messages with the user's turn")
        return _pair(prompt, chosen, rejected, where, extras(record, KNOWN))


def _pair(prompt: list[dict], chosen: str, rejected: str, where: Where, meta: dict, names=("chosen", "rejected")):
    if chosen.strip() == rejected.strip():
        raise where.error(names[1], f"is the same answer as '{names[0]}': the pair teaches nothing",
                          fix=f"give a worse answer as '{names[1]}', or drop this record")
    return with_meta({"prompt": prompt, "chosen": chosen, "rejected": rejected}, meta)


class OpenAIPreference(Format):
    """OpenAI's fine-tuning DPO file: the prompt under ``input.messages``, each answer a list with
    one assistant message."""

    name = "openai-dpo"
    kind = "preference"
    fields = "input, preferred_output, non_preferred_output"
    NAMES = ("preferred_output", "non_preferred_output")

    def detect(self, record: dict) -> bool:
        return "preferred_output" in record and "non_preferred_output" in record

    def normalize(self, record: dict, where: Where) -> dict:
        inp = record.get("input")
        if not isinstance(inp, dict) or "messages" not in inp:
            raise where.error("input", "missing" if inp is None else "has no 'messages'",
                              fix='give {"input": {"messages": [{"role": "user", "content": "..."}]}}')
        prompt = _messages(inp["messages"], "input.messages", where)
        if not any(m["role"] == "user" for m in prompt):
            raise where.error("input.messages", "has no user turn", fix="include the user's message")
        chosen, _ = _answer(record, self.NAMES[0], where)
        rejected, _ = _answer(record, self.NAMES[1], where)
        meta = extras(record, {"input", *self.NAMES})
        extra_in = extras(inp, {"messages"})  # tools, parallel_tool_calls: kept, not trained on
        if extra_in:
            meta["input"] = extra_in
        return _pair(prompt, chosen, rejected, where, meta, self.NAMES)


def _messages(value, field: str, where: Where) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise where.error(field, f"expected a string or a list of messages, got {type_name(value)}",
                          fix=f"make '{field}' a text or a list of {{\"role\", \"content\"}} objects")
    messages = []
    for i, m in enumerate(value):
        path = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise where.error(path, f"expected an object, got {type_name(m)}",
                              fix='write each message as {"role": "user", "content": "..."}')
        role = get_str(m, "role", where, path=path + ".role")
        if role not in ROLES:
            raise where.error(path + ".role", f"unknown role '{role}'", fix="use system, user or assistant")
        messages.append({"role": role, "content": get_str(m, "content", where, path=path + ".content")})
    return messages


def _answer(record: dict, field: str, where: Where) -> tuple[str, list[dict]]:
    """The answer text, and the messages before it when given as a conversation."""
    value = record.get(field)
    if isinstance(value, str):
        return value, []
    if value is None:
        get_str(record, field, where)  # raises "missing"
    messages = _messages(value, field, where)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise where.error(field, "has no assistant message",
                          fix=f"end '{field}' with the assistant's answer, or give it as a string")
    return messages[last]["content"], messages[:last]


register_format(Preference())
register_format(OpenAIPreference())
