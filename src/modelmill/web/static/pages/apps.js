// Apps: what answers under a model id beyond a model (routers over adapters, workflows as
// flow:NAME, dialogue bots as bot:NAME): a router learned from a form and tried on a text, a
// workflow drawn as a graph, run from a form with its trace, its recent runs, a bot's chat (in
// bots.js), and the business tables that workflows and bots look rows up in. Everything here calls
// /api/apps and /api/tables, the same library calls `modelmill apps ...` makes.

import { api, withQuery } from "../api.js";
import { badge, errorBox, fmtNum, fmtTime, h, loading, notice, replace, s, table } from "../dom.js";
import { appHref, nameFromFile, specOf, yamlAppForm } from "./appfiles.js";
import { botAbout, botDetail, botForm } from "./bots.js";

const STATUSES = ["ok", "skipped", "failed", "not run"];

/** "not run" -> "not_run": a status as a class name (badge-not_run, status-not_run). */
const statusKey = (st) => String(st || "none").replace(/\s+/g, "_");

/** A model id of an app: flow:NAME for a workflow, bot:NAME for a bot, the name for a router. */
const modelId = (app) => app.model_id || (app.kind === "workflow" ? `flow:${app.name}` : app.kind === "bot" ? `bot:${app.name}` : app.name);

function pretty(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "string" ? v : JSON.stringify(v, null, 2);
}

// ============================================================================ the list page

export async function appsPage(ctx) {
  const listBox = h("div", { testid: "apps-list" }, loading());
  const tablesBox = h("div", { testid: "tables-list" }, loading());
  const previewBox = h("div", { testid: "table-preview-box" });
  const form = flowForm(ctx, () => loadApps());
  const routerCard = routerForm(ctx, () => loadApps());
  const bots = botForm(ctx, () => loadApps());
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Apps"),
      h("p", { class: "lead" }, "Apps answer under a model id of their own. A router sends each request to the adapter that knows its topic; a workflow chains steps (look up a table, ask a model, check the draft) written as a YAML file; a bot holds a conversation, asks for what it still needs and answers from a business table.")),
    h("div", { class: "card" }, h("h2", {}, "Your apps"), listBox),
    routerCard,
    form.el,
    bots.el,
    h("div", { class: "card", testid: "tables-card" },
      h("h2", {}, "Business tables"),
      h("p", { class: "help" }, "Rows that a workflow's lookup nodes filter, e.g. ", h("code", {}, "where: {order_id: \"{{ question }}\"}"),
        ", and that a bot's domains are looked up in."),
      tablesBox, previewBox, tableUpload(() => loadTables()))));

  async function loadApps() {
    try {
      const { data } = await api("/api/apps");
      if (!ctx.alive) return;
      replace(listBox, table([
        { label: "Model id", get: (a) => h("a", { href: appHref(a.name), testid: "app-link" }, h("code", {}, modelId(a))) },
        { label: "Kind", get: (a) => a.kind },
        { label: "About", get: (a) => about(a) },
        { label: "Updated", get: (a) => fmtTime(a.updated_at || a.created_at) },
        { label: "", get: (a) => h("div", { class: "inline" },
          // a bot's own page shows what it understood and tracked each turn; the playground shows only replies
          a.kind === "bot" ? h("a", { class: "btn btn-small", href: appHref(a.name), testid: "bot-chat-link" }, "Chat")
            : h("a", { class: "btn btn-small", href: `#/playground?models=${encodeURIComponent(modelId(a))}` }, "Try"),
          h("button", { type: "button", class: "btn btn-small btn-danger", testid: "app-delete",
            onclick: (e) => removeApp(a, e.target) }, "Delete")) },
      ], data, { testid: "apps-table", rowAttrs: (a) => ({ testid: "app-row", "data-name": a.name, "data-kind": a.kind }),
        empty: "No apps yet. Learn a router, publish a workflow or a bot below." }));
    } catch (e) {
      if (ctx.alive) replace(listBox, errorBox(e, "apps-error"));
    }
  }

  async function removeApp(a, button) {
    if (!confirm(`Delete ${modelId(a)}? Callers of this model id get an error until it exists again${a.kind === "workflow" ? "; its runs are deleted too"
      : a.kind === "bot" ? "; its conversations are deleted too" : ""}.`)) return;
    button.disabled = true;
    try {
      await api(`/api/apps/${encodeURIComponent(a.name)}`, { method: "DELETE" });
      await loadApps();
    } catch (e) {
      button.disabled = false;
      listBox.prepend(errorBox(e, "app-delete-error"));
    }
  }

  async function loadTables() {
    try {
      const { data } = await api("/api/tables");
      if (!ctx.alive) return;
      replace(tablesBox, table([
        { label: "Name", get: (t) => h("strong", {}, t.name) },
        { label: "Kind", get: (t) => t.kind },
        { label: "Rows", get: (t) => fmtNum(t.rows), class: "num" },
        { label: "Columns", get: (t) => h("span", { class: "clip" }, (t.columns || []).join(", ") || "–") },
        // an uploaded file's stored source is a server path: its file name is what the user knows
        { label: "From", get: (t) => (t.sql_table ? h("code", {}, `SQL table ${t.sql_table}`)
          : t.source ? h("code", { title: t.source }, String(t.source).split(/[\\/]/).pop()) : "–") },
        { label: "Added", get: (t) => fmtTime(t.created_at) },
        { label: "", get: (t) => h("div", { class: "inline" },
          h("button", { type: "button", class: "btn btn-small", testid: "table-preview", onclick: () => preview(t.name) }, "First rows"),
          h("button", { type: "button", class: "btn btn-small btn-danger", testid: "table-delete",
            onclick: (e) => removeTable(t.name, e.target) }, "Delete")) },
      ], data, { testid: "tables-table", rowAttrs: (t) => ({ testid: "table-row", "data-name": t.name }),
        empty: "No tables yet. Upload a JSON, JSONL or CSV file below." }));
    } catch (e) {
      if (ctx.alive) replace(tablesBox, errorBox(e, "tables-error"));
    }
  }

  async function preview(name) {
    replace(previewBox, loading(`Reading ${name}…`));
    try {
      const t = await api(withQuery(`/api/tables/${encodeURIComponent(name)}`, { rows: 5 }));
      if (!ctx.alive) return;
      const cols = t.columns && t.columns.length ? t.columns : Object.keys((t.first_rows || [])[0] || {});
      replace(previewBox, h("div", { testid: "table-preview-rows" },
        h("h3", {}, `${t.name}: the first ${(t.first_rows || []).length} of ${fmtNum(t.rows)} rows`),
        table(cols.map((c) => ({ label: String(c), get: (r) => h("span", { class: "clip" }, pretty(r[c])) })),
          t.first_rows || [], { empty: "The table has no rows." })));
    } catch (e) {
      if (ctx.alive) replace(previewBox, errorBox(e, "table-preview-error"));
    }
  }

  async function removeTable(name, button) {
    if (!confirm(`Delete the table “${name}”? Workflows that look it up fail until it exists again.`)) return;
    button.disabled = true;
    try {
      await api(`/api/tables/${encodeURIComponent(name)}`, { method: "DELETE" });
      replace(previewBox);
      await loadTables();
    } catch (e) {
      button.disabled = false;
      tablesBox.prepend(errorBox(e, "table-delete-error"));
    }
  }

  const edit = ctx.query.get("edit");
  const editBot = ctx.query.get("editbot");
  await Promise.all([loadApps(), loadTables(), edit ? form.load(edit) : null, editBot ? bots.load(editBot) : null]);
}

