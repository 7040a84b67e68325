"""OpenAI chat fine-tuning JSONL: ``{"messages": [{"role", "content", "weight"?}, ...]}``.

``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts. A
per-message ``weight`` (0 or 1) is kept. Top-level ``tools``/``functions`` and any other
fields are dropped: the canonical record holds only the messages.
"""

from __future__ import annotations

from .base import ChatFormat, Where, check_chat, get_list, get_str, register_format, type_name

ROLE_OF = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class Messages(ChatFormat):
    name = "messages"
    fields = "messages[role, content]"

    def detect(self, record: dict) -> bool:
        return "messages" in record

    def normalize(self, record: dict, where: Where) -> dict:
        messages = []
        for i, m in enumerate(get_list(record, "messages", where)):
            path = f"messages[{i}]"
            if not isinstance(m, dict):
                raise where.error(path, f"expected an object, got {type_name(m)}",
                                  fix='write each message as {"role": "user", "content": "..."}')
            role = get_str(m, "role", where, path=path + ".role")
            if role not in ROLE_OF:
                raise where.error(path + ".role", f"role '{role}' is not supported",
                                  fix="use system, user or assistant; drop tool and function-call turns")
            out = {"role": ROLE_OF[role], "content": _content(m, where, path)}
            if m.get("weight") is not None:
                if m["weight"] not in (0, 1) or isinstance(m["weight"], float):
                    raise where.error(path + ".weight", f"expected 0 or 1, got {m['weight']!r}",
                                      fix="set weight to 1 to train on this turn, 0 to skip it")
                out["weight"] = int(m["weight"])
            messages.append(out)
        if not messages:
            raise where.error("messages", "is empty", fix="drop this record or add its messages")
        return {"messages": check_chat(messages, where)}


def _content(m: dict, where: Where, path: str) -> str:
    content = m.get("content")
    if not isinstance(content, list):
        return get_str(m, "content", where, path=path + ".content")
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise where.error(f"{path}.content[{j}]", "only text parts are supported",
                              fix='write parts as {"type": "text", "text": "..."}; drop image, audio parts')
        texts.append(part["text"])
    return "".join(texts)


register_format(Messages())
