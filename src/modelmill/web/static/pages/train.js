// Train: a form built from the server's training schema (GET /api/schema/train?method=M; the
// method select redraws it with that method's fields and datasets), so every field,
// default and help text is the one the CLI has; nothing here repeats a default. Only the values
// the user changed are sent, which keeps the job's spec short and lets server-side defaults that
// depend on other fields (learning rate per method, say) still apply.

import { api, withQuery } from "../api.js";
import { errorBox, h, loading, notice, replace } from "../dom.js";

const PINNED = ["base", "method", "data", "name", "from_adapter"]; // always shown first
const SENT = ["base", "data", "name", "from_adapter"]; // sent whenever set (the method: when not the default)

function inputKind(f) {
  const t = String(f.type || "").toLowerCase();
  if (f.choices && f.choices.length) return "select";
  if (t === "bool" || t === "boolean") return "bool";
  if (t === "int" || t === "integer") return "int";
  if (t === "float" || t === "number") return "float";
  return "text";
}

function label(name) {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export async function trainPage(ctx) {
  const box = h("div", {}, loading("Loading the training settings…"));
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Train a model"),
      h("p", { class: "lead" }, "Pick a base model and a dataset; the defaults are sensible for a first run. The job runs in the background and you can watch it on the next page.")),
    box));

  const [models, datasets, adapters] = await Promise.allSettled([
    api("/api/models"), api("/api/datasets"), api("/api/adapters")]);
  if (!ctx.alive) return;
  // what the user picked survives a change of method, which redraws the form with that method's fields
  const picked = { base: ctx.query.get("base"), data: (ctx.query.get("data") || "").split("@")[0],
    name: "", from_adapter: ctx.query.get("from") || "" };
  await drawForm(ctx, box, ctx.query.get("method") || "lora", picked, models, datasets, adapters);
}

