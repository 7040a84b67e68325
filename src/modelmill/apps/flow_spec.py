"""A workflow file: YAML nodes with inputs and outputs, checked on load with the line of each problem.

    name: support
    description: answers refund questions from the policy, order questions from the orders table
    inputs: [question]                 # a chat request fills `question` (its last user message) and `messages`
    nodes:
      - id: intent
        type: llm
        model: smollm2-135m-instruct
        prompt: "Is this about an order or a refund? Answer with one word.\\n{{ question }}"
        max_tokens: 4
      - id: route
        type: switch
        value: "{{ intent.text }}"
        cases: {order: [slots, order], refund: [policy, draft, verify]}
        default: [general]
      - id: policy
        type: retrieve
        knowledge: [policies]
        query: "{{ question }}"
      ...
      - id: reply
        type: answer
        text: "{{ (draft or order or general).text }}"

Every string of a node (but ``id``, ``type``, ``model`` and node names) is a Jinja template,
rendered in a sandbox: no attribute of Python's internals, no code from the file runs. Beside
Jinja's own filters there are ``regex_search(pattern[, group])``, ``regex_replace(pattern, repl)``
and ``from_json``. A
template sees the inputs, ``messages`` and every node by its id; a node's value is a dict whose
``text`` every type sets (see :data:`TYPES` for the rest), and None when the node was skipped.

A node runs after the nodes its templates name (and those in ``after``); a ``switch`` runs the
nodes listed under the case that matched and skips those of the other cases; a node whose every
upstream node was skipped is skipped too. Exactly one ``answer`` node gives the output.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

from modelmill.errors import InputError

# type -> (required fields, optional fields with defaults); fields in TEMPLATED are templates
TYPES: dict[str, tuple[tuple[str, ...], dict]] = {
    "llm": (("model", "prompt"), {"system": None, "history": False, "max_tokens": 256, "temperature": 0.0,
                                  "top_p": 1.0, "seed": None, "stop": None, "schema": None}),
    "extract": (("model", "text", "schema"), {"instruction": None, "max_tokens": 256}),
    "retrieve": (("knowledge", "query"), {"k": 4, "mode": "hybrid"}),
    "lookup": (("table",), {"where": {}, "limit": 5, "if_empty": "no_rows"}),
    "http": (("url",), {"method": "GET", "headers": {}, "json": None, "body": None, "timeout": 10.0,
                        "max_bytes": 1_000_000}),
    "switch": (("value", "cases"), {"default": []}),
    "check": (("draft", "sources"), {"method": "grounded", "model": None, "min_score": 0.5, "retries": 1,
                                     "on_fail": "flag"}),
    "answer": (("text",), {"citations": None}),
}
COMMON = ("id", "type", "after", "label")
TEMPLATED = {"prompt", "system", "text", "query", "url", "headers", "json", "body", "value", "where",
             "instruction"}
RESERVED = {"messages", "inputs", "loop", "range", "dict", "lipsum", "cycler", "joiner", "namespace", "self", "caller",
            "varargs", "kwargs", "super", "true",
            "false", "none", "True", "False", "None"}
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class FlowError(InputError):
    """A workflow file that cannot run: the first problem, with every problem in ``details``."""

    def __init__(self, problems: list[dict], file: str | None):
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        super().__init__(first["message"] + more, file=file, line=first.get("line"), field=first.get("field"),
                         fix=first.get("fix"))
        self.details = [{"file": file, **p} for p in problems]


# ----------------------------------------------------------------------------- YAML with line numbers

class _Map(dict):
    line: int = 1
    lines: dict            # key -> line of the key
    value_lines: dict      # key -> line where the value's text starts (the line after `key: |` or `key: >`)


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):  # *x: a tiny file could stand for billions of values
                mark = self.peek_event().start_mark
                raise _Problem("YAML aliases (*name) are not supported in workflow files", mark.line + 1,
                               fix="write the value out where it is used")
            return super().compose_node(parent, index)

    # a date or time stays the text it was written as (JSON holds it; a template shows it as written)
    Loader.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def mapping(loader, node):
        loader.flatten_mapping(node)
        seen: dict = {}
        out = _Map()
        out.line, out.lines, out.value_lines = node.start_mark.line + 1, {}, {}
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise _Problem("a key must be a plain value", k_node.start_mark.line + 1)
            if key in seen:
                raise _Problem(f"key '{key}' appears twice (first on line {seen[key]})", k_node.start_mark.line + 1)
            seen[key] = k_node.start_mark.line + 1
            out[key] = loader.construct_object(v_node, deep=True)
            out.lines[key] = k_node.start_mark.line + 1
            # a block scalar's mark is its | or > indicator; its text starts on the next line
            block = isinstance(v_node, yaml.ScalarNode) and v_node.style in ("|", ">")
            out.value_lines[key] = v_node.start_mark.line + 1 + (1 if block else 0)
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


class _Problem(Exception):
    def __init__(self, message: str, line: int | None, field: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.problem = {"message": message, "line": line, "field": field, "fix": fix}


MAX_TEXT = 1_000_000  # characters of a workflow file


def parse_yaml(text: str, source: str | None = None) -> _Map:
    import yaml

    if len(text) > MAX_TEXT:
        raise FlowError([{"message": f"the file has {len(text):,} characters; a workflow file takes up to "
                                     f"{MAX_TEXT:,}", "line": None}], source)
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except _Problem as p:
        raise FlowError([p.problem], source) from None
    except RecursionError:
        raise FlowError([{"message": "the file nests too deeply", "line": None}], source) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise FlowError([{"message": f"not valid YAML: {e.problem or e.context}", "line": mark.line + 1 if mark
                          else None, "field": None, "fix": "check the indentation and quoting on that line"}],
                        source) from None
    except yaml.YAMLError as e:
        raise FlowError([{"message": f"not valid YAML: {e}", "line": None}], source) from None
    if not isinstance(data, dict):
        raise FlowError([{"message": "a workflow file is a mapping with 'nodes' (and 'name', 'inputs')",
                          "line": 1, "field": None, "fix": "see `modelmill apps flow create --help`"}], source)
    return data


# ----------------------------------------------------------------------------- templates

def template_env():
    """Jinja in a sandbox: no access to Python internals, no mutation of values, bounded ranges."""
    from jinja2 import StrictUndefined

    env = _bounded_class()(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": False}
    env.globals["range"] = _range
    env.filters.update(regex_search=_regex_search, regex_replace=_regex_replace, from_json=_from_json)
    return env


def _regex_search(value, pattern: str, group: int = 0) -> str:
    """The first match of ``pattern`` in ``value`` (or one of its groups); "" when none."""
    m = re.search(str(pattern), str(value))
    return (m.group(group) or "") if m else ""


def _regex_replace(value, pattern: str, repl: str = "") -> str:
    return re.sub(str(pattern), str(repl), str(value))


def _from_json(value):
    """A JSON text as a value (None when it is not JSON): an http node's body, a model's answer."""
    import json

    try:
        return json.loads(str(value))
    except ValueError:
        return None


MAX_RENDER = 1_000_000   # characters one template may produce
MAX_RANGE = 1_000        # items a template's range() may have (two nested loops: a million steps)
MAX_POWER = 1_000_000    # largest result of ** and * on numbers; longest string or list made by *


def _range(*args):
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise OverflowError(f"range() of {len(r):,} items; templates take up to {MAX_RANGE:,}")
    return r


@functools.lru_cache(maxsize=1)
def _bounded_class():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Bounded(ImmutableSandboxedEnvironment):
        """The immutable sandbox, with * and ** kept from making huge numbers, strings or lists (the
        compiler folds constants too, so a file with {{ 9**9**9 }} would stall while it loads)."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "**":
                if isinstance(left, (int, float)) and isinstance(right, (int, float)) and right > 0 and \
                        abs(left) > 1 and right * math.log10(abs(left)) > math.log10(MAX_POWER):
                    raise OverflowError(f"{left} ** {right} is over {MAX_POWER:,}")
                return left ** right
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_POWER:
                    raise OverflowError(f"repeating {len(seq):,} items {n:,} times is over {MAX_POWER:,}")
            return left * right

    return Bounded