function about(a) {
  const sp = specOf(a);
  if (a.kind === "router") {
    const acc = (a.metrics || {}).held_out_accuracy;
    return h("div", { testid: "router-about" },
      h("div", {}, "Routes: ", (sp.routes || []).map((r, i) => [i ? ", " : "", h("code", {}, r)])),
      h("div", {}, "Fallback: ", h("code", {}, sp.fallback || "–")),
      h("div", { class: "muted" }, "Held-out routing accuracy: ",
        h("span", { testid: "router-accuracy" }, typeof acc === "number" ? acc.toFixed(3) : "–")));
  }
  if (a.kind === "workflow") {
    const n = (sp.nodes || []).length;
    return h("div", { testid: "workflow-about" },
      sp.description ? h("div", {}, sp.description) : null,
      h("div", { class: "muted" }, `${n} node${n === 1 ? "" : "s"}`,
        Object.keys(sp.inputs || {}).length ? ` · inputs: ${Object.keys(sp.inputs).join(", ")}` : ""));
  }
  if (a.kind === "bot") return botAbout(a);
  return "–";
}

// ---------------------------------------------------------------------------- a workflow file

function flowForm(ctx, onPublished) {
  return yamlAppForm(ctx, {
    what: "workflow", prefix: "flow", modelPrefix: "flow:", title: "Create a workflow", open: true,
    checkUrl: "/api/apps/flows/check", publishUrl: "/api/apps/flows", onPublished,
    placeholder: "name: support\ninputs: [question]\nnodes:\n  - id: reply\n    type: answer\n    text: \"You asked: {{ question }}\"",
    replaceLabel: "Replace the published workflow of this name (a new version; its runs stay)",
    help: h("p", { class: "help" }, "Node types: llm, extract, retrieve, lookup, http, switch, check, answer. Templates like ",
      h("code", {}, "{{ question }}"), " or ", h("code", {}, "{{ row.first.city }}"), " use the inputs and earlier nodes by id. `modelmill apps flow create --help` documents every field."),
    checked: (r) => [
      h("p", {}, h("strong", {}, "No problems. "),
        `${r.nodes.length} node${r.nodes.length === 1 ? "" : "s"}; inputs: ${Object.keys(r.inputs || {}).join(", ") || "none"}; the answer comes from `,
        h("code", {}, r.answer), "."),
      flowGraph(r.nodes, { testid: "flow-check-graph" })],
    published: (app) => [`Published: call model “flow:${app.name}” at /v1/chat/completions, or `,
      h("a", { href: appHref(app.name), testid: "flow-open" }, "open it here to see its graph and run it"), "."],
  });
}

// ---------------------------------------------------------------------------- a router

const FALLBACK_CLASS = "(fallback)"; // the fallback's class in a router's metrics (the library's name)

/** The form field an API error names (error.param: a REST field, or the CLI flag's name). */
const ROUTER_PARAMS = {
  name: "name", NAME: "name", route: "routes", routes: "routes", route_data: "routes", weight: "routes",
  weights: "routes", fallback: "fallback", fallback_data: "fallback_data", threshold: "threshold",
  max_per_route: "max_per_route", seed: "seed",
};

/** The defaults of POST /api/apps/routers, read from the server's OpenAPI schema ({}: unknown). */
async function routerDefaults() {
  try {
    const doc = await api("/openapi.json");
    const props = (((doc.components || {}).schemas || {}).RouterRequest || {}).properties || {};
    return Object.fromEntries(Object.entries(props).filter(([, p]) => "default" in p).map(([k, p]) => [k, p.default]));
  } catch {
    return {}; // the fields are then left empty, and an empty field is not sent: the server's default applies
  }
}

const shortRef = (name, version) => (version ? `${name}@${String(version).slice(0, 8)}` : name);

/**
 * "Create a router": name, routes (adapters, each learning from its own training data or a chosen
 * dataset, with an optional weight), fallback, fallback data, threshold. POST /api/apps/routers
 * learns it in one request (tens of seconds): an elapsed-time bar while it runs, then the
 * held-out routing accuracy per class, or the error with its field marked.
 */
