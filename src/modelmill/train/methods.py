"""The training methods: name -> config dataclass, the module a training process runs, the data it takes.

    modelmill train --method dpo --data prefs --from drugs-lora

Adding a method is a new file (a ``TrainConfig`` subclass and a ``build_trainer(job)``; see
``dpo.py``) and one line in ``REGISTRY``. Light: no torch at import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modelmill.errors import InputError
from modelmill.train.config import TrainConfig
from modelmill.train.cpt import CPTConfig
from modelmill.train.dpo import PreferenceConfig
from modelmill.train.kto import KTOConfig
from modelmill.train.orpo import ORPOConfig
from modelmill.train.sft import SFTConfig


@dataclass(frozen=True)
class Method:
    name: str
    config: type  # a TrainConfig subclass
    module: str  # run as `python -m MODULE JOB.json` by the launcher
    kinds: tuple[str, ...]  # data kinds it trains on
    summary: str


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("lora", SFTConfig, "modelmill.train.sft", ("chat", "classification"),
           "supervised fine-tuning of a LoRA adapter (the default)"),
    Method("full", SFTConfig, "modelmill.train.sft", ("chat", "classification"),
           "supervised fine-tuning of all weights"),
    Method("dpo", PreferenceConfig, "modelmill.train.dpo", ("preference",),
           "direct preference optimisation on chosen/rejected pairs (reference: the starting weights)"),
    Method("orpo", ORPOConfig, "modelmill.train.orpo", ("preference",),
           "odds-ratio preference optimisation: SFT and preference in one loss, no reference model"),
    Method("kto", KTOConfig, "modelmill.train.kto", ("feedback",),
           "Kahneman-Tversky optimisation on unpaired thumbs up/down"),
    Method("cpt", CPTConfig, "modelmill.train.cpt", ("text",),
           "continued pre-training on raw text packed into blocks, general text mixed in by ratio"),
)}


def get_method(name: str, field: str = "--method") -> Method:
    if name not in REGISTRY:
        raise InputError(f"unknown training method '{name}'", field=field,
                         fix="use one of " + ", ".join(REGISTRY))
    return REGISTRY[name]


def config_class(method: str, field: str = "--method") -> type:
    return get_method(method, field).config


def all_fields() -> list[dataclasses.Field]:
    """Every method's fields once, shared ones first: what the CLI's `train` flags are built from."""
    seen: dict[str, dataclasses.Field] = {}
    for m in REGISTRY.values():
        for f in dataclasses.fields(m.config):
            seen.setdefault(f.name, f)
    return list(seen.values())


def methods_of_field(name: str) -> list[str]:
    return [m.name for m in REGISTRY.values() if name in {f.name for f in dataclasses.fields(m.config)}]


def cli_flag(name: str) -> str:
    """The command-line flag of setting ``name``: its field's own (``--from``) or ``--name-with-dashes``."""
    f = next((f for f in all_fields() if f.name == name), None)
    return (f.metadata.get("flag") if f is not None else None) or "--" + name.replace("_", "-")


def build(values: dict, *, flag=cli_flag, file: str | None = None) -> TrainConfig:
    """The config of ``values['method']`` (default lora) from a mapping of already type-checked values;
    a setting that belongs to other methods only (``--beta`` with ``--method lora``) is refused by name."""
    method = values.get("method") or "lora"
    cls = config_class(method, field=flag("method"))
    own = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in own:
            users = methods_of_field(k)
            raise InputError(f"a setting of {', '.join(users) or 'no method'}, not of {method}",
                             file=file, field=flag(k), fix=f"drop {flag(k)}, or use --method {users[0]}" if users
                             else f"drop {flag(k)}")
    return cls(**{**values, "method": method})


def describe_methods() -> list[dict]:
    return [{"name": m.name, "summary": m.summary, "data_kinds": list(m.kinds)} for m in REGISTRY.values()]


def from_mapping(spec: dict, *, file: str | None = None) -> TrainConfig:
    """A method's config from a mapping (REST body, job spec, YAML file), keys named as they are
    there: unknown keys, bad types and settings of other methods are refused by name."""
    try:
        return _from_mapping(spec, file)
    except InputError as e:
        if file and not e.file:  # a value the config's own checks refuse: it came from this file
            e.file = file
            e.args = (str(e),)
        raise


def _from_mapping(spec: dict, file: str | None) -> TrainConfig:
    from modelmill.schema import from_mapping as checked

    if not isinstance(spec, dict):
        raise InputError(f"expected an object of settings, got {type(spec).__name__}", file=file, field="config")
    spec = {str(k).replace("-", "_"): v for k, v in spec.items()}
    method = spec.get("method") or "lora"
    if not isinstance(method, str):
        raise InputError(f"expected a method name, got {type(method).__name__}", file=file, field="method")
    cls = config_class(method, field="method")
    own = {f.name for f in dataclasses.fields(cls)}
    others = {k: v for k, v in spec.items() if k not in own and methods_of_field(k)}
    if others:
        build({"method": method, **others}, flag=lambda k: k, file=file)  # raises: names the key and its methods
    return checked(cls, spec, file=file)