@dataclass
class Node:
    id: str
    type: str
    line: int
    fields: dict                                   # every field, defaults filled in
    lines: dict                                    # field -> line
    templates: dict = field(default_factory=dict)  # field -> compiled structure (see _compile)
    refs: dict = field(default_factory=dict)       # name its templates use -> (field, line of its first use)
    deps: set = field(default_factory=set)         # nodes it runs after
    missing: tuple = ()                            # required fields the file leaves out (a problem reported)
    cite_from: int = 1                             # a retrieve node's first item number (see _number_citations)


@dataclass
class Workflow:
    name: str
    description: str
    inputs: dict                # name -> {"required": bool, "default": ...}
    nodes: dict                 # id -> Node, in file order
    answer: str                 # the answer node's id
    text: str                   # the file as written
    source: str | None = None

    def models(self) -> list[str]:
        return list(dict.fromkeys(n.fields["model"] for n in self.nodes.values() if n.fields.get("model")))

    def outline(self) -> list[dict]:
        """Nodes and edges, as the web page draws them."""
        out = []
        for n in self.nodes.values():
            item = {"id": n.id, "type": n.type, "line": n.line, "after": sorted(n.deps)}
            if n.fields.get("model"):
                item["model"] = n.fields["model"]
            if n.type == "switch":
                item["cases"] = n.fields["cases"]
                item["default"] = n.fields["default"]
            out.append(item)
        return out


