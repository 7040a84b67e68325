"""The command line: one thin command per library entry point.

    modelmill --help
    modelmill models list
    modelmill data import train.jsonl --name reviews
    modelmill train --data reviews --name reviews-lora
    modelmill chat smollm2-135m-instruct:reviews-lora --prompt "..."
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from modelmill.errors import InputError, ModelmillError
from modelmill.schema import field_type


# ---------------------------------------------------------------- plumbing

class Group(click.Group):
    """Turns ModelmillError into one line on stderr and its exit code; keeps commands in order."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        from sqlalchemy.exc import DatabaseError

        try:
            return super().invoke(ctx)
        except ModelmillError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # the disk: full, read-only, not ours
            from modelmill.errors import storage_error

            err = storage_error(e)
            if err is None:
                raise
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)
        except DatabaseError as e:  # damage found past start-up (a page read mid-command)
            from modelmill.config import get_settings
            from modelmill.store.backup import damaged, is_damage

            if not is_damage(e):
                raise
            err = damaged(get_settings().db_url.removeprefix("sqlite:///"), e)
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)


def _store():
    from modelmill.store import open_store

    return open_store()


def dataclass_options(cls, exclude: tuple[str, ...] = ()):
    """Click options built from a config dataclass (or a list of dataclass fields): names, defaults,
    help and choices live there; a field may name its flag (``metadata["flag"]``, e.g. --from)."""
    def decorate(f):
        for fld in reversed(cls if isinstance(cls, list) else dataclasses.fields(cls)):
            if fld.name in exclude:
                continue
            flag = fld.metadata.get("flag") or "--" + fld.name.replace("_", "-")
            meta = fld.metadata
            typ: Any = field_type(fld)
            if "choices" in meta:
                typ = click.Choice(meta["choices"])
            if typ is bool:
                f = click.option(f"{flag}/--no-{flag[2:]}", fld.name, default=None,
                                 help=f"{meta.get('help', '')} [default: {'on' if fld.default else 'off'}]")(f)
            else:
                f = click.option(flag, fld.name, type=typ, default=None,
                                 help=f"{meta.get('help', '')} [default: {fld.default}]")(f)
        return f
    return decorate


def build_config(cls, flags: dict, config_file: str | None):
    """Defaults < YAML file < flags. Unknown YAML keys and bad values name the file and key."""
    from modelmill.schema import check_values

    values: dict = {}
    if config_file:
        from modelmill.config import read_yaml_mapping

        values = check_values(cls, read_yaml_mapping(config_file, "--config"), file=config_file)
    values.update({k: v for k, v in flags.items() if v is not None})
    return cls(**values)


def _table(rows: list[list[str]], headers: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*headers, box=None, header_style="bold", pad_edge=False)
    for r in rows:
        t.add_row(*[str(c) for c in r])
    Console(width=None if sys.stdout.isatty() else 200).print(t)


def _human(n: int | None) -> str:
    if not n:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="modelmill")
def main():
    """modelmill: a self-hosted model factory. Base models, data, fine-tuning, chat.

    Everything lives under $MODELMILL_HOME (default ~/.modelmill).
    """


# ---------------------------------------------------------------- models

@main.group(cls=Group)
def models():
    """Base models: the built-in default, local Hugging Face folders, GGUF files."""


@models.command("list")
def models_list():
    """List base models."""
    from modelmill.models.registry import ModelRegistry

    rows = ModelRegistry(_store()).list(include_remote=True)
    _table([[r.name, r.source_type, r.info.get("architecture") or "-", _human(r.info.get("num_parameters")),
             r.info.get("context_length") or "-",
             "remote" if r.source_type == "remote" else "yes" if r.path else "on first use"] for r in rows],
           ["NAME", "SOURCE", "ARCHITECTURE", "PARAMS", "CONTEXT", "READY"])