function routerForm(ctx, onCreated) {
  const name = h("input", { type: "text", id: "router-name", testid: "router-name", required: true, autocomplete: "off",
    spellcheck: "false", pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}", placeholder: "e.g. support" });
  const routesBox = h("div", { testid: "router-routes" }, loading("Loading adapters…"));
  const baseHint = h("div", { "aria-live": "polite" });
  const fallback = h("select", { id: "router-fallback", testid: "router-fallback", required: true },
    h("option", { value: "" }, "Loading…"));
  const fallbackData = h("select", { id: "router-fallback-data", testid: "router-fallback-data" },
    h("option", { value: "" }, "Loading…"));
  const threshold = h("input", { type: "number", id: "router-threshold", testid: "router-threshold",
    min: 0, max: 0.99, step: 0.05, inputmode: "decimal" });
  const maxPerRoute = h("input", { type: "number", id: "router-max-per-route", testid: "router-max-per-route",
    min: 10, max: 100000, step: 1 });
  const seed = h("input", { type: "number", id: "router-seed", testid: "router-seed", step: 1 });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "router-submit" }, "Learn and publish");
  const result = h("div", { testid: "router-result", "aria-live": "polite" });
  const fields = {}; // form field name -> its .field element, to mark the one an error names
  const field = (key, ...children) => (fields[key] = h("div", { class: "field" }, ...children));

  let rows = [];             // one per adapter: {a, pick, data, weight}
  let datasets = [];
  let fallbackTouched = false; // until the user picks a fallback, it follows the routes' base model
  let loaded = null;
  let busy = false;

  fallback.addEventListener("change", () => { fallbackTouched = true; checkBases(); });

  const picked = () => rows.filter((r) => r.pick.checked);

  /** Routes of two bases cannot share one engine: say so before the server does. */
  function checkBases() {
    const bases = new Map(picked().map((r) => [r.a.base_model, r.a.name]));
    const fb = fallback.selectedOptions[0];
    const fbBase = fb ? fb.dataset.base : "";
    const msgs = [];
    if (bases.size > 1) {
      msgs.push(`The routes are adapters of ${bases.size} base models (${[...bases.keys()].join(", ")}); a router's routes and fallback share one base, so one engine serves them all.`);
    } else if (bases.size === 1 && fbBase && !bases.has(fbBase)) {
      msgs.push(`The fallback ${fallback.value} is of base ${fbBase}, the routes of ${[...bases.keys()][0]}; choose a fallback of the same base.`);
    }
    replace(baseHint, msgs.length ? notice(msgs.join(" "), "warn", "router-base-hint") : null);
  }

  function onPick() {
    const first = picked()[0];
    if (first && !fallbackTouched && [...fallback.options].some((o) => o.value === first.a.base_model)) {
      fallback.value = first.a.base_model;
    }
    checkBases();
  }

  function datasetOptions(selected = "") {
    return datasets.map((d) => h("option", { value: d.name, selected: d.name === selected },
      `${d.name} (${d.kind}, ${fmtNum(d.num_records)} records)`));
  }

  async function load() {
    try {
      const [adapters, models, ds, defaults] = await Promise.all([
        api("/api/adapters"), api("/api/models"), api("/api/datasets"), routerDefaults()]);
      if (!ctx.alive) return;
      datasets = ds.data || [];
      rows = (adapters.data || []).map((a) => {
        const own = a.dataset ? `its training data (${shortRef(a.dataset, a.dataset_version)})` : "no training data recorded: pick a dataset";
        return {
          a,
          pick: h("input", { type: "checkbox", testid: "router-route", "data-name": a.name, value: a.name,
            "aria-label": `route to ${a.name}`, onchange: onPick }),
          data: h("select", { testid: "router-route-data", "data-name": a.name, "aria-label": `what ${a.name} learns from` },
            h("option", { value: "" }, own), datasetOptions()),
          weight: h("input", { type: "number", class: "narrow", testid: "router-route-weight", "data-name": a.name,
            min: 0.01, max: 100, step: "any", placeholder: "1", "aria-label": `weight of ${a.name}` }),
        };
      });
      replace(routesBox, rows.length ? table([
        { label: "Route", get: (r) => h("label", { class: "inline" }, r.pick, h("code", {}, r.a.name)) },
        { label: "Base model", get: (r) => r.a.base_model },
        { label: "Learns from", get: (r) => r.data },
        { label: "Weight", get: (r) => r.weight },
      ], rows, { testid: "router-routes-table", rowAttrs: (r) => ({ testid: "router-route-row", "data-name": r.a.name }) })
        : notice("No adapters yet. Train one on the Train page first: a router sends each request to one of your adapters.",
          "info", "router-no-adapters"));
      const option = (value, text, base) => h("option", { value, "data-base": base }, text);
      replace(fallback, option("", "— choose the model that answers the rest —", ""),
        h("optgroup", { label: "Base models" }, (models.data || []).map((m) => option(m.name, m.name, m.name))),
        rows.length ? h("optgroup", { label: "Adapters" },
          rows.map((r) => option(r.a.name, `${r.a.name} (adapter of ${r.a.base_model})`, r.a.base_model))) : null);
      replace(fallbackData, h("option", { value: "" }, "none"), datasetOptions());
      // the server's defaults, so that the form shows what an untouched field means
      const fill = (input, key) => { if (key in defaults && input.value === "") input.value = String(defaults[key]); };
      fill(threshold, "threshold");
      fill(maxPerRoute, "max_per_route");
      fill(seed, "seed");
      for (const input of [threshold, maxPerRoute, seed]) if (input.value === "") input.placeholder = "the server's default";
      submit.disabled = !rows.length;
    } catch (e) {
      if (ctx.alive) replace(routesBox, errorBox(e, "router-error"));
    }
  }

  function markInvalid(param) {
    for (const el of Object.values(fields)) el.classList.remove("invalid");
    const key = ROUTER_PARAMS[param];
    if (key && fields[key]) fields[key].classList.add("invalid");
  }

  function body() {
    const chosen = picked();
    const out = { name: name.value.trim(), routes: chosen.map((r) => r.a.name), fallback: fallback.value,
      fallback_data: fallbackData.value, route_data: {}, weights: {} };
    for (const r of chosen) {
      if (r.data.value) out.route_data[r.a.name] = r.data.value;
      if (r.weight.value !== "") out.weights[r.a.name] = Number(r.weight.value);
    }
    if (threshold.value !== "") out.threshold = Number(threshold.value);
    if (maxPerRoute.value !== "") out.max_per_route = Number(maxPerRoute.value);
    if (seed.value !== "") out.seed = Number(seed.value);
    return out;
  }

  /** About how many texts it embeds: each class's records, up to max_per_route (null: unknown). */
  function textCount(b) {
    const cap = b.max_per_route || Infinity;
    const byName = new Map(datasets.map((d) => [d.name, d]));
    let n = 0;
    for (const r of picked()) {
      const d = byName.get(b.route_data[r.a.name] || r.a.dataset);
      if (!d) return null;
      n += Math.min(cap, d.num_records || 0);
    }
    if (b.fallback_data) n += Math.min(cap, (byName.get(b.fallback_data) || {}).num_records || 0);
    return n;
  }

  async function onSubmit(e) {
    e.preventDefault();
    if (busy) return;
    markInvalid(null);
    if (!picked().length) {
      markInvalid("routes");
      replace(result, notice("Tick at least one route: the adapters requests can be sent to.", "warn", "router-status"));
      return;
    }
    if (!e.target.reportValidity()) return;
    const b = body();
    const n = textCount(b);
    const classes = b.routes.length + (b.fallback_data ? 1 : 0);
    busy = true;
    submit.disabled = true;
    const started = Date.now();
    const text = h("span", { class: "progress-text", testid: "router-progress-text" });
    const tick = () => {
      text.textContent = `Learning “${b.name}”… ${Math.round((Date.now() - started) / 1000)} s`;
    };
    tick();
    const timer = setInterval(tick, 1000);
    ctx.onLeave(() => clearInterval(timer));
    replace(result, h("div", { testid: "router-progress", role: "status" },
      h("div", { class: "progress" },
        h("div", { class: "progress-track indeterminate" }, h("div", { class: "progress-fill", style: "width: 30%" })), text),
      h("p", { class: "help" }, `Reading the last user message of ${n === null ? "each" : `about ${fmtNum(n)}`} example${n === 1 ? "" : "s"} of ${classes} class${classes === 1 ? "" : "es"}, `,
        "turning each into numbers with the MiniLM embedder, learning which class each belongs to, and scoring that on 20% of each class held out. ",
        "This takes tens of seconds (the first time also loads MiniLM). Nothing is stored until it is done; leaving this page does not stop it.")));
    try {
      const app = await api("/api/apps/routers", { method: "POST", json: b });
      if (!ctx.alive) return;
      replace(result, createdView(app));
      await onCreated();
    } catch (err) {
      if (!ctx.alive) return;
      markInvalid(err.param);
      replace(result, errorBox(err, "router-error"));
    } finally {
      clearInterval(timer);
      busy = false;
      submit.disabled = !rows.length;
    }
  }

  function createdView(app) {
    const acc = (app.metrics || {}).held_out_accuracy;
    return h("div", { class: "alert alert-ok", role: "status", testid: "router-created", "data-name": app.name },
      h("p", {}, h("strong", {}, "Published. "), "Call model “", h("code", {}, app.name), "” at /v1/chat/completions; ",
        "each answer says which route took it. Held-out routing accuracy: ",
        h("strong", { testid: "router-created-accuracy" }, typeof acc === "number" ? acc.toFixed(3) : "–"), "."),
      accuracyView(app),
      h("div", { class: "actions" },
        h("a", { class: "btn btn-small", href: appHref(app.name), testid: "router-open" }, "Try it on a text"),
        h("a", { class: "btn btn-small", href: `#/playground?models=${encodeURIComponent(app.name)}` }, "Chat with it")));
  }

  const el = h("details", { class: "card", testid: "router-form-card" },
    h("summary", { testid: "router-form-open" }, h("strong", {}, "Create a router")),
    h("form", { class: "router-form", testid: "router-form", onsubmit: onSubmit },
      h("p", { class: "help" }, "A router is one model id in front of several adapters: it reads each request and sends it to the adapter whose training data it looks most like, or to a fallback model. It learns this from the data itself, so there are no rules to write."),
      h("div", { class: "grid-2" },
        field("name", h("label", { for: "router-name" }, "Name"), name,
          h("p", { class: "help" }, "What callers send as ", h("code", {}, "model"), ". Letters, digits, . _ -; not the name of a model, adapter, deployment or another app.")),
        field("threshold", h("label", { for: "router-threshold" }, "Threshold"), threshold,
          h("p", { class: "help" }, "How sure (0 to 1) the router must be before it sends a request to a route; when it is less sure, the fallback answers. Higher sends more to the fallback."))),
      field("routes", h("strong", {}, "Routes"),
        h("p", { class: "help" }, "Tick the adapters a request can go to (all of one base model). Each learns what its requests look like from the data it was trained on; pick a dataset instead when that data is missing or unlike real requests. ",
          "A weight above 1 (e.g. 2) makes a route win more often when it is close; below 1, less often. Empty means 1."),
        routesBox, baseHint),
      h("div", { class: "grid-2" },
        field("fallback", h("label", { for: "router-fallback" }, "Fallback"), fallback,
          h("p", { class: "help" }, "The model that answers whatever no route takes: usually the base model the adapters were trained from. It must share the routes' base model.")),
        field("fallback_data", h("label", { for: "router-fallback-data" }, "Fallback data"), fallbackData,
          h("p", { class: "help" }, "General prompts that none of the routes should take (everyday questions, small talk). They are learned as a class of their own, so off-topic requests go to the fallback instead of the nearest route. Needed with a single route; recommended always."))),
      h("details", { class: "advanced" }, h("summary", {}, "More settings"),
        h("div", { class: "grid-2" },
          field("max_per_route", h("label", { for: "router-max-per-route" }, "Examples per class, at most"), maxPerRoute,
            h("p", { class: "help" }, "A sample of each class's data is read; more learns better and takes longer.")),
          field("seed", h("label", { for: "router-seed" }, "Seed"), seed,
            h("p", { class: "help" }, "Picks the sample and the held-out part: the same seed learns the same router.")))),
      h("div", { class: "actions" }, submit),
      result));
  el.addEventListener("toggle", () => {
    if (el.open && !loaded) loaded = load();
  });
  return el;
}

