"""The base-model registry: built-in models, local Hugging Face folders, GGUF files, and remote
OpenAI-compatible endpoints.

    reg = ModelRegistry(open_store())
    reg.add("qwen3-0.6b", "/models/Qwen3-0.6B")          # a folder, used in place
    reg.add("my-gguf", "/models/x.Q8_0.gguf")           # converted once to safetensors
    path = reg.ready("smollm2-135m-instruct").path      # converts the built-in on first use
    reg.add_remote("gpt", "https://api.openai.com/v1", "gpt-4o-mini", api_key_env="OPENAI_API_KEY")

A remote model is a ``base_models`` row with ``source_type`` 'remote', ``source`` the API's base
URL, ``path`` None and ``info`` {"remote_model", "api_key_env", "endpoint"}. It has no local
weights: ``ready()`` and ``base_hash()`` refuse it, and ``list()`` leaves it out unless asked, so
that code written for local models (serving's /v1/models) never meets one. Call it with
``modelmill.models.remote.RemoteModel.from_row(reg.get(name))``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import select

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.names import check_name
from modelmill.store import Store
from modelmill.store.tables import Adapter, BaseModel


REMOTE = "remote"  # source_type of a model behind an OpenAI-compatible endpoint


def is_remote(row: BaseModel) -> bool:
    return row.source_type == REMOTE


class ModelRegistry:
    def __init__(self, store: Store):
        self.store = store

    # reading
    def list(self, include_remote: bool = False) -> list[BaseModel]:
        """Registered models, plus built-ins not converted yet (with ``path`` None). Remote
        endpoints only with ``include_remote``: every older caller expects loadable weights."""
        from modelmill.models.builtin import BUILTIN_MODELS

        with self.store.session() as s:
            rows = list(s.scalars(select(BaseModel).order_by(BaseModel.name)))
        if not include_remote:
            rows = [r for r in rows if not is_remote(r)]
        known = {r.name for r in rows}
        for name, meta in BUILTIN_MODELS.items():
            if name not in known:
                rows.append(self._builtin_row(name, meta))
        return sorted(rows, key=lambda r: r.name)

    def get(self, name: str) -> BaseModel:
        from modelmill.models.builtin import BUILTIN_MODELS

        with self.store.session() as s:
            row = s.scalar(select(BaseModel).where(BaseModel.name == name))
        if row is not None:
            return row
        if name in BUILTIN_MODELS:
            return self._builtin_row(name, BUILTIN_MODELS[name])
        names = ", ".join(r.name for r in self.list(include_remote=True)) or "none"
        raise NotFoundError(f"unknown model '{name}' (registered: {names})",
                            fix="see `modelmill models list`, or register it with `modelmill models add NAME PATH`")

    def ready(self, name: str, progress: bool = True) -> BaseModel:
        """The model with a loadable folder, converting a built-in on first use. A remote model
        has none: InputError (training, chat, eval, token counting and serving all come here)."""
        row = self.get(name)
        if is_remote(row):
            raise _no_weights(row)
        if row.path and Path(row.path).is_dir():
            return row
        if row.source_type == "builtin":
            return self._install_builtin(name, progress)
        raise NotFoundError(f"the files of model '{name}' are gone", file=row.path or row.source,
                            fix=f"`modelmill models remove {name}` and add it again")

    def tokenizer(self, name: str):
        """The tokenizer of model ``name`` (converted first if it is a built-in), with its registered
        chat template, for counting: no length limit."""
        return _counting_tokenizer(self.ready(name))

    def tokenizers(self, have: dict | None = None) -> dict:
        """The tokenizer of every local model whose folder is ready (remote ones and built-ins not
        converted yet are left out): what ``data stats`` compares tokens per character with.
        ``have``: tokenizers already loaded, by model name (not loaded again)."""
        import logging

        have, out = have or {}, {}
        for row in self.list():
            if row.name in have:
                out[row.name] = have[row.name]
            elif row.path and Path(row.path).is_dir():
                try:
                    out[row.name] = _counting_tokenizer(row)
                except Exception as e:  # one damaged folder must not stop the comparison with the others
                    logging.getLogger("modelmill.models").warning(
                        "warning: left out model '%s': its tokenizer does not load (%s)", row.name,
                        " ".join(str(e).split())[:200] or type(e).__name__)
        return out

    def base_hash(self, row: BaseModel) -> str:
        """SHA-256 of the model's weights (its GGUF for converted models), cached by size and mtime."""
        from modelmill.models.hashing import file_sha256

        if is_remote(row):
            raise _no_weights(row)
        if row.file_hash:
            return row.file_hash
        return file_sha256(row.source if row.source_type in ("builtin", "gguf") else row.path,
                           cache_dir=self.store.cache_dir)

    # writing
    def add(self, name: str, path: str | Path, chat_template: str | None = None, progress: bool = True) -> BaseModel:
        check_name(name, "NAME")
        self._check_free(name)
        src = Path(path).expanduser().resolve()
        if not src.exists():
            raise InputError("no such file or folder", file=str(path),
                             fix="give a Hugging Face model folder or a .gguf file")
        if src.is_file() and src.suffix.lower() == ".gguf":
            return self._add_gguf(name, src, chat_template, progress)
        if src.is_dir():
            return self._add_folder(name, src, chat_template)
        raise InputError("not a model folder or a .gguf file", file=str(path),
                         fix="give a Hugging Face model folder (config.json, weights, tokenizer) or a .gguf file")

    def add_remote(self, name: str, endpoint: str, remote_model: str | None = None, api_key_env: str | None = None,
                   check: bool = False) -> BaseModel:
        """Register an OpenAI-compatible endpoint as model ``name``. ``remote_model`` is the id the
        endpoint knows (default: ``name``); ``api_key_env`` names the environment variable holding
        the key, which is read at call time and never stored. The endpoint is not contacted unless
        ``check``: then ``GET {endpoint}/models`` must list the model, or nothing is stored."""
        from modelmill.models.remote import RemoteModel, check_env_name, check_remote_model, normalize_endpoint

        check_name(name, "NAME")
        self._check_free(name)
        url = normalize_endpoint(endpoint)
        model_id = check_remote_model(name if remote_model is None else remote_model)
        if api_key_env is not None:
            check_env_name(api_key_env)
        row = BaseModel(name=name, source_type=REMOTE, source=url, path=None, chat_template=None, file_hash=None,
                        info={"remote_model": model_id, "api_key_env": api_key_env, "endpoint": url})
        if check:
            with RemoteModel.from_row(row, timeout=20, max_retries=1) as remote:
                listed = remote.list_models()
            if model_id not in listed:
                shown = ", ".join(listed[:30]) + (f" ... ({len(listed)} in all)" if len(listed) > 30 else "")
                raise InputError(f"{url}/models does not list model '{model_id}' (it lists: {shown or 'nothing'})",
                                 field="--remote-model",
                                 fix="give one of the listed ids with --remote-model, or leave out --check if "
                                     "the server serves models it does not list")
        with self.store.session() as s:
            s.add(row)
        return row

    def remove(self, name: str) -> None:
        row = self.get(name)
        if row.source_type == "builtin" and self._row(name) is None:
            raise InputError(f"'{name}' is a built-in model not converted yet: there is nothing to remove",
                             field="NAME", fix="built-in models are always listed; only their converted copy "
                                               "can be removed, once it exists")
        with self.store.session() as s:
            users = list(s.scalars(select(Adapter.name).where(Adapter.base_model == name)))
        if users:
            raise ConflictError(f"model '{name}' is the base of adapters: {', '.join(users)}", field="NAME",
                                fix="remove those first with `modelmill adapters remove NAME`")
        with self.store.session() as s:
            db_row = s.scalar(select(BaseModel).where(BaseModel.name == name))
            if db_row is not None:
                s.delete(db_row)
        # Only folders modelmill made are deleted; a user's own folder is left alone.
        if row.path and row.source_type in ("builtin", "gguf"):
            self.store.remove_tree(Path(row.path))

    # helpers
    def _check_free(self, name: str) -> None:
        """Refuse a new model's name that a model or an adapter has: ``NAME`` in a model id means one thing."""
        from modelmill.models.builtin import BUILTIN_MODELS

        if name in BUILTIN_MODELS or self._row(name) is not None:
            raise ConflictError(f"a model named '{name}' already exists", field="NAME",
                                fix="choose another name, or `modelmill models remove` the old one")
        with self.store.session() as s:
            if s.scalar(select(Adapter.id).where(Adapter.name == name)) is not None:
                raise ConflictError(f"'{name}' is the name of an adapter; models and adapters share one namespace",
                                    field="NAME", fix="choose another name (see `modelmill adapters list`)")

    def _row(self, name: str) -> BaseModel | None:
        with self.store.session() as s:
            return s.scalar(select(BaseModel).where(BaseModel.name == name))

    def _builtin_row(self, name: str, meta: dict) -> BaseModel:
        info = {k: meta.get(k) for k in ("architecture", "num_parameters", "context_length", "description", "license")}
        info["status"] = "not converted yet (converted on first use)"
        try:
            source = str(meta.get("locate", meta["find_source"])())
        except NotFoundError as e:
            source, info["status"] = "", str(e)
        return BaseModel(name=name, source_type="builtin", source=source, path=None, info=info)

    def _install_builtin(self, name: str, progress: bool) -> BaseModel:
        """Convert a built-in once. A file lock makes a second process wait for the first one's
        conversion instead of converting again (or deleting the folder the first one made)."""
        from modelmill.models.builtin import BUILTIN_MODELS, builtin_source

        gguf = builtin_source(name)
        with self.store.lock(f"model-{name}"):
            row = self._row(name)
            if row is not None and row.path and Path(row.path).is_dir():
                return row  # another process finished it while we waited
            if row is not None:  # registered, but its folder was deleted: convert again, keep the row
                with self.store.session() as s:
                    s.delete(s.get(BaseModel, row.id))
            return self._convert_and_register(name, "builtin", gguf, BUILTIN_MODELS[name].get("template"), progress)

    def _add_gguf(self, name, gguf: Path, chat_template, progress) -> BaseModel:
        from modelmill.models.inspect import inspect_gguf

        info = inspect_gguf(gguf)
        if progress:
            print(f"{gguf.name}: {info.architecture}, {info.num_parameters or 0:,} parameters, "
                  f"context {info.context_length}", file=sys.stderr)
        if not info.has_chat_template and not chat_template:
            raise InputError("the GGUF file has no chat template", file=str(gguf), field="--chat-template",
                             fix="pass --chat-template chatml|llama3|gemma|alpaca|FILE.jinja")
        return self._convert_and_register(name, "gguf", gguf, chat_template, progress)

    def _convert_and_register(self, name, source_type, gguf: Path, chat_template, progress) -> BaseModel:
        from modelmill.models.convert import convert_gguf
        from modelmill.models.hashing import file_sha256
        from modelmill.models.inspect import inspect_model

        out = self.store.models_dir / name
        if out.exists():  # left by an earlier conversion whose registration failed
            self.store.remove_tree(out)
        convert_gguf(gguf, out, progress=progress, chat_template=chat_template)
        try:
            info = inspect_model(out).to_dict()
            info.pop("chat_template", None)
            row = BaseModel(name=name, source_type=source_type, source=str(gguf), path=str(out),
                            chat_template=None, info=info,
                            file_hash=file_sha256(gguf, cache_dir=self.store.cache_dir))
            with self.store.session() as s:
                s.add(row)
            return row
        except BaseException:
            self.store.remove_tree(out)
            raise

    def _add_folder(self, name, folder: Path, chat_template) -> BaseModel:
        from modelmill.models.inspect import read_chat_template, validate_hf_folder

        info = validate_hf_folder(folder, chat_template)
        template = info.chat_template if chat_template else None
        d = info.to_dict()
        d.pop("chat_template", None)
        if not template and not read_chat_template(folder):
            raise InputError("the folder has no chat template", file=str(folder), field="--chat-template",
                             fix="pass --chat-template chatml|llama3|gemma|alpaca|FILE.jinja")
        row = BaseModel(name=name, source_type="hf", source=str(folder), path=str(folder),
                        chat_template=template, info=d)
        with self.store.session() as s:
            s.add(row)
        return row


def _counting_tokenizer(row: BaseModel):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(row.path)
    if row.chat_template:
        tok.chat_template = row.chat_template
    tok.model_max_length = 10**9  # we count, we do not truncate
    return tok


def _no_weights(row: BaseModel) -> InputError:
    return InputError(f"model '{row.name}' is a remote endpoint ({row.source}), not local weights: it cannot be "
                      "trained, loaded, chatted with or served here",
                      fix="use a local model (`modelmill models list`, SOURCE other than 'remote'); a remote model "
                          "is only called over its API, e.g. by benchmarks (modelmill.models.remote.RemoteModel)")
