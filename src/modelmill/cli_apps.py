"""The app commands: routers over adapters, workflows, and the business tables workflows look up.

    modelmill apps router create support --route drugs-lora --route zh-lora \
        --fallback smollm2-135m-instruct --fallback-data chat-sample
    modelmill apps route support "Is this drug safe with alcohol?"     # which model would answer
    modelmill apps flow check support.yaml                             # every problem, with its line
    modelmill apps flow create support support.yaml [--replace]        # served as model flow:support
    modelmill apps flow run support --input question="Where is order 1042?"
    modelmill apps flow runs support | trace RUN_ID
    modelmill apps table add orders orders.csv | --sql sqlite:////srv/shop.db --sql-table orders
    modelmill apps table list | show NAME | lookup NAME --where city=Paris | remove NAME
    modelmill apps list | show NAME | remove NAME
"""

from __future__ import annotations

import dataclasses
import json

import click

from modelmill.apps.router import RouterSpec
from modelmill.cli import Group, _store, _table, main


@main.group(cls=Group)
def apps():
    """Apps served under a model id: routers over adapters, workflows (flow:NAME)."""


@apps.group(cls=Group)
def router():
    """Routers: one model id that sends each request to the adapter it belongs to, or to a fallback."""


_D = {f.name: f.default for f in dataclasses.fields(RouterSpec) if f.default is not dataclasses.MISSING}


def _pairs(values: tuple[str, ...], flag: str, number: bool) -> dict:
    from modelmill.errors import InputError

    out = {}
    for v in values:
        k, sep, x = (p.strip() for p in v.partition("="))
        if not sep or not k or not x:
            raise InputError(f"'{v}' is not {'ROUTE=WEIGHT' if number else 'ROUTE=DATASET'}", field=flag,
                             fix="e.g. drugs-lora=1.5" if number else "e.g. drugs-lora=drug-questions")
        try:
            out[k] = float(x) if number else x
        except ValueError:
            raise InputError(f"weight '{x}' of '{k}' is not a number", field=flag, fix="e.g. drugs-lora=1.5") from None
    return out


@router.command("create")
@click.argument("name")
@click.option("--route", "routes", multiple=True, required=True,
              help="An adapter to route to (repeat); ADAPTER=DATASET learns its class from DATASET instead of "
                   "the data it was trained on.")
@click.option("--fallback", required=True, help="The model that answers what no route takes (the base model).")
@click.option("--fallback-data", default=_D["fallback_data"],
              help="General prompts (any chat or classification dataset): the fallback's own class.")
@click.option("--threshold", type=float, default=_D["threshold"], show_default=True,
              help="Under this confidence the fallback answers.")
@click.option("--weight", "weights", multiple=True, help="ROUTE=WEIGHT: multiply a route's probability (repeat).")
@click.option("--max-per-route", type=int, default=_D["max_per_route"], show_default=True,
              help="Texts per class used to learn the router (sampled).")
@click.option("--seed", type=int, default=_D["seed"], show_default=True)
def router_create(name, routes, fallback, fallback_data, threshold, weights, max_per_route, seed):
    """Learn a router from each route's training data and publish it as model id NAME."""
    from modelmill.apps.router import create_router

    names = [r.partition("=")[0].strip() for r in routes]
    data = _pairs(tuple(r for r in routes if "=" in r), "--route", number=False)
    spec = RouterSpec(name=name, routes=names, fallback=fallback, fallback_data=fallback_data, route_data=data,
                      threshold=threshold, weights=_pairs(weights, "--weight", number=True),
                      max_per_route=max_per_route, seed=seed)
    row = create_router(_store(), spec, log=lambda m: click.echo(m, err=True))
    click.echo(f"router '{row.name}' over {', '.join(row.spec['routes'])} (fallback {row.spec['fallback']}): "
               f"held-out routing accuracy {row.metrics['held_out_accuracy']:.3f}")


@apps.command("route")
@click.argument("name")
@click.argument("text")
def apps_route(name, text):
    """Which model the router NAME sends TEXT to, and how sure it is."""
    from modelmill.apps import Apps
    from modelmill.apps.router import Routes

    c = Routes(Apps(_store()).get(name)).choose([text])[0]
    click.echo(f"{c.model}  (class {c.route}, confidence {c.confidence:.3f}, chosen by {c.by})")


