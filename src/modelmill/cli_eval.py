"""The benchmark commands: eval, leaderboard, report, scorecard, forgetting, grid.

    modelmill eval --task drugs.yaml --models drugs-lora --baselines zero-shot,few-shot,tfidf
    modelmill leaderboard --task drugs
    modelmill report --out report.html
"""

from __future__ import annotations

import math

import click

from modelmill.cli import _store, _table, build_config, dataclass_options, main
from modelmill.errors import InputError
from modelmill.evaluate.run import names as _names
from modelmill.train.sft import SFTConfig


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.3f}"
    return "-"


def _print_results(rows, metric_names: list[str]) -> None:
    """A ranked table of results (EvalResult rows of one task); a metric no row has is left out."""
    rows = sorted(rows, key=lambda r: -(r.score if r.score is not None else float("-inf")))
    metric_names = [m for m in metric_names if any(m in (r.metrics or {}) for r in rows)] or metric_names
    _table([[str(k + 1), r.candidate, r.candidate_kind] + [_fmt(r.metrics.get(m)) for m in metric_names]
            + [str(r.n_done), f"{1000 * r.seconds / r.n_done:.0f}" if r.n_done else "-"] for k, r in enumerate(rows)],
           ["#", "CANDIDATE", "KIND"] + [m.upper().replace("_", "-") for m in metric_names] + ["N", "MS/ITEM"])


def _eval_options(f):
    for opt in reversed([
        click.option("--task", "task_file", type=click.Path(), default=None, help="A task YAML file (see docs)."),
        click.option("--kind", default=None, help="Without --task: the task kind (default: from the dataset)."),
        click.option("--data", "data_ref", default=None, help="Without --task: the test set (dataset or file)."),
        click.option("--train", "train_ref", default=None, help="Training set for few-shot and TF-IDF baselines."),
        click.option("--name", default=None, help="Without --task: the task's name (default: the dataset's)."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N items."),
        click.option("--scoring", type=click.Choice(["auto", "loglik", "generate"]), default=None,
                     help="Classification/multiple choice: answer likelihood or generate and parse."),
        click.option("--few-shot", type=click.IntRange(1, 64), default=None, help="Examples a few-shot candidate sees [5]."),
        click.option("--nearest", is_flag=True, default=None, help="Few-shot: the nearest examples by embedding."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per forward pass [16]."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Generation length (default per kind)."),
    ]):
        f = opt(f)
    return f


@main.command("eval")
@_eval_options
@click.option("--models", required=True, help="Comma-separated: BASE, ADAPTER, BASE:ADAPTER, few-shot:REF, tfidf, gazetteer, crf, remote models.")
@click.option("--baselines", default="", help="Add for each base: zero-shot, few-shot; and classical (tfidf for "
              "classification, gazetteer and crf for extraction), comma-separated.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16"]),
              help="auto: bfloat16 where the CPU/GPU computes it natively.")
@click.option("--rerun", is_flag=True, help="Score again even where a stored result exists.")
@click.option("--details", is_flag=True, help="Per-class scores and confusion matrices too (extraction: per field, worst items).")
@click.option("--report", "report_path", type=click.Path(), default=None, help="Also write an HTML report here.")
def eval_cmd(task_file, kind, data_ref, train_ref, name, limit, scoring, few_shot, nearest, batch_size, max_new_tokens,
             models, baselines, device, dtype, rerun, details, report_path):
    """Score models side by side on a task, beside prompt and classical baselines; results are kept.

    \b
    modelmill eval --data drugs-test --models drugs-lora --train drugs-train --baselines zero-shot,few-shot,tfidf
    modelmill eval --task people.yaml --models people-lora --baselines zero-shot,classical --details
    modelmill eval --task mmlu.yaml --models smollm2-135m-instruct,drugs-lora --limit 500
    """
    from modelmill.evaluate.classification import format_metrics
    from modelmill.evaluate.run import EvalConfig, run

    store = _store()
    out = run(store, EvalConfig(
        models=models, data=data_ref or "", task_file=task_file or "", kind=kind or "", train=train_ref or "",
        name=name or "", baselines=baselines, limit=limit or 0, scoring=scoring or "", few_shot=few_shot or 0,
        nearest=bool(nearest), batch_size=batch_size or 0, max_new_tokens=max_new_tokens or 0, device=device,
        dtype=dtype, rerun=rerun))
    spec, rows = out.spec, out.rows
    metric_names = spec.metrics or [m for m in spec.task_kind.metric_names]
    if details:
        for r in rows:
            if spec.kind == "extraction":
                from modelmill.evaluate.extraction import format_metrics as format_extraction
                from modelmill.evaluate.runner import read_items

                click.echo(format_extraction(r.candidate, r.metrics, read_items(r.path)) + "\n")
            elif "per_class" in r.metrics:
                click.echo(format_metrics(r.candidate, r.metrics) + "\n")
    click.echo(f"task {spec.name} ({spec.kind}), {rows[0].dataset}, {rows[0].n} items")
    _print_results(rows, metric_names)
    if report_path:
        _write_report(store, [spec.name], report_path)


def _write_report(store, task_names, out) -> None:
    from modelmill.evaluate.report import write_report
    from modelmill.evaluate.results import report_data

    path = write_report(report_data(store, task_names), out)
    click.echo(f"report: {path}")


