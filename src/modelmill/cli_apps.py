"""The app commands: routers over adapters (workflows and bots come next).

    modelmill apps router create support --route drugs-lora --route zh-lora \
        --fallback smollm2-135m-instruct --fallback-data chat-sample
    modelmill apps route support "Is this drug safe with alcohol?"     # which model would answer
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
    """Apps served under a model id: a router over adapters of one base."""


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
    click.echo(f"{c.model}  (class {c.route}, confidence {c.confidence:.3f})")


@apps.command("list")
def apps_list():
    """The apps, with what they route to."""
    from modelmill.apps import Apps

    rows = [[a.name, a.kind, a.base_model, ", ".join(a.spec.get("routes", [])), a.spec.get("fallback", ""),
             f"{a.metrics.get('held_out_accuracy', 0):.3f}"] for a in Apps(_store()).list()]
    _table(rows, ["NAME", "KIND", "BASE", "ROUTES", "FALLBACK", "ROUTING ACC"])


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