@apps.command("list")
def apps_list():
    """The apps, with what they route to."""
    from modelmill.apps import Apps

    rows = []
    for a in Apps(_store()).list():
        if a.kind == "workflow":
            rows.append([f"flow:{a.name}", a.kind, a.base_model or "-", f"{len(a.spec.get('nodes', []))} nodes",
                         a.spec.get("description", "")[:60]])
        elif a.kind == "bot":
            mods = a.spec.get("modules", {})
            rows.append([f"bot:{a.name}", a.kind, a.base_model, ", ".join(f"{m}={v['model']}" for m, v in mods.items()),
                         ", ".join(a.spec.get("domains", {}))[:60]])
        else:
            rows.append([a.name, a.kind, a.base_model, ", ".join(a.spec.get("routes", [])) + " (fallback "
                         f"{a.spec.get('fallback', '')})", f"routing accuracy {a.metrics.get('held_out_accuracy', 0):.3f}"])
    _table(rows, ["MODEL ID", "KIND", "BASE", "WHAT", "ABOUT"])


@apps.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Everything stored, as JSON.")
def apps_show(name, as_json):
    """An app's settings and how well it routed its held-out texts."""
    from modelmill.apps import Apps

    a = Apps(_store()).get(name)
    if as_json:
        click.echo(json.dumps({"name": a.name, "kind": a.kind, "base_model": a.base_model, "spec": a.spec,
                               "metrics": a.metrics, "created_at": str(a.created_at)}, indent=2, ensure_ascii=False))
        return
    if a.kind == "workflow":
        click.echo(f"flow:{a.name} (workflow{', from ' + a.spec['source'] if a.spec.get('source') else ''}): "
                   f"{a.spec.get('description', '')}")
        click.echo(f"  inputs: {', '.join(a.spec.get('inputs', {}))}")
        for n in a.spec.get("nodes", []):
            after = f" after {', '.join(n['after'])}" if n["after"] else ""
            click.echo(f"  {n['id']:<16} {n['type']:<9} line {n['line']:<4}{' ' + n['model'] if 'model' in n else ''}"
                       f"{after}")
        return
    if a.kind == "bot":
        click.echo(f"bot:{a.name} (dialogue bot on {a.base_model}): {a.spec.get('description', '')}")
        for m, v in a.spec.get("modules", {}).items():
            click.echo(f"  {m:<9} {v['model']}{' (few-shot prompt)' if v.get('prompted') else ''}")
        for d, v in a.spec.get("domains", {}).items():
            req = f", asks for {', '.join(v['required'])}" if v.get("required") else ""
            click.echo(f"  {d}: table {v['table']}{req}")
        return
    click.echo(f"{a.name} ({a.kind} on {a.base_model})")
    for k, v in a.spec.items():
        click.echo(f"  {k}: {v}")
    click.echo(f"  held-out routing accuracy: {a.metrics.get('held_out_accuracy', 0):.3f}")
    for c, acc in (a.metrics.get("held_out_per_class") or {}).items():
        click.echo(f"    {c}: {acc:.3f} ({a.metrics['texts'].get(c)} texts from {a.metrics['data'].get(c)})")


@apps.command("remove")
@click.argument("name")
def apps_remove(name):
    """Remove an app (the models it routes to stay)."""
    from modelmill.apps import Apps

    Apps(_store()).remove(name)
    click.echo(f"removed app {name}")


# ----------------------------------------------------------------------------- workflows

@apps.group(cls=Group)
def flow():
    """Workflows: YAML files of nodes (llm, extract, retrieve, lookup, http, switch, check, answer)."""


def _read_flow_file(path: str) -> str:
    from pathlib import Path

    from modelmill.errors import InputError, NotFoundError

    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"no file {path}", field="FILE")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", file=path, fix="save the file as UTF-8") from None


def _problems(e) -> None:
    for d in getattr(e, "details", [])[1:]:
        where = f"{d['file']}:{d['line']}" if d.get("file") and d.get("line") else f"line {d.get('line')}"
        field = f" field '{d['field']}':" if d.get("field") else ""
        click.echo(f"  also {where}:{field} {d['message']}" + (f" Fix: {d['fix']}" if d.get("fix") else ""),
                   err=True)


@flow.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def flow_check(file):
    """Check a workflow file: syntax, node types and fields, references, cycles, models, knowledge bases, tables."""
    from modelmill.apps.flow_spec import FlowError, load_workflow

    try:
        wf = load_workflow(_read_flow_file(file), file, _store())
    except FlowError as e:
        _problems(e)
        raise
    click.echo(f"{file}: {len(wf.nodes)} nodes, inputs {', '.join(wf.inputs) or 'none'}, answer '{wf.answer}': ok")