/** Held-out routing accuracy per class: what each class learned from, how many texts, how often right. */
function accuracyView(app) {
  const sp = specOf(app);
  const m = app.metrics || {};
  const perClass = m.held_out_per_class && typeof m.held_out_per_class === "object" ? Object.entries(m.held_out_per_class) : [];
  if (!perClass.length) return null;
  const label = (c) => (c === FALLBACK_CLASS ? ["fallback ", h("code", {}, sp.fallback || "–")] : h("code", {}, c));
  const weak = perClass.filter(([, v]) => typeof v === "number" && v < 0.8).map(([c]) => (c === FALLBACK_CLASS ? "the fallback" : c));
  const ng = m.ngram || {};
  return h("div", { testid: "router-accuracy-view" },
    table([
      { label: "Class", get: ([c]) => label(c) },
      { label: "Learned from", get: ([c]) => ((m.data || {})[c] ? h("code", {}, m.data[c]) : "–") },
      { label: "Examples", class: "num", get: ([c]) => fmtNum((m.texts || {})[c]) },
      { label: "Held-out accuracy", class: "num", get: ([, v]) => (typeof v === "number"
        ? h("span", { class: v < 0.8 ? "bad" : null, testid: "router-class-accuracy" }, v.toFixed(3)) : pretty(v)) },
    ], perClass, { testid: "router-per-class", rowAttrs: ([c]) => ({ testid: "router-class-row", "data-class": c }) }),
    h("p", { class: "help" }, "Held-out accuracy: of the 20% of each class's examples kept aside while learning, the share the router sent to that class."),
    weak.length ? notice(`Requests for ${weak.join(", ")} are often sent elsewhere: their data looks like another class's. Give them more, or more distinct, data (“Learns from”).`, "warn", "router-weak") : null,
    typeof ng.threshold === "number"
      ? h("p", { class: "help", testid: "router-ngram" }, `A fast character n-gram classifier answers alone when it is at least ${fmtNum(ng.threshold, 2)} sure: on ${Math.round((ng.held_out_coverage || 0) * 100)}% of the held-out examples, ${fmtNum(ng.held_out_accuracy_when_sure)} of those right. MiniLM chooses for the rest.`)
      : h("p", { class: "help", testid: "router-ngram" }, "The fast n-gram classifier was not sure enough on the held-out examples, so MiniLM chooses every route (tens of milliseconds a request on a CPU)."));
}