@models.command("show")
@click.argument("name")
@click.option("--template/--no-template", default=True, help="Print the chat template.")
def models_show(name, template):
    """Show a model: architecture, parameters, context length, chat template (or a remote endpoint)."""
    from modelmill.models.inspect import read_chat_template
    from modelmill.models.registry import ModelRegistry

    reg = ModelRegistry(_store())
    row = reg.get(name)
    if row.source_type == "remote":  # no weights, hash or template here: the endpoint applies its own
        info = row.info or {}
        env = info.get("api_key_env")
        key = (f"{env} ({'set' if os.environ.get(env) else 'not set in this shell'})" if env
               else "(none: no key is sent)")
        for k, v in (("name", row.name), ("source", "remote"), ("endpoint", row.source),
                     ("remote model", info.get("remote_model")), ("api key env", key)):
            click.echo(f"{k + ':':<16}{v}")
        return
    row = reg.ready(name)
    info = row.info or {}
    lines = [("name", row.name), ("source", f"{row.source_type}: {row.source}"), ("path", row.path),
             ("architecture", info.get("architecture")), ("model type", info.get("model_type")),
             ("parameters", f"{info.get('num_parameters') or 0:,}"), ("context length", info.get("context_length")),
             ("vocabulary", info.get("vocab_size")), ("dtype", info.get("dtype")), ("eos token", info.get("eos_token")),
             ("weights sha256", reg.base_hash(row))]
    for k, v in lines:
        click.echo(f"{k + ':':<16}{v}")
    tpl = row.chat_template or read_chat_template(row.path)
    if template:
        click.echo("chat template:" + (" (set at registration)" if row.chat_template else ""))
        click.echo(tpl or "(none)")


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(), required=False)
@click.option("--chat-template", default=None,
              help="chatml, llama3, gemma, alpaca or a .jinja file; needed when the model has none.")
@click.option("--endpoint", default=None, metavar="URL",
              help="Instead of PATH: the base URL of an OpenAI-compatible API, e.g. http://host:8000/v1.")
@click.option("--remote-model", default=None, metavar="ID", help="With --endpoint: the model id it serves [default: NAME].")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="With --endpoint: the environment variable holding the API key (the key itself is never stored).")
@click.option("--check", is_flag=True,
              help="With --endpoint: first make sure GET URL/models lists the model (else nothing is registered).")
def models_add(name, path, chat_template, endpoint, remote_model, api_key_env, check):
    """Register a local Hugging Face folder (used in place), a GGUF file (converted once), or a
    remote OpenAI-compatible endpoint (--endpoint; for benchmarks: it is not trained, chatted
    with or served locally)."""
    from modelmill.models.registry import ModelRegistry

    if endpoint is None:
        remote_only = [flag for flag, v in (("--remote-model", remote_model), ("--api-key-env", api_key_env),
                                            ("--check", check or None)) if v is not None]
        if path is None:
            raise InputError("no PATH and no --endpoint given", field="PATH",
                             fix="give a model folder or .gguf file (`modelmill models add NAME PATH`), or a remote API "
                                 "(`modelmill models add NAME --endpoint http://host:8000/v1`)")
        if remote_only:
            raise InputError(f"{', '.join(remote_only)} only {'goes' if len(remote_only) == 1 else 'go'} with "
                             "--endpoint", field=remote_only[0],
                             fix="add --endpoint URL for a remote model, or leave them out for a local one")
    else:
        if path is not None:
            raise InputError("both PATH and --endpoint given", field="--endpoint",
                             fix="PATH registers local weights, --endpoint a remote API: give one of them")
        if chat_template is not None:
            raise InputError("a remote model applies its own chat template", field="--chat-template",
                             fix="leave out --chat-template with --endpoint")
        row = ModelRegistry(_store()).add_remote(name, endpoint, remote_model, api_key_env, check=check)
        info = row.info
        key = f", key from ${info['api_key_env']}" if info["api_key_env"] else ", no API key"
        click.echo(f"added {row.name}: remote model '{info['remote_model']}' at {row.source}{key}")
        if check:
            click.echo(f"checked: {row.source}/models lists '{info['remote_model']}'")
        if info["api_key_env"] and not os.environ.get(info["api_key_env"]):
            click.echo(f"note: {info['api_key_env']} is not set in this shell; set it before the model is called",
                       err=True)
        return
    row = ModelRegistry(_store()).add(name, path, chat_template)
    info = row.info
    click.echo(f"added {row.name}: {info.get('architecture')}, {info.get('num_parameters') or 0:,} parameters, "
               f"context {info.get('context_length')}")