@flow.command("create")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="Publish FILE as the new version of an existing workflow NAME.")
def flow_create(name, file, replace):
    """Check FILE and publish it as model id flow:NAME (chat completions, REST runs)."""
    from modelmill.apps.flow_spec import FlowError
    from modelmill.apps.flows import create_flow

    try:
        row = create_flow(_store(), name, _read_flow_file(file), file, replace=replace)
    except FlowError as e:
        _problems(e)
        raise
    click.echo(f"workflow flow:{row.name}: {len(row.spec['nodes'])} nodes, inputs "
               f"{', '.join(row.spec['inputs']) or 'none'}")


def _inputs(values: tuple[str, ...]) -> dict:
    from modelmill.errors import InputError

    out = {}
    for v in values:
        k, sep, x = v.partition("=")
        if not sep or not k.strip():
            raise InputError(f"'{v}' is not NAME=VALUE", field="--input", fix='e.g. --input question="Where is my order?"')
        out[k.strip()] = x
    return out


def _print_trace(trace: list[dict], err: bool = False) -> None:
    echo = (lambda m: click.echo(m, err=True)) if err else click.echo
    for t in trace:
        tokens = t.get("tokens") or {}
        tok = f"  {tokens.get('prompt', 0)}+{tokens.get('completion', 0)} tokens" if tokens else ""
        echo(f"  {t['node']:<16} {t['type']:<9} {t['status']:<8} {t.get('ms', 0):>9.1f} ms{tok}")
        if t.get("error"):
            echo(f"      error: {t['error']}")
        elif t["status"] == "ok":
            out = t.get("output") or {}
            shown = out.get("text") if isinstance(out, dict) and "text" in out else json.dumps(out, ensure_ascii=False)
            shown = " ".join(str(shown).split())
            echo(f"      {shown[:160]}{'…' if len(shown) > 160 else ''}")


@flow.command("run")
@click.argument("name")
@click.option("--input", "inputs", multiple=True, help="NAME=VALUE, one per input (repeat).")
@click.option("--json", "as_json", is_flag=True, help="The run, trace included, as JSON.")
@click.option("--trace/--no-trace", default=True, show_default=True, help="Print each node's status and time.")
def flow_run(name, inputs, as_json, trace):
    """Run workflow NAME here (models load in this process) and print its answer; the run is stored."""
    import asyncio

    from modelmill.apps.flows import FlowFailed, FlowServices, load_flow, run_flow

    store = _store()
    wf = load_flow(store, name)

    async def go():
        services = FlowServices.local(store)
        try:
            return await run_flow(services, wf, _inputs(inputs))
        finally:
            await services.close()

    try:
        run = asyncio.run(go())
    except FlowFailed as e:
        if trace and not as_json:
            _print_trace(e.run.trace, err=True)
        if as_json:
            click.echo(json.dumps(e.run.as_json(), indent=2, ensure_ascii=False))
        raise
    if as_json:
        click.echo(json.dumps(run.as_json(), indent=2, ensure_ascii=False))
        return
    if trace:  # on stderr: stdout is the answer alone
        _print_trace(run.trace, err=True)
        click.echo(f"run {run.id}: {run.status}, {run.ms:.0f} ms, {run.usage()['total_tokens']} tokens", err=True)
    click.echo(run.output["text"])


@flow.command("runs")
@click.argument("name")
@click.option("--limit", type=int, default=20, show_default=True)
def flow_runs(name, limit):
    """A workflow's newest runs."""
    from modelmill.apps import Apps
    from modelmill.apps.flows import FlowRuns

    store = _store()
    Apps(store).get(name)
    rows = [[r.id, str(r.created_at)[:19], r.status, f"{r.ms:.0f}", " ".join(str((r.output or {}).get("text")
            or r.error or "").split())[:60]] for r in FlowRuns(store).list(name, limit)]
    _table(rows, ["RUN", "WHEN", "STATUS", "MS", "ANSWER OR ERROR"])


@flow.command("trace")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Everything stored, as JSON.")
def flow_trace(run_id, as_json):
    """One run: its inputs, each node's status, time, tokens and output, and the answer."""
    from modelmill.apps.flows import FlowRuns, run_json

    r = FlowRuns(_store()).get(run_id)
    if as_json:
        click.echo(json.dumps(run_json(r), indent=2, ensure_ascii=False))
        return
    click.echo(f"{r.id} of flow:{r.app}: {r.status}, {r.ms:.0f} ms, {str(r.created_at)[:19]}")
    click.echo(f"  inputs: {json.dumps({k: v for k, v in r.inputs.items() if k != 'messages'}, ensure_ascii=False)}")
    _print_trace(r.trace)
    click.echo(f"  answer: {(r.output or {}).get('text', '')}" if r.output else f"  error: {r.error}")