class _Tpl:
    """A compiled template string (rendered per run)."""

    __slots__ = ("source", "template")

    def __init__(self, source: str, template):
        self.source, self.template = source, template


def _compile(env, value, problems: list, where: dict):
    """``value`` with each string holding ``{{`` or ``{%`` compiled; each name used is recorded in
    where['refs'] as name -> (field, line of its first use). where['line'] is the line the value's
    text starts on; a nested mapping's values start on their own lines."""
    from jinja2 import TemplateSyntaxError, meta, nodes

    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        try:
            ast = env.parse(value)
            used = meta.find_undeclared_variables(ast)
            first: dict = {}
            for n in ast.find_all(nodes.Name):
                if n.name in used and n.ctx == "load":
                    first[n.name] = min(first.get(n.name, n.lineno), n.lineno)
            for name in used:  # the use nearest the top of the file is the one reported
                at = (where["field"], where["line"] + first.get(name, 1) - 1)
                if name not in where["refs"] or at[1] < where["refs"][name][1]:
                    where["refs"][name] = at
            return _Tpl(value, env.from_string(value))
        except TemplateSyntaxError as e:
            problems.append({"message": f"template error: {e.message}", "line": where["line"] + (e.lineno or 1) - 1,
                             "field": where["field"], "fix": "Jinja syntax: {{ node.text }}, {% if x %}...{% endif %}"})
            return value
        except Exception as e:  # noqa: BLE001 - what the compiler folds (10**5000) fails here, not later
            problems.append({"message": f"template error: {type(e).__name__}: {str(e)[:200]}", "line": where["line"],
                             "field": where["field"]})
            return value
    if isinstance(value, dict):
        out, line = {}, where["line"]
        for k, v in value.items():
            where["line"] = getattr(value, "value_lines", {}).get(k, line)
            out[k] = _compile(env, v, problems, where)
        where["line"] = line
        return out
    if isinstance(value, list):
        return [_compile(env, v, problems, where) for v in value]
    return value


def render(value, context: dict):
    """A compiled structure rendered with ``context`` (strings stay strings, the rest as it was); a
    template that would produce over :data:`MAX_RENDER` characters raises OverflowError."""
    if isinstance(value, _Tpl):
        parts, size = [], 0
        for piece in value.template.generate(context):
            size += len(piece)
            if size > MAX_RENDER:
                raise OverflowError(f"the template produced over {MAX_RENDER:,} characters")
            parts.append(piece)
        return "".join(parts)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


# ----------------------------------------------------------------------------- loading and checking