@models.command("remove")
@click.argument("name")
def models_remove(name):
    """Unregister a model (files modelmill converted are deleted; your own folder is kept)."""
    from modelmill.models.registry import ModelRegistry

    ModelRegistry(_store()).remove(name)
    click.echo(f"removed {name}")


# ---------------------------------------------------------------- data

from modelmill.data.formats import FORMATS as DATA_FORMATS  # noqa: E402  (light; the built-ins, plugins load later)


@main.group(cls=Group)
def data():
    """Datasets: import, inspect, clean, split and mix. Each version is a content hash."""


def _parse_field_map(items: tuple[str, ...]) -> dict[str, str] | None:
    out = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise InputError(f"'{item}' is not FILE_COLUMN=FIELD", field="--field", fix="e.g. --field review=text")
        out[src] = dst
    return out or None


@data.command("import")
@click.argument("file", type=click.Path())
@click.option("--name", required=True, help="Dataset name; a new version is added when the content changes.")
@click.option("--format", "fmt", default="auto",
              help="auto (from the columns or the first record), or one of: " + ", ".join(DATA_FORMATS) + ".")
@click.option("--field", "fields_", multiple=True, metavar="COLUMN=FIELD",
              help="Rename a column first, e.g. --field review=text --field rating=label.")
@click.option("--skip-invalid", is_flag=True, help="Leave out records that do not fit (listed), instead of stopping.")
def data_import(file, name, fmt, fields_, skip_invalid):
    """Import a JSONL, JSON, CSV, TSV or Parquet file."""
    from modelmill.data.catalog import DatasetCatalog

    row, created, skipped = DatasetCatalog(_store()).import_file(file, name, fmt, _parse_field_map(fields_),
                                                                 skip_invalid)
    for n, err in skipped[:20]:
        click.echo(f"skipped: {err}", err=True)
    if len(skipped) > 20:
        click.echo(f"skipped: ... and {len(skipped) - 20} more", err=True)
    from modelmill.data.load import ignored_note

    note = ignored_note(row)
    if note:
        click.echo(f"warning: {note}", err=True)
    what = "imported" if created else "unchanged, already stored as"
    labels = f", labels: {', '.join(row.labels)}" if row.labels else ""
    click.echo(f"{what} {row.ref}: {row.num_records} {row.kind} records ({row.format}){labels}{_current(created)}")


def _current(created: bool) -> str:
    """Said of a save whose content an older version already held: that version is current again."""
    return "" if created else " (now the current version)"


@data.command("list")
@click.option("--all", "all_versions", is_flag=True, help="Every version, not only the newest.")
def data_list(all_versions):
    """List datasets (newest version of each)."""
    from modelmill.data.catalog import DatasetCatalog

    rows = DatasetCatalog(_store()).list(all_versions)
    _table([[r.name, r.version, r.kind, r.format, r.num_records, r.origin.get("op", "-"),
             r.created_at.strftime("%Y-%m-%d %H:%M")] for r in rows],
           ["NAME", "VERSION", "KIND", "FORMAT", "RECORDS", "FROM", "CREATED"])


@data.command("show")
@click.argument("ref")
@click.option("-n", "--head", default=3, show_default=True, help="Records to print.")
def data_show(ref, head):
    """Show a dataset's versions, origin and first records."""
    from modelmill.data.catalog import DatasetCatalog

    cat = DatasetCatalog(_store())
    row = cat.resolve(ref, "REF")
    click.echo(f"{row.ref}  {row.kind} ({row.format}), {row.num_records} records, sha256 {row.content_hash}")
    click.echo(f"origin: {json.dumps(row.origin, ensure_ascii=False)}")
    if row.labels:
        click.echo(f"labels: {', '.join(row.labels)}")
    click.echo("versions: " + ", ".join(f"{v.version} ({v.num_records})" for v in cat.versions(row.name)))
    for rec in cat.records(row)[:head]:
        click.echo(json.dumps(rec, ensure_ascii=False)[:500])


@data.command("stats")
@click.argument("ref")
@click.option("--model", default="smollm2-135m-instruct", show_default=True,
              help="Model whose tokenizer counts the tokens.")