/** "Try it": which model a text goes to, and how sure the router is (POST /api/apps/{name}/route). */
function routeTry(app) {
  const sp = specOf(app);
  const routes = sp.routes || [];
  const text = h("textarea", { id: "route-text", testid: "route-text", rows: 3, required: true, maxlength: 100000,
    placeholder: "A request as a user would send it (the last user message of a chat)" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "route-submit" }, "Which model answers?");
  const out = h("div", { testid: "route-result-box", "aria-live": "polite" });

  function why(c) {
    const sure = `${(c.confidence * 100).toFixed(1)}%`;
    const thr = typeof sp.threshold === "number" ? `${Math.round(sp.threshold * 100)}%` : "the threshold";
    if (!routes.includes(c.route)) {
      return `It looks most like the fallback's general prompts${sp.fallback_data ? `, ${sp.fallback_data}` : ""} (${sure} sure): the fallback answers.`;
    }
    if (c.model !== c.route) {
      return `It looks most like route ${c.route}, but only ${sure} sure, under the threshold of ${thr}: the fallback answers.`;
    }
    return `It looks like the data ${c.route} learned from (${sure} sure; a route needs at least ${thr}).`;
  }

  async function onSubmit(e) {
    e.preventDefault();
    if (!text.value.trim()) {
      replace(out, notice("Type a text first.", "warn", "route-error"));
      return;
    }
    submit.disabled = true;
    replace(out, loading("Choosing… (the first request after a restart loads MiniLM)"));
    try {
      const c = await api(`/api/apps/${encodeURIComponent(app.name)}/route`, { method: "POST", json: { text: text.value } });
      const pct = Math.max(0, Math.min(100, c.confidence * 100));
      replace(out, h("div", { class: "answer-box", testid: "route-result", "data-model": c.model, "data-route": c.route },
        h("p", {}, "Answered by ", h("code", { testid: "route-model" }, c.model),
          c.model === sp.fallback ? h("span", { class: "muted" }, " (the fallback)") : null,
          // `by` (which classifier chose) is in /v1 responses' route; shown here once /route returns it too
          c.by ? h("span", { class: "muted small", testid: "route-by" }, ` · chosen by ${c.by === "ngram" ? "the n-gram classifier" : "MiniLM"}`) : null),
        h("div", { class: "progress" },
          h("div", { class: "progress-track", title: `confidence ${pct.toFixed(1)}%` },
            h("div", { class: "progress-fill", style: `width: ${pct.toFixed(1)}%` })),
          h("span", { class: "progress-text", testid: "route-confidence" }, `${pct.toFixed(1)}% sure`)),
        h("p", { class: "help", testid: "route-why" }, why(c))));
    } catch (err) {
      replace(out, errorBox(err, "route-error"));
    } finally {
      submit.disabled = false;
    }
  }

  const form = h("form", { testid: "route-form", onsubmit: onSubmit },
    h("div", { class: "field" }, h("label", { for: "route-text" }, "Text"), text,
      h("p", { class: "help" }, "Nothing is generated: this only shows which model would answer it. Ctrl+Enter sends.")),
    h("div", { class: "actions" }, submit), out);
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  return h("div", { class: "card", testid: "route-try" }, h("h2", {}, "Try it"), form);
}

// ---------------------------------------------------------------------------- tables

