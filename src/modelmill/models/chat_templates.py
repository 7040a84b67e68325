"""Named chat templates shipped with modelmill, for base models that come without one.

    from modelmill.models.chat_templates import resolve_chat_template
    text = resolve_chat_template("chatml")           # a built-in name
    text = resolve_chat_template("my_format.jinja")  # or a Jinja file

The templates live as files in ``models/templates/*.jinja``; adding a format is adding a
file. Each one renders system/user/assistant messages and honours
``add_generation_prompt``, the way ``tokenizer.apply_chat_template`` calls it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from modelmill.errors import InputError

_TEMPLATE_DIR = "templates"


def chat_template_names() -> list[str]:
    """The built-in template names, sorted (``['alpaca', 'chatml', 'gemma', 'llama3']``)."""
    folder = resources.files("modelmill.models").joinpath(_TEMPLATE_DIR)
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))


def builtin_chat_template(name: str) -> str:
    """The text of a built-in template; InputError listing the names when unknown."""
    names = chat_template_names()
    if name not in names:
        raise InputError(f"unknown chat template {name!r}", field="--chat-template",
                         fix=f"use one of {', '.join(names)} or a path to a .jinja file")
    return resources.files("modelmill.models").joinpath(_TEMPLATE_DIR).joinpath(f"{name}.jinja").read_text("utf-8")


def resolve_chat_template(name_or_path: str | Path) -> str:
    """Template text for a built-in name, a ``.jinja`` file, or a literal template.

    A string that contains ``{%`` or ``{{`` is taken as the template itself, so the REST
    layer can pass one inline.
    """
    value = str(name_or_path).strip() if not isinstance(name_or_path, Path) else name_or_path
    if isinstance(value, str):
        if not value:
            raise InputError("the chat template is empty", field="--chat-template",
                             fix=f"use one of {', '.join(chat_template_names())} or a path to a .jinja file")
        if "{%" in value or "{{" in value:
            return check_chat_template(value)
        if value in chat_template_names():
            return builtin_chat_template(value)
    path = Path(value).expanduser()
    if path.is_file():
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the chat template: {e}", file=str(path),
                             fix="pass a UTF-8 Jinja file") from None
        if not text.strip():
            raise InputError("the chat template file is empty", file=str(path),
                             fix="write a Jinja chat template into it, or use a built-in name")
        return check_chat_template(text, str(path))
    names = ", ".join(chat_template_names())
    if path.suffix == ".jinja" or "/" in str(value) or "\\" in str(value):
        raise InputError("chat template file not found", file=str(path),
                         fix=f"check the path, or use one of {names}")
    raise InputError(f"unknown chat template {str(value)!r}", field="--chat-template",
                     fix=f"use one of {names} or a path to a .jinja file")


# A conversation every chat template must render: each message's content has to reach the prompt.
_SAMPLE = [{"role": "system", "content": "SYSTEM-7f3a"}, {"role": "user", "content": "USER-1c9e"},
           {"role": "assistant", "content": "ASSISTANT-5b2d"}, {"role": "user", "content": "USER-8e41"}]


def check_chat_template(text: str, file: str | None = None) -> str:
    """``text`` when it renders a sample conversation the way transformers renders chat templates;
    otherwise InputError naming the file and line (a Jinja syntax error), the error the template
    raised, or the message it leaves out. A template that refuses a system message is tried
    without one (several models' own templates do that)."""
    from jinja2 import TemplateError, TemplateSyntaxError
    from transformers.utils.chat_template_utils import render_jinja_template

    where = {"file": file} if file else {"field": "--chat-template"}
    fix = "fix the template, or use one of " + ", ".join(chat_template_names())
    last = None
    for messages in (_SAMPLE, _SAMPLE[1:]):
        try:
            rendered, _ = render_jinja_template([messages], chat_template=text, add_generation_prompt=True,
                                                bos_token="<s>", eos_token="</s>")
        except TemplateSyntaxError as e:
            raise InputError(f"the chat template does not parse: {e.message}", line=e.lineno, fix=fix,
                             **where) from None
        except TemplateError as e:  # raise_exception(...): e.g. "System role not supported"; try without one
            last = e
            continue
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            last = e
            break
        text_out = rendered[0] if isinstance(rendered, list) else rendered
        missing = [m["role"] for m in messages if m["content"] not in text_out]
        if missing:
            raise InputError(f"the chat template leaves the {missing[0]} message out of the prompt "
                             "(rendered a system, user, assistant, user conversation)", fix=fix, **where)
        return text
    raise InputError(f"the chat template fails on a system, user, assistant, user conversation: "
                     f"{type(last).__name__}: {last}", fix=fix, **where)