def data_stats(ref, model):
    """Counts, label balance, a token-length histogram, and tokens per character for every
    registered base model (how each tokenizer treats this data's language)."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.stats import format_stats, stats, tokens_per_char
    from modelmill.models.registry import ModelRegistry

    store = _store()
    row = DatasetCatalog(store).resolve(ref, "REF")
    tok = _tokenizer(store, model)  # converts a built-in on first use, so it is among the ready ones below
    records = DatasetCatalog(store).records(row)
    click.echo(f"{row.ref} (tokens counted with {model})")
    d = stats(records, row.kind, tokenizer=tok)
    d["tokens_per_char"] = tokens_per_char(records, row.kind, ModelRegistry(store).tokenizers(have={model: tok}))
    click.echo(format_stats(d))


def _tokenizer(store, model: str):
    from modelmill.models.registry import ModelRegistry

    return ModelRegistry(store).tokenizer(model)


@data.command("split")
@click.argument("ref")
@click.option("--test-size", default=0.1, show_default=True, type=float,
              help="A fraction in (0, 1), or a number of records (>= 1).")
@click.option("--seed", default=0, show_default=True, help="Shuffle seed.")
@click.option("--no-stratify", is_flag=True, help="Do not keep label shares equal on both sides.")
def data_split(ref, test_size, seed, no_stratify):
    """Seeded train/test split into NAME-train and NAME-test."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.split import split

    cat = DatasetCatalog(_store())
    row = cat.resolve(ref, "REF")
    size = int(test_size) if test_size >= 1 and float(test_size).is_integer() else test_size
    train, test = split(cat.records(row), test_size=size, seed=seed, stratify=not no_stratify, kind=row.kind)
    origin = {"op": "split", "from": row.ref, "test_size": test_size, "seed": seed}
    for suffix, recs in (("train", train), ("test", test)):
        out, created = cat.save(f"{row.name}-{suffix}", recs, row.kind, row.format, row.labels,
                                {**origin, "part": suffix})
        click.echo(f"{out.ref}: {out.num_records} records{_current(created)}")


@data.command("clean")
@click.argument("ref")
@click.option("--name", default=None, help="Name for the result (default: the same name, as a new version).")
@click.option("--max-tokens", type=int, default=None, help="Drop records longer than this (needs --model's tokenizer).")
@click.option("--model", default="smollm2-135m-instruct", show_default=True, help="Tokenizer for --max-tokens.")
@click.option("--near-dup", default=0.9, show_default=True, type=float,
              help="Jaccard similarity at or above which a record is a near duplicate (1 turns it off).")
