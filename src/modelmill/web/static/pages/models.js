// Models: the registered base models, the adapters trained on them, an adapter's lineage (which
// base, which dataset version, which settings, what it scored, which adapters it was trained from
// or merged from) so results can be trusted, and a form that merges adapters of one base into a
// new one (a `merge` job: the library call `modelmill adapters merge` makes).

import { api, withQuery } from "../api.js";
import { errorBox, fmtNum, fmtTime, h, loading, replace, table } from "../dom.js";

export async function modelsPage(ctx) {
  const basesBox = h("div", {}, loading());
  const adaptersBox = h("div", {}, loading());
  const detailBox = h("div", {});
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Models"),
      h("p", { class: "lead" }, "Base models are the starting points; adapters are what training made from them with your data.")),
    h("div", { class: "card" }, h("h2", {}, "Base models"), basesBox),
    h("div", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Adapters"),
      h("a", { class: "btn", href: "#/train" }, "Train a new one")), adaptersBox),
    detailBox));

  const selected = ctx.rest[0];
  const [bases, adapters] = await Promise.allSettled([api("/api/models"), api("/api/adapters")]);
  if (!ctx.alive) return;
  if (bases.status === "rejected") replace(basesBox, errorBox(bases.reason));
  else {
    replace(basesBox, table([
      { label: "Name", get: (m) => h("strong", {}, m.name) },
      { label: "Source", get: (m) => m.source_type || "–" },
      { label: "Details", get: (m) => modelInfo(m.info) },
      { label: "Added", get: (m) => fmtTime(m.created_at) },
      { label: "", get: (m) => h("a", { class: "btn btn-small", href: `#/train?base=${encodeURIComponent(m.name)}` }, "Train") },
    ], bases.value.data, { testid: "models-table", rowAttrs: (m) => ({ testid: "model-row", "data-name": m.name }),
      empty: "No base models registered. Add one with `modelmill models add NAME PATH`." }));
  }
  if (adapters.status === "rejected") replace(adaptersBox, errorBox(adapters.reason));
  else {
    adaptersBox.after(mergeForm(ctx, adapters.value.data));
    replace(adaptersBox, table([
      { label: "Name", get: (a) => h("a", { href: `#/models/${encodeURIComponent(a.name)}`, testid: "adapter-link" }, a.name) },
      { label: "Base", get: (a) => a.base_model },
      { label: "Method", get: (a) => a.method },
      { label: "Dataset", get: (a) => h("code", {}, a.dataset_version ? `${a.dataset}@${a.dataset_version}` : a.dataset) },
      { label: "Final loss", get: (a) => fmtNum(a.metrics && (a.metrics.train_loss ?? a.metrics.loss)), class: "num" },
      { label: "Created", get: (a) => fmtTime(a.created_at) },
    ], adapters.value.data, {
      testid: "adapters-table",
      empty: "No adapters yet: train one on the Train page.",
      rowAttrs: (a) => ({ testid: "adapter-row", "data-name": a.name, class: `clickable${a.name === selected ? " selected" : ""}`,
        onclick: (e) => { if (e.target.tagName !== "A") location.hash = `#/models/${encodeURIComponent(a.name)}`; } }),
    }));
  }
  if (selected) await adapterDetail(ctx, detailBox, selected);
}

function modelInfo(info) {
  if (!info) return "–";
  const bits = [];
  if (info.architecture) bits.push(info.architecture);
  if (info.num_parameters || info.parameters) bits.push(`${fmtParams(info.num_parameters || info.parameters)} parameters`);
  if (info.context_length) bits.push(`context ${fmtNum(info.context_length)}`);
  return bits.join(" · ") || "–";
}

function fmtParams(n) {
  if (typeof n !== "number") return String(n);
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(0)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)}K`;
  return String(n);
}

async function adapterDetail(ctx, box, name) {
  replace(box, h("div", { class: "card" }, loading(`Loading ${name}…`)));
  let a;
  try {
    a = await api(`/api/adapters/${encodeURIComponent(name)}`);
  } catch (e) {
    if (ctx.alive) replace(box, h("div", { class: "card" }, errorBox(e, "adapter-error")));
    return;
  }
  if (!ctx.alive) return;
  const lin = a.lineage || {};
  const base = lin.base_model || a.base_model;
  const dsName = lin.dataset || a.dataset;
  const dsVersion = lin.dataset_version || a.dataset_version;
  const dataset = dsName && dsVersion && !String(dsName).includes("@") ? `${dsName}@${dsVersion}` : dsName;
  const metrics = { ...(a.metrics || {}), ...(lin.metrics || {}) };
  const config = lin.config || a.config || {};
  const versions = lin.versions || a.versions;
  const modelId = a.model_id || `${base}:${a.name}`;
  const hash = (x) => (x ? h("code", { class: "muted", title: x }, ` sha256 ${String(x).slice(0, 12)}…`) : null);
  replace(box, h("div", { class: "card", testid: "adapter-detail" },
    h("div", { class: "card-head" }, h("h2", {}, a.name),
      h("a", { class: "btn btn-primary", testid: "adapter-playground",
        href: withQuery("#/playground", { models: `${base},${modelId}` }) }, "Try it in the playground")),
    h("dl", { class: "facts", testid: "adapter-lineage" },
      [h("dt", {}, "Use as"), h("dd", {}, h("code", { testid: "lineage-model-id" }, modelId))],
      [h("dt", {}, "Base model"), h("dd", { testid: "lineage-base" }, base, hash(lin.base_model_hash || lin.base_model_sha256))],
      [h("dt", {}, "Dataset"), h("dd", { testid: "lineage-dataset" },
        dataset ? h("a", { href: `#/datasets/${encodeURIComponent(dataset)}` }, dataset) : "–",
        hash(lin.dataset_hash || lin.dataset_sha256))],
      [h("dt", {}, "Method"), h("dd", {}, lin.method || a.method || "–")],
      parentsFact(a.history),
      [h("dt", {}, "Created"), h("dd", {}, fmtTime(a.created_at))]),
    Object.keys(metrics).length ? [h("h3", {}, "Training results"), kvTable(metrics, "adapter-metrics", "Result")] : null,
    Object.keys(config).length ? h("details", {}, h("summary", {}, "Training settings"), kvTable(config, "adapter-config")) : null,
    versions && Object.keys(versions).length ? h("details", {}, h("summary", {}, "Library versions"), kvTable(versions, "adapter-versions", "Library")) : null));
}