@main.command("leaderboard")
@click.option("--task", default=None, help="One task's board (default: every task).")
def leaderboard_cmd(task):
    """Rank every scored candidate per task by the task's headline metric; results on other data
    (another dataset version, a --limit) get a board of their own, the newest data first."""
    from modelmill.evaluate.results import leaderboard
    from modelmill.evaluate.tasks import get_kind

    boards = leaderboard(_store(), task)
    if not boards:
        click.echo("no results yet: score models with `modelmill eval`")
        return
    for b in boards:
        kind = get_kind(b.kind)
        others = sum(1 for x in boards if x.task == b.task) - 1
        note = f" (ranked apart from {others} board(s) of this task on other data)" if others else ""
        click.echo(f"\n{b.task} ({b.kind}, {b.dataset}, {b.n} items), ranked by {kind.primary}{note}")
        _print_results(b.rows, list(kind.metric_names))


@main.command("report")
@click.option("--task", "tasks", multiple=True, help="Tasks to include (repeatable; default: all).")
@click.option("--out", default="modelmill-report.html", show_default=True, type=click.Path(), help="HTML file to write.")
def report_cmd(tasks, out):
    """Write a self-contained HTML report: scores, per-class F1, confusion matrices, disagreements."""
    from modelmill.evaluate.results import latest

    store = _store()
    if not tasks and not latest(store):
        raise InputError("no results to report", fix="score models first with `modelmill eval`")
    _write_report(store, list(tasks) or None, out)


@main.command("scorecard")
@click.option("--config", "config_file", required=True, type=click.Path(), help="Scorecard YAML (dimensions, weights).")
def scorecard_cmd(config_file):
    """Group tasks into dimensions (knowledge, business ...) and score every candidate overall."""
    from modelmill.evaluate.results import load_scorecard, scorecard

    card = load_scorecard(config_file)
    rows = scorecard(_store(), card)
    if not rows:
        click.echo("no candidate has results on these tasks yet")
        return
    dims = list(card["dimensions"])
    _table([[r["candidate"]] + [_fmt(r["dimensions"][d]) for d in dims]
            + [_fmt(r["overall"]) + ("" if r["complete"] else " (partial)")] for r in rows],
           ["CANDIDATE"] + [d.upper() for d in dims] + ["OVERALL"])


@main.command("forgetting")
@click.argument("adapter")
@click.option("--task", "task_file", required=True, type=click.Path(), help="A general task, e.g. MMLU multiple choice.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N items.")
def forgetting_cmd(adapter, task_file, limit):
    """Score an adapter and its base on a general task and report what fine-tuning cost there."""
    _forgetting(adapter, task_file, limit)


def _forgetting(adapter, task_file, limit=None):
    from dataclasses import replace

    from modelmill.evaluate.results import forgetting
    from modelmill.evaluate.tasks import load_task

    spec = load_task(task_file)
    if limit:
        spec = replace(spec, limit=limit)
    r = forgetting(_store(), adapter, spec)
    click.echo(f"forgetting on {r['task']} ({r['n']} items, {r['metric']}): base {_fmt(r['base'])}, "
               f"{adapter} {_fmt(r['adapter'])}, delta {r['delta']:+.3f}")


@main.command("grid")
@click.option("--bases", required=True, help="Comma-separated base models.")
@click.option("--data", "datasets", required=True, help="Comma-separated training datasets.")
@click.option("--methods", default="lora", show_default=True,
              help="Comma-separated: lora, lora-rN, full, dpo, orpo, kto, cpt, or steps joined by -then- "
                   "(cpt-then-lora, lora-then-dpo).")
@click.option("--step-data", default="", help="METHOD=DATASET,...: the data of the steps of that method "
              "(cpt=docs); a dpo/orpo step after another without it learns from that step's mistakes.")
@click.option("--task", "task_file", required=True, type=click.Path(), help="The task every cell is scored on.")
@click.option("--prefix", default="", help="A word in front of every cell's adapter name.")
@click.option("--baselines", default="zero-shot", show_default=True, help="Also rank: zero-shot, few-shot, classical (or tfidf, gazetteer, crf).")
@click.option("--forgetting-task", type=click.Path(), default=None, help="Also score each cell on this general task.")
@click.option("--config", "config_file", type=click.Path(), default=None, help="Training settings YAML for every cell.")
@dataclass_options(SFTConfig, exclude=("base", "data", "name", "method", "lora_r", "lora_alpha"))
def grid_cmd(bases, datasets, methods, step_data, task_file, prefix, baselines, forgetting_task, config_file, **flags):
    """Train every base x dataset x method, score each on one task, print the ranked board.

    Running it again skips finished cells and reuses stored scores.
    """
    from modelmill.evaluate.grid import parse_step_data, plan, run, summary_lines
    from modelmill.evaluate.tasks import load_task

    spec = load_task(task_file)
    template = build_config(SFTConfig, flags, config_file)
    cells = plan(_names(bases), _names(datasets), _names(methods), template, prefix, parse_step_data(step_data))
    out = run(_store(), spec, cells, baselines=_names(baselines) if baselines else [], log=click.echo)
    rows = out.rows
    click.echo(f"\ngrid on task {spec.name} ({spec.kind}), {rows[0].dataset}, {rows[0].n} items")
    _print_results(rows, list(spec.task_kind.metric_names))
    click.echo("")
    for line in summary_lines(out.summary):
        click.echo(line)
    if forgetting_task:
        for n in out.adapters:
            _forgetting(n, forgetting_task)