function tableUpload(onStored) {
  const name = h("input", { type: "text", id: "table-name", testid: "table-name", autocomplete: "off",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", placeholder: "from the file name" });
  const file = h("input", { type: "file", id: "table-file", testid: "table-file", required: true, accept: ".json,.jsonl,.csv" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "table-submit" }, "Upload");
  const result = h("div", { "aria-live": "polite" });
  file.addEventListener("change", () => {
    if (file.files[0]) name.placeholder = nameFromFile(file.files[0].name) || "table";
  });

  async function onSubmit(e) {
    e.preventDefault();
    const f = file.files[0];
    if (!f) {
      replace(result, notice("Choose a file first.", "warn", "table-status"));
      return;
    }
    const tableName = name.value.trim() || nameFromFile(f.name);
    submit.disabled = true;
    replace(result, loading(`Reading ${f.name}…`));
    try {
      const form = new FormData();
      form.append("name", tableName);
      form.append("file", f);
      const t = await api("/api/tables", { method: "POST", form });
      replace(result, notice(`Stored table “${t.name}”: ${fmtNum(t.rows)} rows, columns ${(t.columns || []).join(", ")}.`, "ok", "table-status"));
      file.value = "";
      name.value = "";
      name.placeholder = "from the file name";
      await onStored();
    } catch (err) {
      replace(result, errorBox(err, "table-error"));
    } finally {
      submit.disabled = false;
    }
  }

  return h("form", { testid: "table-form", onsubmit: onSubmit },
    h("h3", {}, "Upload a table"),
    h("div", { class: "grid-2" },
      h("div", { class: "field" }, h("label", { for: "table-file" }, "File"), file,
        h("p", { class: "help" }, "JSON (a list of objects), JSONL or CSV with a header line.")),
      h("div", { class: "field" }, h("label", { for: "table-name" }, "Name"), name,
        h("p", { class: "help" }, "What lookup nodes name in `table:`."))),
    h("div", { class: "actions" }, submit), result);
}

// ============================================================================ one app

export async function appPage(ctx) {
  const name = ctx.rest[0];
  const body = h("div", {}, loading(`Loading ${name}…`));
  ctx.main.append(h("section", { class: "page", testid: "app-page", "data-name": name },
    h("p", { class: "crumbs" }, h("a", { href: "#/apps" }, "← All apps")), body));
  let app;
  try {
    app = await api(`/api/apps/${encodeURIComponent(name)}`);
  } catch (e) {
    if (ctx.alive) replace(body, errorBox(e, "app-error"));
    return;
  }
  if (!ctx.alive) return;
  if (app.kind === "bot") {
    await botDetail(ctx, app, body);
    return;
  }
  if (app.kind !== "workflow") {
    replace(body, routerDetail(app));
    return;
  }
  const sp = specOf(app);
  const nodes = sp.nodes || [];
  const inputs = sp.inputs || {};

  const runBox = h("div", { testid: "run-result-box", "aria-live": "polite" });
  const runsBox = h("div", { testid: "runs-list" }, loading());
  replace(body,
    h("div", { class: "card" },
      h("div", { class: "card-head" }, h("h1", {}, h("code", { testid: "app-model-id" }, modelId(app))),
        h("div", { class: "inline" },
          h("a", { class: "btn btn-small", href: withQuery("#/apps", { edit: app.name }), testid: "flow-edit" }, "Edit a new version"),
          h("a", { class: "btn btn-small", href: `#/playground?models=${encodeURIComponent(modelId(app))}` }, "Chat with it"))),
      sp.description ? h("p", { class: "lead", testid: "app-description" }, sp.description) : null,
      h("dl", { class: "facts", testid: "app-facts" },
        h("dt", {}, "Inputs"), h("dd", {}, Object.keys(inputs).join(", ") || "none"),
        h("dt", {}, "Answer from"), h("dd", {}, sp.answer ? h("code", {}, sp.answer) : "–"),
        h("dt", {}, "Nodes"), h("dd", {}, fmtNum(nodes.length)),
        sp.source ? [h("dt", {}, "File"), h("dd", {}, h("code", {}, sp.source))] : null,
        h("dt", {}, "Updated"), h("dd", {}, fmtTime(app.updated_at || app.created_at)))),
    h("div", { class: "card", testid: "flow-graph-card" },
      h("h2", {}, "How it runs"),
      h("p", { class: "help" }, "Each box is a node (id, type, model); an arrow points to a node that runs after the one it leaves. Labels on a switch's arrows name the case that runs that branch."),
      flowGraph(nodes, { testid: "flow-graph" }),
      sp.yaml ? h("details", {}, h("summary", {}, "The workflow file"), h("pre", { class: "code", testid: "flow-yaml-shown" }, sp.yaml)) : null),
    h("div", { class: "card" }, h("h2", {}, "Run it"), runForm(app, inputs, runBox, loadRuns), runBox),
    h("div", { class: "card" }, h("h2", {}, "Recent runs"), runsBox));

  async function loadRuns() {
    try {
      const { data } = await api(withQuery(`/api/apps/${encodeURIComponent(app.name)}/runs`, { limit: 20 }));
      if (!ctx.alive) return;
      const open = ctx.query.get("run");
      replace(runsBox, table([
        { label: "When", get: (r) => h("a", { href: appHref(app.name, { run: r.id }), testid: "run-link" }, fmtTime(r.created_at)) },
        { label: "Status", get: (r) => badge(statusKey(r.status)) },
        { label: "Inputs", get: (r) => h("span", { class: "clip" }, shortInputs(r.inputs)) },
        { label: "Answer", get: (r) => h("span", { class: "clip" }, r.status === "failed" ? r.error || "–" : (r.output || {}).text || "–") },
        { label: "ms", get: (r) => fmtNum(r.ms, 0), class: "num" },
        { label: "Run", get: (r) => h("code", { class: "small" }, r.id) },
      ], data, { testid: "runs-table", empty: "No runs yet: run it above.",
        rowAttrs: (r) => ({ testid: "run-row", "data-id": r.id, "data-status": r.status,
          class: `clickable${r.id === open ? " selected" : ""}`,
          onclick: (e) => { if (e.target.tagName !== "A") location.hash = appHref(app.name, { run: r.id }); } }) }));
    } catch (e) {
      if (ctx.alive) replace(runsBox, errorBox(e, "runs-error"));
    }
  }

  const runId = ctx.query.get("run");
  const shown = runId ? showRun(ctx, app, runId, runBox) : null;
  await Promise.all([loadRuns(), shown]);
}

function shortInputs(inputs) {
  const shown = Object.entries(inputs || {}).filter(([k]) => k !== "messages");
  return shown.map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" · ") || "–";
}

async function showRun(ctx, app, runId, box) {
  replace(box, loading(`Loading run ${runId}…`));
  try {
    const run = await api(`/api/apps/runs/${encodeURIComponent(runId)}`);
    if (!ctx.alive) return;
    replace(box, runView(run, specOf(app).nodes || []));
    box.scrollIntoView({ block: "start" });
  } catch (e) {
    if (ctx.alive) replace(box, errorBox(e, "run-error"));
  }
}

function routerDetail(app) {
  const sp = specOf(app);
  const m = app.metrics || {};
  const weights = Object.entries(sp.weights || {});
  const routeData = Object.entries(sp.route_data || {});
  return [h("div", { class: "card", testid: "router-detail" },
    h("div", { class: "card-head" }, h("h1", {}, h("code", { testid: "app-model-id" }, modelId(app))),
      h("a", { class: "btn btn-small", href: `#/playground?models=${encodeURIComponent(app.name)}` }, "Chat with it")),
    h("p", { class: "lead" }, `A ${app.kind}: each request goes to the route its text is most like, or to the fallback.`),
    h("dl", { class: "facts" },
      h("dt", {}, "Routes"), h("dd", {}, (sp.routes || []).join(", ") || "–"),
      routeData.length ? [h("dt", {}, "Learned from"), h("dd", {}, routeData.map(([r, d]) => `${r}: ${d}`).join(", "))] : null,
      weights.length ? [h("dt", {}, "Weights"), h("dd", {}, weights.map(([r, w]) => `${r} × ${w}`).join(", "))] : null,
      h("dt", {}, "Fallback"), h("dd", {}, sp.fallback || "–"),
      h("dt", {}, "Fallback data"), h("dd", {}, sp.fallback_data || "none"),
      h("dt", {}, "Threshold"), h("dd", {}, fmtNum(sp.threshold)),
      h("dt", {}, "Held-out routing accuracy"), h("dd", { testid: "router-accuracy" },
        typeof m.held_out_accuracy === "number" ? m.held_out_accuracy.toFixed(3) : "–"),
      h("dt", {}, "Base model"), h("dd", {}, app.base_model || "–"),
      h("dt", {}, "Updated"), h("dd", {}, fmtTime(app.updated_at || app.created_at))),
    accuracyView(app)),
  routeTry(app)];
}

// ---------------------------------------------------------------------------- running

function runForm(app, inputs, box, onRan) {
  const fields = Object.entries(inputs).map(([k, spec]) => {
    const id = `run-input-${k}`;
    const sp = spec && typeof spec === "object" ? spec : {};
    const required = sp.required !== false;
    const input = h("input", { type: "text", id, testid: "run-input", "data-name": k, autocomplete: "off",
      placeholder: sp.default !== null && sp.default !== undefined ? `default: ${pretty(sp.default)}` : "" });
    return { k, input, el: h("div", { class: "field" },
      h("label", { for: id }, k, required ? "" : h("span", { class: "muted" }, " (optional)")), input,
      sp.description ? h("p", { class: "help" }, sp.description) : null) };
  });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "run-submit" }, "Run");

  async function onSubmit(e) {
    e.preventDefault();
    // an empty field is left out, so the workflow's default applies (or the server names what is missing)
    const given = {};
    for (const f of fields) if (f.input.value !== "") given[f.k] = f.input.value;
    submit.disabled = true;
    replace(box, loading("Running… (the first call of a model loads it)"));
    try {
      const run = await api(`/api/apps/${encodeURIComponent(app.name)}/run`, { method: "POST", json: { inputs: given } });
      replace(box, runView(run, specOf(app).nodes || []));
    } catch (err) {
      // a failing node (424) names the stored run: show its trace under the error
      const m = /\(run (run-[A-Za-z0-9]+)\)/.exec(err.message || "");
      replace(box, errorBox(err, "run-error"));
      if (m) {
        try {
          box.append(runView(await api(`/api/apps/runs/${encodeURIComponent(m[1])}`), specOf(app).nodes || []));
        } catch (e2) {
          box.append(errorBox(e2, "run-error"));
        }
      }
    } finally {
      submit.disabled = false;
      await onRan();
    }
  }

  return h("form", { testid: "run-form", onsubmit: onSubmit },
    fields.length ? h("div", { class: "grid-2" }, fields.map((f) => f.el))
      : h("p", { class: "muted" }, "This workflow takes no inputs."),
    h("div", { class: "actions" }, submit));
}

