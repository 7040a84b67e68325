"""Alpaca: ``{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}``."""

from __future__ import annotations

from .base import (ChatFormat, Where, check_chat, extras, get_list, get_str, register_format,
                   with_meta)

KNOWN = {"instruction", "input", "output", "system", "history"}


class Alpaca(ChatFormat):
    name = "alpaca"
    fields = "instruction, input?, output"

    def detect(self, record: dict) -> bool:
        return "instruction" in record and "output" in record

    def normalize(self, record: dict, where: Where) -> dict:
        instruction = get_str(record, "instruction", where)
        extra_input = get_str(record, "input", where, required=False)
        output = get_str(record, "output", where)
        system = get_str(record, "system", where, required=False)
        messages = [{"role": "system", "content": system}] if system else []
        for i, pair in enumerate(get_list(record, "history", where, required=False) or []):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise where.error(f"history[{i}]", "expected a [user, assistant] pair of strings, "
                                  f"got {repr(pair)[:60]}", fix='write [["question", "answer"], ...]')
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        prompt = instruction + ("\n\n" + extra_input if extra_input else "")
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        out = {"messages": check_chat(messages, where)}
        return with_meta(out, extras(record, KNOWN))


register_format(Alpaca())