# ----------------------------------------------------------------------------- business tables

@apps.group(cls=Group)
def table():
    """Business tables that workflow lookup nodes filter: JSON, JSONL or CSV rows, or an SQL table."""


@table.command("add")
@click.argument("name")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--sql", default=None, help="A database URL (SQLAlchemy), read at each lookup, e.g. sqlite:////srv/shop.db")
@click.option("--sql-table", default=None, help="The table in that database.")
def table_add(name, file, sql, sql_table):
    """Register table NAME from FILE (its rows are stored) or from an SQL database's table."""
    from modelmill.apps.tables import LookupTables

    row = LookupTables(_store()).add(name, file, sql=sql, sql_table=sql_table)
    click.echo(f"table {row.name}: {row.row_count} rows, columns {', '.join(map(str, row.columns[:20]))}"
               f"{' …' if len(row.columns) > 20 else ''}")


@table.command("list")
def table_list():
    """The registered tables."""
    from modelmill.apps.tables import LookupTables

    rows = [[t.name, t.kind, t.row_count, len(t.columns), t.source if t.kind == "file" else f"{t.sql_table} @ "
             f"{t.source.split('@')[-1]}"] for t in LookupTables(_store()).list()]
    _table(rows, ["NAME", "KIND", "ROWS", "COLUMNS", "SOURCE"])


@table.command("show")
@click.argument("name")
@click.option("--rows", "n", type=int, default=3, show_default=True, help="Rows shown.")
def table_show(name, n):
    """A table's columns and first rows."""
    from modelmill.apps.tables import LookupTables

    tables = LookupTables(_store())
    t = tables.get(name)
    click.echo(f"{t.name} ({t.kind}, {t.row_count} rows): {', '.join(map(str, t.columns))}")
    for r in tables.lookup(name, {}, n)[0]:
        click.echo("  " + json.dumps(r, ensure_ascii=False)[:300])


@table.command("lookup")
@click.argument("name")
@click.option("--where", "where", multiple=True, help="COLUMN=VALUE (repeat); COLUMN<=N, >=, <, >, != and ~ "
                                                      "(contains) too.")
