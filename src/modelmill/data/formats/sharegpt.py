"""ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...], "system"?}``."""

from __future__ import annotations

from .base import (ChatFormat, Where, check_chat, extras, get_list, get_str, register_format,
                   type_name, with_meta)

ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class ShareGPT(ChatFormat):
    name = "sharegpt"
    fields = "conversations[from, value]"

    def detect(self, record: dict) -> bool:
        return "conversations" in record

    def normalize(self, record: dict, where: Where) -> dict:
        system = get_str(record, "system", where, required=False)
        messages = [{"role": "system", "content": system}] if system else []
        for i, turn in enumerate(get_list(record, "conversations", where)):
            path = f"conversations[{i}]"
            if not isinstance(turn, dict):
                raise where.error(path, f"expected an object, got {type_name(turn)}",
                                  fix='write each turn as {"from": "human", "value": "..."}')
            who = get_str(turn, "from", where, path=path + ".from")
            if who not in ROLE_OF:
                raise where.error(path + ".from", f"unknown speaker '{who}'",
                                  fix="use one of: " + ", ".join(ROLE_OF))
            content = get_str(turn, "value", where, path=path + ".value")
            messages.append({"role": ROLE_OF[who], "content": content})
        if not messages:
            raise where.error("conversations", "is empty", fix="drop this record or add its turns")
        out = {"messages": check_chat(messages, where, "conversations")}
        return with_meta(out, extras(record, {"conversations", "system"}))


register_format(ShareGPT())