/** One run: its answer and status, the graph coloured by each node's status, a table per node. */
function runView(run, nodes) {
  const trace = run.trace || [];
  const byNode = Object.fromEntries(trace.map((t) => [t.node, t.status]));
  const usage = run.usage || {};
  const tokens = usage.total_tokens ?? trace.reduce((n, t) => n + ((t.tokens || {}).prompt || 0) + ((t.tokens || {}).completion || 0), 0);
  const cites = (run.output || {}).citations || [];
  return h("div", { testid: "run-result", "data-run": run.id, "data-status": run.status },
    h("div", { class: "card-head" },
      h("h3", {}, "Run ", h("code", { testid: "run-id" }, run.id)),
      h("div", { class: "inline" }, h("span", { testid: "run-status", "data-status": run.status }, badge(statusKey(run.status))),
        h("span", { class: "muted small" }, `${fmtNum(run.ms, 0)} ms · ${fmtNum(tokens)} tokens`,
          run.created_at ? ` · ${fmtTime(run.created_at)}` : ""))),
    run.status === "flagged" ? notice("The answer did not pass its check node: it is flagged, not hidden. Read it with care.", "warn", "run-flagged") : null,
    run.error ? h("div", { class: "alert alert-error", testid: "run-failure" }, h("strong", {}, "Failed: "), run.error) : null,
    run.output ? h("div", { class: "answer-box" },
      h("div", { class: "muted small" }, "Answer"),
      h("div", { class: "answer-text", testid: "run-answer" }, run.output.text || h("span", { class: "muted" }, "(empty)")),
      cites.length ? h("ol", { class: "small", testid: "run-citations" }, cites.map((c) => h("li", {},
        [c.document || c.doc || c.kb, c.section].filter(Boolean).join(" · ") || pretty(c)))) : null) : null,
    h("div", { testid: "run-trace" },
      h("h3", {}, "Trace"),
      flowGraph(nodes.length ? nodes : trace.map((t) => ({ id: t.node, type: t.type, after: [] })),
        { status: byNode, testid: "trace-graph" }),
      legend(),
      traceTable(trace)));
}

function legend() {
  return h("p", { class: "flow-legend small", testid: "trace-legend" },
    STATUSES.map((st) => h("span", { class: `flow-key status-${statusKey(st)}` }, st)));
}

function traceTable(trace) {
  const tok = (t) => (t.tokens ? `${fmtNum(t.tokens.prompt || 0)} in · ${fmtNum(t.tokens.completion || 0)} out` : "–");
  const more = (t) => {
    const parts = [
      t.error ? ["Error", t.error] : null,
      t.inputs !== undefined ? ["Inputs", t.inputs] : null,
      t.output !== undefined ? ["Output", t.output] : null,
      t.attempts !== undefined ? ["Attempts", t.attempts] : null,
      t.warning ? ["Warning", t.warning] : null,
    ].filter(Boolean);
    if (!parts.length) return h("span", { class: "muted" }, "–");
    return h("details", { testid: "trace-details" }, h("summary", {}, parts.map((p) => p[0].toLowerCase()).join(" · ")),
      parts.map(([label, v]) => [h("div", { class: "muted small" }, label),
        h("pre", { class: `code trace-pre${label === "Error" ? " bad" : ""}` }, pretty(v))]));
  };
  return table([
    { label: "Node", get: (t) => h("code", {}, t.node) },
    { label: "Type", get: (t) => t.type },
    { label: "Status", get: (t) => badge(statusKey(t.status)) },
    { label: "ms", get: (t) => fmtNum(t.ms, 0), class: "num" },
    { label: "Tokens", get: tok, class: "nowrap" },
    { label: "Details", get: more },
  ], trace, { testid: "trace-table", rowAttrs: (t) => ({ testid: "trace-row", "data-node": t.node, "data-status": t.status }),
    empty: "This run has no trace." });
}

// ============================================================================ the graph

const BOX_W = 176;
const BOX_H = 54;
const GAP_X = 124; // room for an arrow and a case label between layers
const GAP_Y = 22;
const PAD = 14;
let graphCount = 0; // marker ids must be unique in the document