async function drawForm(ctx, box, method, picked, models, datasets, adapters) {
  let schema;
  try {
    schema = await api(withQuery("/api/schema/train", { method }));
  } catch (err) {
    if (ctx.alive) replace(box, errorBox(err, "train-schema-error"));
    return;
  }
  if (!ctx.alive) return;
  const fields = schema.fields || [];
  const methods = schema.methods || [{ name: "lora", summary: "", data_kinds: ["chat", "classification"] }];
  const kinds = (methods.find((m) => m.name === method) || methods[0]).data_kinds;
  const modelNames = models.status === "fulfilled" ? models.value.data.map((m) => m.name) : [];
  const trainable = datasets.status === "fulfilled"
    ? datasets.value.data.filter((d) => kinds.includes(d.kind)) : [];
  const allAdapters = adapters.status === "fulfilled" ? adapters.value.data : [];

  const byName = Object.fromEntries(fields.map((f) => [f.name, f]));
  const inputs = {}; // field name -> {field, el, read()}
  const problems = [];
  if (models.status === "rejected") problems.push(errorBox(models.reason));
  else if (!modelNames.length) problems.push(notice("No base models are registered. Add one with `modelmill models add NAME PATH`.", "warn"));
  if (datasets.status === "rejected") problems.push(errorBox(datasets.reason));
  else if (!trainable.length) {
    problems.push(h("div", { class: "alert alert-warn", testid: "train-no-data" },
      `No ${kinds.join(" or ")} dataset yet for ${method}. `,
      h("a", { href: "#/datasets" }, "Upload one first"), "."));
  }

  // ---- the pinned fields: selects fed by the registry instead of free text
  const wantBase = picked.base || (byName.base && byName.base.default);
  const baseSelect = h("select", { id: "field-base", testid: "field-base", required: true },
    modelNames.map((n) => h("option", { value: n, selected: n === wantBase }, n)));
  const methodSelect = h("select", { id: "field-method", testid: "field-method" },
    methods.map((m) => h("option", { value: m.name, selected: m.name === method }, `${m.name}: ${m.summary}`)));
  const dataSelect = h("select", { id: "field-data", testid: "field-data", required: true },
    h("option", { value: "", disabled: true, selected: !trainable.some((d) => d.name === picked.data) }, "Choose a dataset…"),
    datasetOptions(trainable, picked.data));
  const nameInput = h("input", { id: "field-name", testid: "field-name", type: "text", autocomplete: "off",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", placeholder: "automatic: dataset-method", value: picked.name });
  // start from an adapter of the chosen base (DPO after SFT, SFT after CPT), or from fresh weights
  const fromSelect = h("select", { id: "field-from_adapter", testid: "field-from_adapter" });
  const fillFrom = () => replace(fromSelect, h("option", { value: "" }, "fresh weights"),
    allAdapters.filter((a) => a.base_model === baseSelect.value).map((a) => h("option", {
      value: a.name, selected: a.name === picked.from_adapter }, `${a.name} (${a.method}, ${a.dataset})`)));
  fillFrom();
  baseSelect.addEventListener("change", fillFrom);
  inputs.base = { field: byName.base || { name: "base" }, el: baseSelect, read: () => baseSelect.value };
  inputs.method = { field: byName.method || { name: "method", default: "lora" }, el: methodSelect, read: () => methodSelect.value };
  inputs.data = { field: byName.data || { name: "data" }, el: dataSelect, read: () => dataSelect.value };
  inputs.name = { field: byName.name || { name: "name" }, el: nameInput, read: () => nameInput.value.trim() };
  if (byName.from_adapter) inputs.from_adapter = { field: byName.from_adapter, el: fromSelect, read: () => fromSelect.value };
  methodSelect.addEventListener("change", () => {
    Object.assign(picked, { base: baseSelect.value, data: dataSelect.value, name: nameInput.value,
      from_adapter: fromSelect.value });
    drawForm(ctx, box, methodSelect.value, picked, models, datasets, adapters);
  });

  const basics = [];
  const advanced = [];
  for (const name of PINNED) {
    if (!inputs[name]) continue;
    const f = byName[name] || { name, help: "" };
    basics.push(fieldRow(f, inputs[name].el));
  }
  for (const f of fields) {
    if (PINNED.includes(f.name)) continue;
    // held-out and general data: a choice among the datasets, like the training data (sent only when chosen)
    const made = f.name === "eval_data" ? heldOutSelect(f, trainable)
      : f.name === "general_data" ? heldOutSelect(f, (datasets.value?.data || []).filter((d) => d.kind === "text" || d.kind === "chat"))
        : makeInput(f);
    inputs[f.name] = made;
    (f.advanced ? advanced : basics).push(fieldRow(f, made.el, made.kind === "bool"));
  }

  const errorArea = h("div", { testid: "train-error-box", "aria-live": "assertive" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "train-submit",
    disabled: !modelNames.length || !trainable.length }, "Start training");

  async function onSubmit(e) {
    e.preventDefault();
    replace(errorArea);
    for (const el of ctx.main.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
    const config = {};
    for (const [name, inp] of Object.entries(inputs)) {
      const value = inp.read();
      if (name === "method") { // each method's schema has itself as the default: compare with SFT's
        if (value !== "lora") config.method = value;
        continue;
      }
      if (SENT.includes(name)) {
        if (value !== "") config[name] = value;
        continue;
      }
      if (value === undefined) continue; // an empty number box means "keep the default"
      if (!sameValue(value, inp.field.default)) config[name] = value;
    }
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      const job = await api("/api/jobs", { method: "POST", json: { kind: "train", config } });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (!ctx.alive) return;
      replace(errorArea, h("div", { class: "alert alert-error", role: "alert", testid: "train-error" },
        h("strong", {}, "The job was not started. "), err.message,
        (err.details || []).some((d) => d.line) ? h("ul", {}, err.details.filter((d) => d.line).map((d) => h("li", {}, [d.line && `line ${d.line}`, d.field, d.message].filter(Boolean).join(": ")))) : null));
      markInvalid(ctx.main, err.param);
      submit.disabled = false;
      submit.textContent = "Start training";
    }
  }

  replace(box, problems,
    h("form", { class: "card train-form", testid: "train-form", "data-method": method, onsubmit: onSubmit },
      h("div", { class: "form-grid" }, basics),
      advanced.length ? h("details", { class: "advanced", testid: "advanced-settings" },
        h("summary", { testid: "advanced-toggle" }, `Advanced settings (${advanced.length})`),
        h("p", { class: "help" }, "Leave these alone for a first run; the defaults adapt to the model and the data."),
        h("div", { class: "form-grid" }, advanced)) : null,
      errorArea,
      h("div", { class: "actions" }, submit,
        h("a", { class: "btn btn-ghost", href: withQuery("#/jobs", {}) }, "See running jobs"))));
}

function datasetOptions(datasets, selected) {
  return datasets.map((d) => h("option", { value: d.name, selected: d.name === selected },
    `${d.name} (${d.kind}, ${d.num_records} records)`));
}

function heldOutSelect(f, datasets) {
  const el = h("select", { id: `field-${f.name}`, name: f.name, testid: `field-${f.name}` },
    h("option", { value: "", selected: true }, "none"), datasetOptions(datasets, ""));
  return { field: f, kind: "select", el, read: () => el.value };
}

function makeInput(f) {
  const kind = inputKind(f);
  const id = `field-${f.name}`;
  const common = { id, name: f.name, testid: id };
  if (kind === "bool") {
    const el = h("input", { ...common, type: "checkbox", checked: Boolean(f.default) });
    return { field: f, kind, el, read: () => el.checked };
  }
  if (kind === "select") {
    const el = h("select", common, f.choices.map((c) => h("option", { value: String(c), selected: c === f.default }, String(c))));
    // choices can be numbers; send them back with the type they came in
    return { field: f, kind, el, read: () => f.choices.find((c) => String(c) === el.value) ?? el.value };
  }
  if (kind === "int" || kind === "float") {
    const el = h("input", { ...common, type: "number", step: kind === "int" ? "1" : "any", inputmode: kind === "int" ? "numeric" : "decimal",
      value: f.default === null || f.default === undefined ? "" : String(f.default) });
    return { field: f, kind, el, read: () => (el.value.trim() === "" ? undefined : Number(el.value)) };
  }
  const el = h("input", { ...common, type: "text", autocomplete: "off",
    value: f.default === null || f.default === undefined ? "" : typeof f.default === "string" ? f.default : JSON.stringify(f.default) });
  return { field: f, kind, el, read: () => el.value };
}

function sameValue(value, dflt) {
  if (dflt === null || dflt === undefined) return value === "" || value === null;
  if (typeof dflt === "number") return Number(value) === dflt;
  if (typeof dflt === "boolean") return value === dflt;
  if (typeof dflt === "string") return value === dflt;
  return JSON.stringify(value) === JSON.stringify(dflt) || value === JSON.stringify(dflt);
}

function fieldRow(f, el, inline = false) {
  const help = f.help ? h("p", { class: "help", id: `help-${f.name}` }, f.help) : null;
  if (help) el.setAttribute("aria-describedby", `help-${f.name}`);
  const row = inline
    ? h("div", { class: "field field-check", "data-field": f.name }, h("label", { for: el.id }, el, " ", label(f.name)), help)
    : h("div", { class: "field", "data-field": f.name }, h("label", { for: el.id }, label(f.name)), el, help);
  return row;
}

/** The API names the bad field as `param` ("max_steps", "--max-steps" or "config.max_steps"). */
function markInvalid(root, param) {
  if (!param) return;
  const name = String(param).replace(/^config\./, "").replace(/^-+/, "").replace(/-/g, "_");
  const row = root.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  if (!row) return;
  row.classList.add("invalid");
  const details = row.closest("details");
  if (details) details.open = true;
  const input = row.querySelector("input, select");
  if (input) input.focus();
}