@click.option("--show", default=20, show_default=True, help="Dropped records to list.")
def data_clean(ref, name, max_tokens, model, near_dup, show):
    """Drop empty, duplicate, near-duplicate and over-length records; say what and why."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.clean import clean

    if not 0 < near_dup <= 1:
        raise InputError(f"must be in (0, 1], got {near_dup}", field="--near-dup", fix="e.g. --near-dup 0.9")
    store = _store()
    cat = DatasetCatalog(store)
    row = cat.resolve(ref, "REF")
    tok = _tokenizer(store, model) if max_tokens else None
    res = clean(cat.records(row), row.kind, tokenizer=tok, max_tokens=max_tokens,
                near_dup_threshold=None if near_dup >= 1 else near_dup)
    for n, why in res.dropped[:show]:
        click.echo(f"dropped record {n}: {why}")
    if len(res.dropped) > show:
        click.echo(f"... and {len(res.dropped) - show} more")
    origin = {"op": "clean", "from": row.ref, "dropped": len(res.dropped), "max_tokens": max_tokens,
              "near_dup": near_dup}
    out, created = cat.save(name or row.name, res.kept, row.kind, row.format, row.labels, origin)
    click.echo(f"kept {len(res.kept)} of {row.num_records} records -> {out.ref}"
               + ("" if created else " (already stored; now the current version)"))


@data.command("mix")
@click.argument("name")
@click.option("--from", "sources", multiple=True, required=True, metavar="DATASET:RATIO",
              help="A source and its share, e.g. --from general:0.3 --from domain:0.7.")
@click.option("--size", type=int, default=None, help="Records in the mix (default: the most without repeats).")
@click.option("--seed", default=0, show_default=True, help="Sampling and shuffling seed.")
def data_mix(name, sources, size, seed):
    """Mix datasets by ratio into a new chat dataset (keeps general skills while learning the domain)."""
    from modelmill.data.catalog import DatasetCatalog
    from modelmill.data.mix import mix_datasets

    cat = DatasetCatalog(_store())
    parts = []
    for item in sources:
        ref, sep, ratio = item.rpartition(":")
        try:
            r = float(ratio)
        except ValueError:
            r = -1
        if not sep or not ref or not 0 < r < float("inf"):
            raise InputError(f"'{item}' is not DATASET:RATIO with a finite ratio > 0", field="--from",
                             fix="e.g. --from general:0.3")
        parts.append((ref, r))
    out, created, warnings, counts = mix_datasets(cat, name, parts, size=size, seed=seed)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"{out.ref}: {out.num_records} records (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")"
               + _current(created))


@data.command("mistakes")
@click.option("--task", required=True, help="The task the model was scored on (`modelmill eval`).")
@click.option("--model", required=True, help="The scored model, e.g. BASE:ADAPTER (see `modelmill leaderboard`).")
@click.option("--name", required=True, help="Name of the preference dataset to make.")
@click.option("--below", type=float, default=None,
              help="Items scoring under this (0-1: ROUGE-L, a judge's grade scaled) count as mistakes; "
                   "needed for generation and judged tasks.")
@click.option("--right", type=float, default=0.0, show_default=True,
              help="Also this many pairs per mistake pair from right answers (gold chosen, the label ranked "
                   "next rejected; the least sure first), so DPO keeps them in place. Classification only.")
def data_mistakes(task, model, name, below, right):
    """Turn a model's wrong answers in a stored evaluation into preference pairs (gold answer chosen,
    its own answer rejected), ready for `modelmill train --method dpo --from ADAPTER`."""
    from modelmill.evaluate.mistakes import mistakes

    r = mistakes(_store(), task=task, model=model, name=name, below=below, right=right)
    click.echo(f"{r.dataset.ref}: {r.pairs} preference pairs from {r.wrong} mistakes of {r.items} items"
               + (f" ({r.anchors} of them from right answers)" if r.anchors else "")
               + ("" if r.created else " (the same pairs were already stored)"))


@data.command("remove")
@click.argument("ref")
def data_remove(ref):
    """Remove a dataset version (NAME@VERSION) or all versions of NAME."""
    from modelmill.data.catalog import DatasetCatalog

    rows = DatasetCatalog(_store()).remove(ref)
    click.echo("removed " + ", ".join(r.ref for r in rows))


# ---------------------------------------------------------------- train

from modelmill.train.methods import REGISTRY as TRAIN_METHODS, all_fields as train_fields  # noqa: E402  (light)


def train_config(flags: dict, config_file: str | None):
    """Defaults < YAML file < flags, for the method ``--method`` (or the file's ``method``) names; a
    setting of another method only (``--beta`` with lora) is refused by name."""
    from modelmill.train.methods import build, from_mapping

    values: dict = {}
    if config_file:
        from modelmill.config import read_yaml_mapping

        raw = read_yaml_mapping(config_file, "--config")
        if flags.get("method"):
            raw = {**raw, "method": flags["method"]}
        cfg = from_mapping(raw, file=config_file)
        values = {k: getattr(cfg, k) for k in {str(k).replace("-", "_") for k in raw}}
    values.update({k: v for k, v in flags.items() if v is not None})
    return build(values, file=config_file or None)


@main.command("train", epilog="Methods:\n\n" + "\n\n".join(f"  {m.name}: {m.summary} (data: {', '.join(m.kinds)})"
                                                            for m in TRAIN_METHODS.values()))
@dataclass_options(train_fields())
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="YAML file of settings (same names as the flags); flags override it.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run named --name from its last checkpoint.")
@click.option("--log-file", type=click.Path(), default=None, help="Write the trainer's output here instead of the terminal.")
@click.option("--accelerate-config", type=click.Path(), default=None,
              help="An accelerate config file (multi-GPU, DeepSpeed, FSDP).")
@click.option("--forgetting-task", type=click.Path(), default=None,
              help="After training, score the adapter and its base on this general task (e.g. MMLU) and report the delta.")
def train_cmd(config_file, resume, log_file, accelerate_config, forgetting_task, **flags):
    """Train a base model on a dataset and register the adapter: supervised (LoRA by default, or
    full), preference (dpo, orpo, kto) or continued pre-training (cpt); --from starts from an adapter."""
    from modelmill.train.runs import train

    if resume and not flags.get("name"):
        raise InputError("--resume needs the run's name", field="--name", fix="add --name NAME")
    cfg = train_config(flags, config_file)
    store = _store()
    row = train(store, cfg, resume=resume, log_file=Path(log_file) if log_file else None,
                accelerate_config=accelerate_config)
    m = row.metrics
    click.echo(f"adapter {row.name} (base {row.base_model}, data {row.dataset}@{row.dataset_version}): "
               f"{m.get('global_step')} steps, final loss {m.get('train_loss', float('nan')):.4f}, "
               f"{m.get('train_runtime', 0):.0f} s -> {row.path}")
    if forgetting_task:
        from modelmill.cli_eval import _forgetting

        _forgetting(row.name, forgetting_task)


# ---------------------------------------------------------------- adapters

from modelmill.adapters.merge import MergeConfig  # noqa: E402  (light: no torch at import)

@main.group(cls=Group)
def adapters():
    """Fine-tuned adapters and their lineage."""


@adapters.command("list")
@click.option("--base", default=None, help="Only adapters of this base model.")
def adapters_list(base):
    """List adapters."""
    from modelmill.adapters import AdapterRegistry

    rows = AdapterRegistry(_store()).list(base)
    _table([[r.name, r.base_model, r.method, f"{r.dataset}@{r.dataset_version}", r.metrics.get("global_step", "-"),
             f"{r.metrics['train_loss']:.4f}" if "train_loss" in r.metrics else "-",
             r.created_at.strftime("%Y-%m-%d %H:%M")] for r in rows],
           ["NAME", "BASE", "METHOD", "DATASET", "STEPS", "LOSS", "CREATED"])


@adapters.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The whole lineage record as JSON.")
def adapters_show(name, as_json):
    """Show an adapter's lineage: base and hash, dataset version, config, versions, metrics."""
    from modelmill.adapters import AdapterRegistry

    r = AdapterRegistry(_store()).get(name)
    d = {"name": r.name, "method": r.method, "base_model": r.base_model, "base_model_sha256": r.base_model_hash,
         "dataset": f"{r.dataset}@{r.dataset_version}", "dataset_sha256": r.dataset_hash, "path": r.path,
         "created_at": r.created_at.isoformat(), "metrics": r.metrics, "config": r.config, "versions": r.versions,
         "parents": r.parents or []}
    if as_json:
        d["history"] = AdapterRegistry(_store()).history(name)
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    for k in ("name", "method", "base_model", "base_model_sha256", "dataset", "dataset_sha256", "path", "created_at"):
        click.echo(f"{k + ':':<20}{d[k]}")
    merged = [p for p in d["parents"] if p.get("relation", "merge") == "merge"]
    if merged:
        how = (r.config or {}).get("merge", {}).get("how")
        click.echo(f"{'merged from:':<20}" + ", ".join(f"{p['name']} x{p['weight']:g}" for p in merged)
                   + (f" ({how})" if how else ""))
    for p in d["parents"]:
        if p.get("relation") == "from":
            click.echo(f"{'trained from:':<20}{p['name']}")
    for section in ("metrics", "config", "versions"):
        click.echo(f"{section}:")
        for k, v in d[section].items():
            click.echo(f"  {k:<24}{v}")


@adapters.command("merge")
@click.argument("name")
@click.option("--from", "sources", required=True, help="Adapters and weights, e.g. drugs-lora:0.6,zh-lora:0.4.")
@dataclass_options(MergeConfig, exclude=("name", "sources"))
def adapters_merge(name, sources, **flags):
    """Merge LoRA adapters of one base into a new adapter NAME (peft's add_weighted_adapter)."""
    from modelmill.adapters.merge import merge

    cfg = build_config(MergeConfig, {**flags, "name": name, "sources": sources}, None)
    row = merge(_store(), cfg, progress=True, log=lambda m: click.echo(m, err=True))
    click.echo(f"merged {row.name} ({cfg.how}, rank {row.config.get('lora_r')}) on {row.base_model}: "
               f"chat with it, serve it or score it as {row.base_model}:{row.name}")


@adapters.command("export")
@click.argument("name")
@click.argument("out", type=click.Path())
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="Weights' type (auto: the base's).")
def adapters_export(name, out, dtype):
    """Write adapter NAME merged into its base as a Hugging Face model folder OUT (for vLLM, transformers)."""
    from modelmill.adapters.export import export

    path = export(_store(), name, out, dtype=dtype, log=lambda m: click.echo(m, err=True))
    click.echo(f"exported {name} to {path}")