function clipText(text, n) {
  const t = String(text ?? "");
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

/**
 * Layers from dependencies: a node with no `after` is in layer 0, any other one layer past its
 * deepest upstream node. Within a layer, nodes sit near the middle of their upstream nodes
 * (file order breaks ties), which keeps most arrows short and uncrossed.
 */
export function layoutFlow(nodes) {
  const byId = new Map(nodes.map((n, i) => [n.id, { ...n, order: i }]));
  const layer = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (layer.has(id)) return layer.get(id);
    if (visiting.has(id)) return 0; // a cycle, which the server refuses anyway: draw rather than loop
    visiting.add(id);
    const ups = (byId.get(id).after || []).filter((u) => byId.has(u));
    const d = ups.length ? 1 + Math.max(...ups.map(depth)) : 0;
    layer.set(id, d);
    return d;
  };
  for (const id of byId.keys()) depth(id);

  const layers = [];
  for (const [id, d] of layer) (layers[d] = layers[d] || []).push(byId.get(id));
  const row = new Map();
  for (const col of layers) {
    if (!col) continue;
    const key = (n) => {
      const ups = (n.after || []).filter((u) => row.has(u)).map((u) => row.get(u));
      return ups.length ? ups.reduce((a, b) => a + b, 0) / ups.length : n.order;
    };
    col.sort((a, b) => key(a) - key(b) || a.order - b.order);
    col.forEach((n, i) => row.set(n.id, i));
  }
  const tallest = Math.max(1, ...layers.map((c) => (c ? c.length : 0)));
  const height = PAD * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y;
  const pos = new Map();
  layers.forEach((col, d) => {
    if (!col) return;
    const colH = col.length * BOX_H + (col.length - 1) * GAP_Y;
    const top = (height - colH) / 2;
    col.forEach((n, i) => pos.set(n.id, { x: PAD + d * (BOX_W + GAP_X), y: top + i * (BOX_H + GAP_Y), layer: d }));
  });
  const width = PAD * 2 + layers.length * BOX_W + Math.max(0, layers.length - 1) * GAP_X;
  return { pos, width: Math.max(width, BOX_W + PAD * 2), height, byId };
}

/** The case labels under which switch `sw` runs `target` ("default" included). */
function caseLabels(sw, target) {
  if (!sw || sw.type !== "switch") return [];
  const ids = (v) => (v === null || v === undefined ? [] : Array.isArray(v) ? v : [v]).map(String);
  const out = Object.entries(sw.cases || {}).filter(([, v]) => ids(v).includes(target)).map(([label]) => label);
  if (ids(sw.default).includes(target)) out.push("default");
  return out;
}

function bezier(p0, p1, p2, p3, t) {
  const u = 1 - t;
  return u * u * u * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t * t * t * p3;
}

/**
 * A workflow outline [{id, type, after, model?, cases?, default?}] drawn as SVG: boxes in layers,
 * an arrow per edge, a switch's arrows labelled with their case. `status` maps node id -> a trace
 * status, which colours each box (class status-ok, status-skipped, status-failed, status-not_run).
 */
export function flowGraph(nodes, { status = null, testid = "flow-graph" } = {}) {
  if (!nodes || !nodes.length) return h("p", { class: "muted", testid: `${testid}-empty` }, "No nodes to draw.");
  const { pos, width, height, byId } = layoutFlow(nodes);
  const marker = `flow-arrow-${++graphCount}`;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, class: "flow-graph", role: "img", testid,
    "data-nodes": nodes.length, "aria-label": `Workflow graph: ${nodes.length} nodes` },
  s("defs", {}, s("marker", { id: marker, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse" }, s("path", { d: "M0,0L10,5L0,10z", class: "flow-arrowhead" }))));

  const edges = s("g", { class: "flow-edges" });
  const labels = s("g", { class: "flow-labels" });
  for (const n of byId.values()) {
    const b = pos.get(n.id);
    for (const up of n.after || []) {
      const a = pos.get(up);
      if (!a) continue;
      const [x1, y1, x2, y2] = [a.x + BOX_W, a.y + BOX_H / 2, b.x, b.y + BOX_H / 2];
      const mx = (x1 + x2) / 2;
      const from = byId.get(up);
      const cases = caseLabels(from, n.id);
      // in a trace, an arrow the run did not take (either end skipped or not reached) is drawn faint
      const idle = status && [status[up], status[n.id]].some((x) => x !== "ok" && x !== "failed");
      edges.append(s("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 1},${y2}`,
        class: `flow-edge${cases.length ? " flow-edge-case" : ""}${idle ? " flow-edge-idle" : ""}`, "marker-end": `url(#${marker})`,
        testid: "flow-edge", "data-from": up, "data-to": n.id },
      s("title", {}, cases.length ? `${up} → ${n.id} (case ${cases.join(", ")})` : `${up} → ${n.id}`)));
      if (cases.length) {
        // in the first gap after the switch, where no other box can sit on it
        const t = Math.min(0.5, (GAP_X / 2) / Math.max(1, x2 - x1));
        const lx = bezier(x1, mx, mx, x2, t);
        const ly = bezier(y1, y1, y2, y2, t);
        labels.append(s("text", { x: lx, y: ly - 4, "text-anchor": "middle", class: "flow-edge-label",
          testid: "flow-edge-label", "data-from": up, "data-to": n.id }, clipText(cases.join(" / "), 18)));
      }
    }
  }
  const boxes = s("g", { class: "flow-nodes" });
  for (const n of byId.values()) {
    const p = pos.get(n.id);
    const st = status ? statusKey(status[n.id]) : null;
    const sub = [n.type, n.model].filter(Boolean).join(" · ");
    boxes.append(s("g", { class: `flow-node type-${String(n.type).replace(/[^a-z]/g, "")}${st ? ` status-${st}` : ""}`,
      transform: `translate(${p.x},${p.y})`, testid: "flow-node", "data-node": n.id, "data-type": n.type,
      "data-status": status ? status[n.id] || "none" : null },
    s("title", {}, [`${n.id} (${n.type})`, n.model ? `model ${n.model}` : null, n.line ? `line ${n.line}` : null,
      status ? `status: ${status[n.id] || "—"}` : null].filter(Boolean).join("\n")),
    s("rect", { width: BOX_W, height: BOX_H, rx: 8, ry: 8 }),
    s("text", { x: 12, y: 22, class: "flow-node-id" }, clipText(n.id, 20)),
    s("text", { x: 12, y: 41, class: "flow-node-type" }, clipText(sub, 26))));
  }
  svg.append(edges, boxes, labels);
  return h("div", { class: "flow-graph-wrap" }, svg);
}