@click.option("--limit", type=int, default=5, show_default=True)
def table_lookup(name, where, limit):
    """The rows a lookup node would get for a filter."""
    import re

    from modelmill.apps.tables import LookupTables
    from modelmill.errors import InputError

    cond: dict = {}
    for w in where:
        m = re.match(r"^([^<>=!~]+)(<=|>=|!=|<|>|~|=)(.*)$", w)
        if not m:
            raise InputError(f"'{w}' is not COLUMN=VALUE", field="--where", fix="e.g. --where city=Paris --where price<=200")
        op = {"=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "~": "contains"}[m.group(2)]
        cond.setdefault(m.group(1).strip(), {})[op] = m.group(3)
    rows, total = LookupTables(_store()).lookup(name, cond, limit)
    click.echo(f"{total} rows match", err=True)
    for r in rows:
        click.echo(json.dumps(r, ensure_ascii=False))


@table.command("remove")
@click.argument("name")
def table_remove(name):
    """Remove a registered table (an SQL database itself is not touched)."""
    from modelmill.apps.tables import LookupTables

    LookupTables(_store()).remove(name)
    click.echo(f"removed table {name}")


# ----------------------------------------------------------------------------- deployments and promotion

@main.group(cls=Group)
def deploy():
    """Deployments: stable names clients call, moved to a new model only when it wins on their gate task."""


def _gate_opts(f):
    for opt in reversed([
        click.option("--gate-data", default=None, help="Test set (dataset) a new model must win on to be promoted."),
        click.option("--gate-kind", default="", help="Its task kind (default: from the dataset)."),
        click.option("--gate-metric", default="", help="Metric compared (default: the task's headline metric)."),
        click.option("--margin", type=float, default=0.0, show_default=True,
                     help="How much more the new model must score (0.02: two points of 100)."),
        click.option("--gate-limit", type=int, default=0, help="Score only the first N items (0: all)."),
    ]):
        f = opt(f)
    return f


def _gate(gate_data, gate_kind, gate_metric, margin, gate_limit) -> dict | None:
    if gate_data is None:
        return None
    return {"data": gate_data, "kind": gate_kind, "metric": gate_metric, "margin": margin, "limit": gate_limit}


def _show_event(e: dict) -> None:
    line = f"{e['created_at'][:19]}  {e['action']:<11} {e['model']}"
    if e.get("previous"):
        line += f"  (was {e['previous']})"
    if e.get("score") is not None:
        line += f"  {e['metric']} {e['score']:.4f} vs {e['previous_score']:.4f} on {e['task']} (margin {e['margin']:+g})"
    click.echo(line)
    if e.get("note") and e["action"] != "refused":
        click.echo(f"    {e['note']}")


@deploy.command("set")
@click.argument("name")
@click.argument("model")
@click.option("--kb", "kbs", multiple=True, help="A knowledge base it answers from (repeat).")
@click.option("--system", "system_prompt", default=None, help="A system prompt put first in every conversation.")
@_gate_opts
def deploy_set(name, model, kbs, system_prompt, gate_data, gate_kind, gate_metric, margin, gate_limit):
    """Create deployment NAME pointing at MODEL (a model, adapter or router), or update one without a gate."""
    from modelmill.apps.deployments import _KEEP, Deployments

    gate = _gate(gate_data, gate_kind, gate_metric, margin, gate_limit)
    d = Deployments(_store()).put(name, model, list(kbs), system_prompt, gate if gate is not None else _KEEP)
    click.echo(f"deployment {d.name} -> {d.model}" + (f", gate: {d.gate['data']} (margin {d.gate['margin']:+g})"
                                                       if d.gate else ""))


@deploy.command("gate")
@click.argument("name")
@_gate_opts
@click.option("--none", "no_gate", is_flag=True, help="Remove the gate.")
def deploy_gate(name, gate_data, gate_kind, gate_metric, margin, gate_limit, no_gate):
    """Set (or remove) the gate task of deployment NAME."""
    from modelmill.apps.deployments import Deployments
    from modelmill.errors import InputError

    deps = Deployments(_store())
    deps.get(name)
    gate = None if no_gate else _gate(gate_data, gate_kind, gate_metric, margin, gate_limit)
    if gate is None and not no_gate:
        raise InputError("name the gate's test set", field="--gate-data", fix="or pass --none to remove the gate")
    d = deps.set_gate(name, gate)
    click.echo(f"deployment {d.name}: " + (f"gate {d.gate['data']} (margin {d.gate['margin']:+g})" if d.gate
                                            else "no gate"))


@deploy.command("list")
def deploy_list():
    """The deployments, with what they point at and their gate."""
    from modelmill.apps.deployments import Deployments

    rows = [[d.name, d.model, ", ".join(d.knowledge_bases or []) or "-",
             f"{d.gate['data']} ({d.gate['margin']:+g})" if d.gate else "-"] for d in Deployments(_store()).list()]
    _table(rows, ["NAME", "MODEL", "KNOWLEDGE", "GATE"])


@deploy.command("promote")
@click.argument("name")
@click.argument("model")
@click.option("--force", is_flag=True, help="Move even without a gate, or when MODEL loses on it (recorded as forced).")
def deploy_promote(name, model, force):
    """Point NAME at MODEL if MODEL beats the current model on NAME's gate task by its margin."""
    from modelmill.apps.promotion import promote

    e = promote(_store(), name, model, force=force, progress=True)
    _show_event(e)


@deploy.command("rollback")
@click.argument("name")
@click.option("--to", default=None, help="A model NAME pointed at once (default: the one before the last move).")
def deploy_rollback(name, to):
    """Point NAME back at its previous model (no gate: this is the way back)."""
    from modelmill.apps.promotion import rollback

    _show_event(rollback(_store(), name, to))


@deploy.command("history")
@click.argument("name")
def deploy_history(name):
    """What happened to NAME: created, promoted, refused (with both scores), rolled back; newest first."""
    from modelmill.apps.deployments import Deployments
    from modelmill.apps.promotion import history

    store = _store()
    Deployments(store).get(name)
    for e in history(store, name):
        _show_event(e)


@deploy.command("remove")
@click.argument("name")
def deploy_remove(name):
    """Remove deployment NAME (the model it points at stays)."""
    from modelmill.apps.deployments import Deployments

    Deployments(_store()).remove(name)
    click.echo(f"removed deployment {name}")