/** "Trained from X" or "Merged from a (0.6), b (0.4) by ties": the adapter's parents, each a link. */
function parentsFact(history) {
  const parents = (history && history.parents) || [];
  if (!parents.length) return null;
  const merged = parents.some((p) => p.relation === "merge");
  const link = (p) => (p.removed ? h("span", { class: "muted", title: "removed since" }, `${p.name} (removed)`)
    : h("a", { href: `#/models/${encodeURIComponent(p.name)}`, testid: "lineage-parent", "data-name": p.name }, p.name));
  const how = merged && history.merge && history.merge.how ? ` by ${history.merge.how}` : "";
  return [h("dt", {}, merged ? "Merged from" : "Trained from"), h("dd", { testid: "lineage-parents" },
    parents.map((p, i) => [i ? ", " : null, link(p), merged && p.weight != null ? ` (${p.weight})` : null]), how)];
}

/** Merge adapters of one base: pick them, weigh them, choose how; a merge job does it. */
function mergeForm(ctx, adapters) {
  const form = h("form", { class: "merge-form", testid: "merge-form", novalidate: true }); // checked on submit, picks first
  const box = h("details", { class: "card", testid: "merge" }, h("summary", {}, h("strong", {}, "Merge adapters into one")), form);
  if (adapters.length < 2) {
    replace(form, h("p", { class: "muted" }, "Train two or more adapters of one base model to merge them."));
    return box;
  }
  let picks = 0; // the sources go in the order they were picked
  const rows = adapters.map((a) => {
    const pick = h("input", { type: "checkbox", testid: "merge-pick", "data-name": a.name, value: a.name,
      onchange: () => { pick.dataset.order = String(++picks); } });
    const weight = h("input", { type: "number", step: "any", value: 1, class: "narrow", testid: "merge-weight",
      "data-name": a.name, "aria-label": `weight of ${a.name}` });
    return { a, pick, weight, el: h("label", { class: "chip" }, pick, ` ${a.name} `, h("span", { class: "muted" }, `(${a.base_model})`), " × ", weight) };
  });
  const how = h("select", { id: "merge-how", testid: "merge-how" }, loading("…"));
  const density = h("input", { id: "merge-density", testid: "merge-density", type: "number", min: 0.01, max: 1, step: 0.01, value: 0.5 });
  const name = h("input", { id: "merge-name", testid: "merge-name", type: "text", required: true,
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}", placeholder: "e.g. support-merged" });
  const out = h("div", { testid: "merge-result", "aria-live": "polite" });
  const help = h("p", { class: "help", testid: "merge-how-help" });
  api("/api/schema/merge").then((schema) => {
    const f = (schema.fields || []).find((x) => x.name === "how") || {};
    replace(how, (f.choices || ["linear"]).map((c) => h("option", { value: c, selected: c === f.default }, c)));
    help.textContent = f.help || "";
  }).catch((err) => replace(out, errorBox(err, "merge-error")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const picked = rows.filter((r) => r.pick.checked).sort((x, y) => Number(x.pick.dataset.order) - Number(y.pick.dataset.order));
    if (picked.length < 2) {
      replace(out, errorBox({ message: "Pick two or more adapters to merge." }, "merge-error"));
      return;
    }
    if (!form.reportValidity()) return;
    const config = { name: name.value.trim(), how: how.value,
      sources: picked.map((r) => `${r.a.name}:${Number(r.weight.value)}`).join(",") };
    if (Number(density.value) !== 0.5) config.density = Number(density.value);
    replace(out, loading("Queuing the merge…"));
    try {
      const job = await api("/api/jobs", { method: "POST", json: { kind: "merge", config } });
      if (ctx.alive) location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (ctx.alive) replace(out, errorBox(err, "merge-error"));
    }
  });
  replace(form,
    h("fieldset", { class: "chips" }, h("legend", {}, "Adapters and their weights"), rows.map((r) => r.el)),
    h("div", { class: "grid-3" },
      h("div", { class: "field" }, h("label", { for: "merge-how" }, "How"), how, help),
      h("div", { class: "field" }, h("label", { for: "merge-density" }, "Density"), density,
        h("p", { class: "help" }, "Share of each update kept by ties, dare_* and magnitude_prune.")),
      h("div", { class: "field" }, h("label", { for: "merge-name" }, "New adapter's name"), name)),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "btn btn-primary", testid: "merge-submit" }, "Merge")), out);
  return box;
}

function kvTable(obj, testid, keyLabel = "Setting") {
  return table([
    { label: keyLabel, get: ([k]) => h("code", {}, k) },
    { label: "Value", get: ([, v]) => (typeof v === "number" ? fmtNum(v, 4) : typeof v === "string" ? v : JSON.stringify(v)) },
  ], Object.entries(obj), { testid });
}