@adapters.command("remove")
@click.argument("name")
def adapters_remove(name):
    """Remove an adapter and its files."""
    from modelmill.adapters import AdapterRegistry

    AdapterRegistry(_store()).remove(name)
    click.echo(f"removed {name}")


# ---------------------------------------------------------------- chat

from modelmill.chat import Sampling  # noqa: E402  (light: no torch at import)


@main.command("chat")
@click.argument("model")
@dataclass_options(Sampling)
@click.option("--prompt", default=None, help="Ask once and exit (default: interactive).")
@click.option("--system", default=None, help="A system message.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
def chat_cmd(model, prompt, system, device, **flags):
    """Chat with MODEL, MODEL:ADAPTER or ADAPTER."""
    from modelmill.chat import stream_reply
    from modelmill.adapters.loading import load_for_inference

    sampling = build_config(Sampling, flags, None)
    m, tok, label = load_for_inference(_store(), model, device)
    history: list[dict] = [{"role": "system", "content": system}] if system else []

    def ask(text: str) -> None:
        history.append({"role": "user", "content": text})
        parts = []
        for piece in stream_reply(m, tok, history, sampling):
            parts.append(piece)
            click.echo(piece, nl=False)
        click.echo()
        history.append({"role": "assistant", "content": "".join(parts)})

    if prompt is not None:
        if not prompt.strip():
            raise InputError("the prompt is empty", field="--prompt", fix="give some text")
        ask(prompt)
        return
    click.echo(f"chatting with {label}; /reset clears the conversation, /exit or Ctrl-D leaves", err=True)
    while True:
        try:
            text = input("> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            del history[1 if system else 0:]
            continue
        if text.strip():
            try:
                ask(text)
            except InputError as e:
                click.echo(f"error: {e}", err=True)
                history.pop()


# ---------------------------------------------------------------- serve

from modelmill.serve.router import ServeConfig  # noqa: E402  (light: no torch at import)


@main.command("serve")
@dataclass_options(ServeConfig)
@click.option("--config", "config_file", default=None, help="YAML file with these settings (flags win).")
def serve_cmd(config_file, **flags):
    """Serve every registered model and adapter over an OpenAI-compatible API.

    \b
      modelmill serve --port 8000
      curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "smollm2-135m-instruct:reviews-lora", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from modelmill.api.app import serve

    config = build_config(ServeConfig, flags, config_file)
    from modelmill.serve.router import check_engine

    check_engine(config.engine)
    from modelmill.cli_platform import _check_host

    store = _store()
    config = _check_host(config, store)
    click.echo(f"modelmill: serving on http://{config.host}:{config.port}/v1 (engine: {config.engine}); "
               "Ctrl-C stops", err=True)
    serve(config, store)


from modelmill import cli_eval  # noqa: E402,F401  (registers eval, leaderboard, report, scorecard, forgetting, grid)
from modelmill import cli_kb  # noqa: E402,F401  (registers kb)
from modelmill import cli_platform  # noqa: E402,F401  (registers up, worker, keys, jobs)
from modelmill import cli_db  # noqa: E402,F401  (registers db)
from modelmill import cli_apps  # noqa: E402,F401  (registers apps)
from modelmill import cli_bots  # noqa: E402,F401  (registers apps bot)

if __name__ == "__main__":
    # `python -m modelmill.cli`: cli_eval registered its commands on the importable module's group
    # (modelmill.cli), which is not this __main__ copy; run that one.
    from modelmill.cli import main as _main

    sys.exit(_main())