def _ids(value) -> list:
    """Node ids named by a field: one id or a list of ids; anything else becomes a string that names
    no node (load_workflow reports it)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [x if isinstance(x, str) else repr(x) for x in items]


def load_workflow(text: str, source: str | None = None, store=None, name: str | None = None) -> Workflow:
    """Parse and check a workflow file; with a store, its models, knowledge bases and tables must exist.
    Raises :class:`FlowError` listing every problem with its line."""
    import graphlib

    data = parse_yaml(text, source)
    problems: list[dict] = []

    def bad(message, line, field=None, fix=None):
        problems.append({"message": message, "line": line, "field": field, "fix": fix})

    top_lines = getattr(data, "lines", {})
    for key in data:
        if key not in ("name", "description", "inputs", "nodes"):
            bad(f"unknown top-level key '{key}'", top_lines.get(key), str(key),
                "the keys are name, description, inputs and nodes")
    # inputs
    raw_inputs = data.get("inputs", ["question"])
    inputs: dict = {}
    if isinstance(raw_inputs, list):
        for x in raw_inputs:
            inputs[str(x)] = {"required": True, "default": None}
    elif isinstance(raw_inputs, dict):
        for k, v in raw_inputs.items():
            v = v if isinstance(v, dict) else {"default": v}
            inputs[str(k)] = {"required": "default" not in v and v.get("required", True), "default": v.get("default"),
                              "description": v.get("description")}
    else:
        bad("'inputs' is a list of names or a mapping of name: {default, description}", top_lines.get("inputs"),
            "inputs")
    for k in inputs:
        if not _ID.match(k) or k in RESERVED:
            bad(f"input '{k}' is not a usable name", top_lines.get("inputs"), "inputs",
                "letters, digits and _, not starting with a digit, and not messages or inputs")
    # nodes
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        bad("'nodes' must be a non-empty list of nodes", top_lines.get("nodes", 1), "nodes",
            "add nodes: - id: reply / type: answer / text: ...")
        raise FlowError(problems, source)
    env = template_env()
    nodes: dict[str, Node] = {}
    for i, raw in enumerate(raw_nodes):
        line = getattr(raw, "line", top_lines.get("nodes"))
        if not isinstance(raw, dict):
            bad(f"node {i + 1} is not a mapping of fields", line, "nodes")
            continue
        lines = getattr(raw, "lines", {})
        nid, ntype = raw.get("id"), raw.get("type")
        if not isinstance(nid, str) or not _ID.match(nid):
            bad(f"node {i + 1} needs an 'id' of letters, digits and _ (got {nid!r})", lines.get("id", line), "id")
            continue
        if nid in nodes:
            bad(f"node id '{nid}' is used twice (first on line {nodes[nid].line})", lines.get("id", line), "id")
            continue
        if nid in inputs or nid in RESERVED:
            bad(f"node id '{nid}' is also the name of an input or a reserved name", lines.get("id", line), "id")
            continue
        if not isinstance(ntype, str) or ntype not in TYPES:
            bad(f"node '{nid}' has unknown type {ntype!r}", lines.get("type", line), f"nodes.{nid}.type",
                f"the types are {', '.join(TYPES)}")
            continue
        required, optional = TYPES[ntype]
        for k in raw:
            if k not in COMMON and k not in required and k not in optional:
                bad(f"node '{nid}' ({ntype}) has unknown field '{k}'", lines.get(k, line), f"nodes.{nid}.{k}",
                    f"a {ntype} node takes {', '.join(required + tuple(optional))}")
        missing = tuple(k for k in required if raw.get(k) in (None, "", [], {}))
        for k in missing:
            bad(f"node '{nid}' ({ntype}) is missing '{k}'", lines.get(k, line), f"nodes.{nid}.{k}",
                f"add '{k}:' to node '{nid}'; a {ntype} node needs {', '.join(required)}")
        # the node stays (so the nodes that name it are checked too) with every field present: a
        # missing one is None, and the checks below leave a field in `missing` alone
        fields = {**optional, **{k: v for k, v in raw.items() if k not in ("id", "type")},
                  **{k: None for k in missing}}
        node = Node(nid, ntype, line, fields, {k: lines.get(k, line) for k in raw}, missing=missing)
        value_lines = getattr(raw, "value_lines", {})
        where = {"refs": {}, "line": line, "field": None}
        for k in sorted(TEMPLATED):
            if fields.get(k) is not None:
                where["line"], where["field"] = value_lines.get(k, lines.get(k, line)), f"nodes.{nid}.{k}"
                node.templates[k] = _compile(env, fields[k], problems, where)
        node.refs = where["refs"]
        nodes[nid] = node
    # references and edges
    answers = [n for n in nodes.values() if n.type == "answer"]
    if len(answers) != 1:
        bad(f"a workflow needs exactly one answer node, this one has {len(answers)}",
            answers[1].line if len(answers) > 1 else top_lines.get("nodes"), "nodes",
            "end with - id: reply / type: answer / text: '{{ ... }}'")
    names = set(inputs) | {"messages", "inputs"}
    for n in nodes.values():
        for ref, (where_field, where_line) in sorted(n.refs.items()):
            if ref in nodes:
                if ref != n.id:
                    n.deps.add(ref)
                else:
                    bad(f"node '{n.id}' refers to itself", where_line, where_field)
            elif ref not in names:
                bad(f"node '{n.id}' uses '{ref}', which is not an input or a node", where_line, where_field,
                    f"inputs: {', '.join(inputs) or 'none'}; nodes: {', '.join(nodes)}")
        listed = {"after": _ids(n.fields.get("after"))}
        if n.type == "check":
            listed["draft"] = _ids(n.fields.get("draft"))
            listed["sources"] = _ids(n.fields.get("sources"))
        if n.type == "answer" and n.fields.get("citations"):
            listed["citations"] = _ids(n.fields["citations"])
        for k, ids in listed.items():
            for ref in ids:
                if ref not in nodes:
                    bad(f"node '{n.id}' names '{ref}' in '{k}', and there is no such node", n.lines.get(k, n.line),
                        f"nodes.{n.id}.{k}")
                elif ref != n.id:
                    n.deps.add(ref)
        _check_fields(n, nodes, bad)
    for n in nodes.values():  # a switch's case nodes run after it
        if n.type == "switch" and isinstance(n.fields.get("cases"), dict):
            for label in n.fields["cases"]:
                if not isinstance(label, str):
                    bad(f"switch '{n.id}' has case label {label!r}, which YAML read as a {type(label).__name__}",
                        n.lines.get("cases", n.line), f"nodes.{n.id}.cases",
                        f"quote it: '{str(label).lower()}' (YAML reads yes, no, on, off, true, false and numbers "
                        "as values)")
            for label, ids in [*n.fields["cases"].items(), ("default", n.fields["default"])]:
                for ref in _ids(ids):
                    if ref not in nodes:
                        bad(f"switch '{n.id}' case '{label}' names '{ref}', and there is no such node",
                            n.lines.get("cases" if label != "default" else "default", n.line), f"nodes.{n.id}.cases")
                    elif ref == n.id:
                        bad(f"switch '{n.id}' lists itself", n.line, f"nodes.{n.id}.cases")
                    else:
                        nodes[ref].deps.add(n.id)
    _guard_drafts(nodes)
    if answers:
        _number_citations(answers[0], nodes)
    try:
        graphlib.TopologicalSorter({k: v.deps for k, v in nodes.items()}).prepare()
    except graphlib.CycleError as e:
        cycle = e.args[1]
        bad(f"the nodes form a cycle: {' -> '.join(cycle)}", nodes[cycle[0]].line, f"nodes.{cycle[0]}",
            "a node cannot use, directly or through others, what comes after it")
    if store is not None:
        _check_names(store, nodes, bad)
    if problems:
        problems.sort(key=lambda p: p.get("line") or 0)
        raise FlowError(problems, source)
    wf_name = name or data.get("name") or ""
    return Workflow(str(wf_name), str(data.get("description") or ""), inputs, nodes,
                    answers[0].id, text, source)


def _ancestors(nodes: dict, nid: str) -> set:
    seen, todo = set(), [nid]
    while todo:
        for d in nodes[todo.pop()].deps:
            if d in nodes and d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def _guard_drafts(nodes: dict) -> None:
    """Whatever reads a checked draft runs after its check, so it sees the draft the check let through
    (a retried one), never the first attempt. Nodes the check itself needs are left as they are."""
    for c in [n for n in nodes.values() if n.type == "check"]:
        drafts = [d for d in _ids(c.fields.get("draft")) if d in nodes]
        if not drafts:
            continue
        before = _ancestors(nodes, c.id)
        for n in nodes.values():
            if n.id != c.id and drafts[0] in n.deps and n.id not in before:
                n.deps.add(c.id)


def _number_citations(answer: Node, nodes: dict) -> None:
    """Give each retrieve node an answer cites its own range of item numbers, in the order the
    citations list them, so the [n] a model reads next to an item is the [n] the answer's
    citations call it: with citations [pol, zh] and k 4 each, pol numbers its items from [1] and
    zh from [5] (a node that finds fewer than k leaves a gap). The ranges come from k, known when
    the file loads, so the retrieve nodes still run side by side."""
    first = 1
    for c in dict.fromkeys(_ids(answer.fields.get("citations"))):
        node = nodes.get(c)
        if node is None or node.type != "retrieve":
            continue
        node.cite_from = first
        k = node.fields.get("k")
        first += k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else 0


def _check_fields(n: Node, nodes: dict, bad) -> None:
    f, at = n.fields, n.lines
    if n.missing:  # a missing field is reported once, as missing, not again as a wrong value
        said, skip = bad, {f"nodes.{n.id}.{k}" for k in n.missing}

        def bad(message, line, field=None, fix=None):
            if field not in skip:
                said(message, line, field, fix)

    def number(k, lo, hi, integer=False):
        v = f.get(k)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi and (not integer or
                                                                                              isinstance(v, int))
        if v is not None and not ok:
            bad(f"node '{n.id}': '{k}' must be {'a whole number' if integer else 'a number'} from {lo} to {hi}, "
                f"got {v!r}", at.get(k, n.line), f"nodes.{n.id}.{k}")

    if n.type in ("llm", "extract"):
        number("max_tokens", 1, 32768, integer=True)
        if not isinstance(f.get("model"), str):
            bad(f"node '{n.id}': 'model' is a model id", at.get("model", n.line), f"nodes.{n.id}.model")
        elif "{{" in f["model"]:
            bad(f"node '{n.id}': 'model' cannot be a template (it is checked when the file loads)",
                at.get("model", n.line), f"nodes.{n.id}.model")
        if n.type == "llm":
            number("temperature", 0, 2)
            number("top_p", 0.0001, 1)
            if f.get("schema") is not None and not isinstance(f["schema"], dict):
                bad(f"node '{n.id}': 'schema' is a JSON schema (a mapping)", at.get("schema", n.line),
                    f"nodes.{n.id}.schema")
        if n.type == "extract":
            s = f.get("schema")
            if not isinstance(s, dict) or not isinstance(s.get("properties"), dict) or not s["properties"]:
                bad(f"node '{n.id}': 'schema' must be a JSON object schema with 'properties'",
                    at.get("schema", n.line), f"nodes.{n.id}.schema",
                    "schema: {type: object, properties: {city: {type: string}}}")
    elif n.type == "retrieve":
        number("k", 1, 50, integer=True)
        if f.get("mode") not in ("hybrid", "bm25", "vector"):
            bad(f"node '{n.id}': 'mode' is hybrid, bm25 or vector", at.get("mode", n.line), f"nodes.{n.id}.mode")
    elif n.type == "lookup":
        number("limit", 1, 1000, integer=True)
        if f.get("if_empty") not in ("no_rows", "ignore"):
            bad(f"node '{n.id}': 'if_empty' is no_rows (a filter value that renders empty finds nothing) or ignore "
                "(that column does not narrow the search: a slot not heard yet)", at.get("if_empty", n.line),
                f"nodes.{n.id}.if_empty")
        if not isinstance(f.get("where"), dict):
            bad(f"node '{n.id}': 'where' maps columns to values", at.get("where", n.line), f"nodes.{n.id}.where")
    elif n.type == "http":
        number("timeout", 0.1, 300)
        number("max_bytes", 1, 100_000_000, integer=True)
        from modelmill.apps.ssrf import METHODS

        if str(f.get("method", "")).upper() not in METHODS:
            bad(f"node '{n.id}': method {f.get('method')!r} is not one of {', '.join(METHODS)}",
                at.get("method", n.line), f"nodes.{n.id}.method")
        if f.get("json") is not None and f.get("body") is not None:
            bad(f"node '{n.id}': give 'json' or 'body', not both", at.get("body", n.line), f"nodes.{n.id}.body")
        if not isinstance(f.get("headers"), dict):
            bad(f"node '{n.id}': 'headers' maps names to values", at.get("headers", n.line), f"nodes.{n.id}.headers")
    elif n.type == "switch":
        if not isinstance(f.get("cases"), dict) or not f["cases"]:
            bad(f"node '{n.id}': 'cases' maps each label to the nodes it runs", at.get("cases", n.line),
                f"nodes.{n.id}.cases", "cases: {refund: [policy, draft], order: [lookup_order]}")
    elif n.type == "check":
        number("min_score", 0, 1)
        number("retries", 0, 5, integer=True)
        if f.get("method") not in ("grounded", "llm"):
            bad(f"node '{n.id}': 'method' is grounded or llm", at.get("method", n.line), f"nodes.{n.id}.method")
        if f.get("method") == "llm" and not f.get("model"):
            bad(f"node '{n.id}': method llm needs a 'model' to judge with", n.line, f"nodes.{n.id}.model")
        if f.get("on_fail") not in ("flag", "fail"):
            bad(f"node '{n.id}': 'on_fail' is flag or fail", at.get("on_fail", n.line), f"nodes.{n.id}.on_fail")
        drafts = _ids(f.get("draft"))
        if len(drafts) != 1 or (drafts[0] in nodes and nodes[drafts[0]].type != "llm"):
            bad(f"node '{n.id}': 'draft' names one llm node (the answer it checks and, on failure, retries)",
                at.get("draft", n.line), f"nodes.{n.id}.draft")
    elif n.type == "answer":
        cites = _ids(f.get("citations"))
        for c in cites:
            if c in nodes and nodes[c].type != "retrieve":
                bad(f"node '{n.id}': 'citations' names retrieve nodes; '{c}' is a {nodes[c].type} node",
                    at.get("citations", n.line), f"nodes.{n.id}.citations")


def model_problem(store, model: str) -> str | None:
    """Why ``model`` cannot be called from a workflow (None: it can)."""
    from modelmill.adapters import AdapterRegistry
    from modelmill.apps import Apps
    from modelmill.apps.deployments import Deployments
    from modelmill.errors import ModelmillError

    if model.startswith("flow:"):
        return f"'{model}' is a workflow; a workflow node calls a model, an adapter, a router or a deployment"
    if ":" not in model:
        app = Apps(store).find(model)
        if app is not None:
            return None if app.kind == "router" else f"'{model}' is a {app.kind}, not a model"
        if Deployments(store).find(model) is not None:
            return None
    try:
        base, _ = AdapterRegistry(store).resolve_ref(model)
    except ModelmillError as e:
        return f"model '{model}' does not exist ({getattr(e, 'message', e)})"
    if base.source_type == "remote":
        return f"'{model}' is a remote endpoint, which this server does not call"
    return None


def _check_names(store, nodes: dict, bad) -> None:
    from modelmill.apps.tables import LookupTables
    from modelmill.kb.base import KnowledgeBases
    from modelmill.errors import NotFoundError

    kbs, tables = KnowledgeBases(store), LookupTables(store)
    for n in nodes.values():
        model = n.fields.get("model")
        if isinstance(model, str) and "{{" not in model:
            why = model_problem(store, model)
            if why:
                bad(f"node '{n.id}': {why}", n.lines.get("model", n.line), f"nodes.{n.id}.model",
                    "`modelmill models list`, `adapters list` and `apps list` show what exists")
        if n.type == "retrieve":
            for kb in _ids(n.fields.get("knowledge")):
                try:
                    kbs.get(str(kb))
                except NotFoundError as e:
                    bad(f"node '{n.id}': {e.message}", n.lines.get("knowledge", n.line), f"nodes.{n.id}.knowledge",
                        e.fix)
        if n.type == "lookup" and "table" not in n.missing:
            try:
                t = tables.get(str(n.fields["table"]))
            except NotFoundError as e:
                bad(f"node '{n.id}': {e.message}", n.lines.get("table", n.line), f"nodes.{n.id}.table", e.fix)
                continue
            where = n.fields.get("where") if isinstance(n.fields.get("where"), dict) else {}
            for col in where:
                if col not in t.columns:
                    bad(f"node '{n.id}': table '{t.name}' has no column '{col}'", n.lines.get("where", n.line),
                        f"nodes.{n.id}.where", f"columns: {', '.join(map(str, t.columns[:40]))}")
