// Datasets: upload (validate first, then store), the list, and one dataset's preview and stats.

import { api, withQuery } from "../api.js";
import { histogram, barChart } from "../charts.js";
import { errorBox, fmtBytes, fmtNum, fmtTime, h, loading, notice, replace, table } from "../dom.js";

const FORMATS = [
  ["auto", "Detect automatically"],
  ["alpaca", "Alpaca (instruction, input, output)"],
  ["messages", "Messages (chat turns)"],
  ["sharegpt", "ShareGPT (conversations)"],
  ["classification", "Classification (text, label)"],
  ["preference", "Preference (prompt, chosen, rejected)"],
  ["text", "Plain text"],
];

/** "Support tickets (v2).jsonl" -> "Support-tickets-v2": a registry name (letters, digits, . _ -). */
function nameFromFile(filename) {
  const stem = filename.replace(/\.[^.]+$/, "");
  return stem.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").replace(/-+$/, "").slice(0, 128) || "dataset";
}

export async function datasetsPage(ctx) {
  const showAll = ctx.query.get("all") === "true";
  const listBox = h("div", { testid: "datasets-list" }, loading());
  const detailBox = h("div", { testid: "dataset-detail-box" });
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" },
      h("h1", {}, "Datasets"),
      h("p", { class: "lead" }, "Your business data, checked line by line and versioned. Upload a file, look at what the model will see, then train on it.")),
    uploadCard(ctx, () => loadList()),
    h("div", { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Stored datasets"),
        h("label", { class: "inline" }, h("input", { type: "checkbox", checked: showAll, testid: "datasets-all",
          onchange: (e) => { location.hash = e.target.checked ? "#/datasets?all=true" : "#/datasets"; } }), " show every version")),
      listBox),
    detailBox));

  async function loadList() {
    try {
      const { data } = await api(withQuery("/api/datasets", { all: showAll ? "true" : "" }));
      if (!ctx.alive) return;
      const selected = ctx.rest[0];
      replace(listBox, table([
        { label: "Name", get: (d) => h("a", { href: `#/datasets/${encodeURIComponent(d.ref)}`, testid: "dataset-link" }, d.name) },
        { label: "Version", get: (d) => h("code", {}, d.version), class: "nowrap" },
        { label: "Kind", get: (d) => d.kind },
        { label: "Format", get: (d) => d.format },
        { label: "Records", get: (d) => fmtNum(d.num_records), class: "num" },
        { label: "Size", get: (d) => fmtBytes(d.size_bytes), class: "num" },
        { label: "Added", get: (d) => fmtTime(d.created_at) },
      ], data, {
        testid: "datasets-table",
        empty: "No datasets yet. Upload a JSONL, CSV or Parquet file above.",
        rowAttrs: (d) => ({ testid: "dataset-row", "data-ref": d.ref, "data-name": d.name,
          class: `clickable${selected === d.ref || selected === d.name ? " selected" : ""}`,
          onclick: (e) => { if (e.target.tagName !== "A") location.hash = `#/datasets/${encodeURIComponent(d.ref)}`; } }),
      }));
    } catch (e) {
      if (ctx.alive) replace(listBox, errorBox(e));
    }
  }

  await loadList();
  if (ctx.rest[0]) await showDetail(ctx, detailBox, ctx.rest[0]);
}

function uploadCard(ctx, onStored) {
  const file = h("input", { type: "file", id: "upload-file", testid: "upload-file", required: true,
    accept: ".jsonl,.json,.csv,.tsv,.parquet,.txt" });
  const name = h("input", { type: "text", id: "upload-name", testid: "upload-name", placeholder: "from the file name",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", autocomplete: "off" });
  const format = h("select", { id: "upload-format", testid: "upload-format" },
    FORMATS.map(([v, label]) => h("option", { value: v }, label)));
  const skip = h("input", { type: "checkbox", id: "upload-skip", testid: "upload-skip-invalid" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "upload-submit" }, "Check and upload");
  const result = h("div", { testid: "upload-result", "aria-live": "polite" });

  file.addEventListener("change", () => {
    if (file.files[0] && !name.value) name.placeholder = nameFromFile(file.files[0].name);
  });

  async function onSubmit(e) {
    e.preventDefault();
    const f = file.files[0];
    if (!f) {
      replace(result, notice("Choose a file first.", "warn", "upload-status"));
      return;
    }
    const dsName = name.value.trim() || nameFromFile(f.name);
    submit.disabled = true;
    replace(result, loading(`Checking ${f.name}…`));
    try {
      // Validate first: nothing is stored, and the user sees every bad line at once.
      const vform = new FormData();
      vform.append("file", f);
      vform.append("format", format.value);
      const v = await api("/api/datasets/validate", { method: "POST", form: vform });
      if (!v.valid && !skip.checked) {
        replace(result, validationReport(f.name, v));
        return;
      }
      replace(result, loading(`Storing ${dsName}…`));
      const form = new FormData();
      form.append("file", f);
      form.append("name", dsName);
      form.append("format", format.value);
      if (skip.checked) form.append("skip_invalid", "true");
      const ds = await api("/api/datasets", { method: "POST", form });
      replace(result, h("div", { class: "alert alert-ok", role: "status", testid: "upload-status" },
        ds.created === false ? "This exact file is already stored as " : "Stored ",
        h("a", { href: `#/datasets/${encodeURIComponent(ds.ref)}`, testid: "upload-ref" }, ds.ref),
        `: ${fmtNum(ds.num_records)} ${ds.kind} records (${ds.format} format).`,
        v.errors && v.errors.length ? ` ${v.errors.length} invalid line(s) skipped.` : "",
        " ", h("a", { href: `#/train?data=${encodeURIComponent(ds.ref)}`, class: "btn btn-small" }, "Train on it →")));
      file.value = "";
      name.value = "";
      name.placeholder = "from the file name";
      onStored();
    } catch (err) {
      // A 400 on store carries the same per-line details as validate: show them the same way.
      replace(result, err.details && err.details.length
        ? validationReport(f.name, { errors: err.details, message: err.message })
        : errorBox(err, "upload-error"));
    } finally {
      submit.disabled = false;
    }
  }

  return h("form", { class: "card", testid: "upload-form", onsubmit: onSubmit },
    h("h2", {}, "Upload a dataset"),
    h("div", { class: "grid-3" },
      h("div", { class: "field" }, h("label", { for: "upload-file" }, "File"), file,
        h("p", { class: "help" }, "JSONL, JSON, CSV, TSV or Parquet. Chat data (instruction/output or messages) or labelled text.")),
      h("div", { class: "field" }, h("label", { for: "upload-name" }, "Name"), name,
        h("p", { class: "help" }, "Letters, digits, dots, dashes. Uploading the same name again makes a new version.")),
      h("div", { class: "field" }, h("label", { for: "upload-format" }, "Format"), format,
        h("p", { class: "help" }, "Leave on automatic unless the check guesses wrong."))),
    h("label", { class: "inline" }, skip, " Skip invalid lines instead of refusing the file"),
    h("div", { class: "actions" }, submit),
    result);
}

/** "data.jsonl:3: field 'output': missing. Fix: ..." -> "missing. Fix: ...": the table has line and field. */
function problemText(e) {
  return String(e.message || "").replace(/^.*?:\d+: (field '[^']*': )?/, "") || e.message;
}

function validationReport(filename, v) {
  const errors = v.errors || [];
  return h("div", { class: "alert alert-error", role: "alert", testid: "validation-report" },
    h("p", {}, h("strong", {}, `${filename} has ${errors.length} problem${errors.length === 1 ? "" : "s"}`),
      v.num_records !== undefined ? ` (${v.num_records} records read as ${v.format || "unknown"} format).` : ".",
      " Fix these lines and upload again, or tick “Skip invalid lines”."),
    v.message && !errors.length ? h("p", {}, v.message) : null,
    table([
      { label: "Line", get: (e) => e.line ?? "–", class: "num" },
      { label: "Field", get: (e) => (e.field ? h("code", {}, e.field) : "–") },
      { label: "Problem", get: (e) => problemText(e) },
    ], errors.slice(0, 200), { testid: "validation-errors", rowAttrs: () => ({ testid: "validation-error-row" }),
      empty: "The server found the file invalid but gave no line details." }),
    errors.length > 200 ? h("p", { class: "muted" }, `… and ${errors.length - 200} more.`) : null);
}

async function showDetail(ctx, box, ref) {
  replace(box, h("div", { class: "card" }, loading(`Loading ${ref}…`)));
  let ds;
  let stats;
  try {
    [ds, stats] = await Promise.all([
      api(withQuery(`/api/datasets/${encodeURIComponent(ref)}`, { n: 5 })),
      api(`/api/datasets/${encodeURIComponent(ref)}/stats`).catch((e) => e),
    ]);
  } catch (e) {
    if (ctx.alive) replace(box, h("div", { class: "card" }, errorBox(e, "dataset-error")));
    return;
  }
  if (!ctx.alive) return;
  const trainable = ds.kind === "chat" || ds.kind === "classification";
  replace(box, h("div", { class: "card", testid: "dataset-detail" },
    h("div", { class: "card-head" },
      h("h2", {}, ds.name, " ", h("code", { class: "muted" }, ds.version)),
      trainable ? h("a", { class: "btn btn-primary", href: `#/train?data=${encodeURIComponent(ds.ref)}`, testid: "dataset-train" }, "Train on this dataset") : null),
    h("dl", { class: "facts" },
      fact("Kind", ds.kind), fact("Format", ds.format), fact("Records", fmtNum(ds.num_records)),
      fact("Size", fmtBytes(ds.size_bytes)), ds.labels && ds.labels.length ? fact("Labels", ds.labels.join(", ")) : null,
      ds.origin ? fact("Origin", originText(ds.origin)) : null,
      fact("Added", fmtTime(ds.created_at))),
    h("h3", {}, "Statistics"),
    stats instanceof Error ? errorBox(stats, "stats-error") : statsView(stats),
    h("h3", {}, `First ${(ds.preview || []).length} records`),
    h("div", { class: "preview", testid: "dataset-preview" },
      (ds.preview || []).map((r, i) => h("div", { class: "record", testid: "preview-record" },
        h("span", { class: "record-n" }, `#${i + 1}`), recordView(r))))));
}

/** {"op": "import", "file": "/srv/x/faq.jsonl", "format": "alpaca"} -> "import of faq.jsonl (alpaca)" */
function originText(o) {
  if (typeof o === "string") return o;
  if (!o || typeof o !== "object" || !o.op) return JSON.stringify(o);
  const file = o.file ? String(o.file).split(/[\\/]/).pop() : null;
  const sources = Array.isArray(o.sources) ? o.sources.map((x) => x.dataset || x.ref || JSON.stringify(x)).join(" + ") : null;
  return [o.op, file && `of ${file}`, sources && `of ${sources}`, o.format && `(${o.format})`].filter(Boolean).join(" ");
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

function statsView(st) {
  const parts = [];
  const facts = [fact("Records", fmtNum(st.count))];
  if (st.turns) facts.push(fact("Turns per record", `min ${st.turns.min} · mean ${fmtNum(st.turns.mean, 1)} · max ${st.turns.max}`));
  if (st.length) {
    const l = st.length;
    facts.push(fact(`Length (${l.unit})`, `min ${fmtNum(l.min)} · median ${fmtNum(l.p50, 0)} · 95% under ${fmtNum(l.p95, 0)} · max ${fmtNum(l.max)}`));
  }
  parts.push(h("dl", { class: "facts", testid: "dataset-stats" }, facts));
  if (st.labels && st.labels.counts) {
    const labels = Object.keys(st.labels.counts);
    parts.push(h("figure", {}, barChart(labels, [{ name: "records per label", values: labels.map((k) => st.labels.counts[k]) }],
      { testid: "labels-chart" }), h("figcaption", {}, "Records per label: a label with few records is hard to learn.")));
  }
  if (st.length && st.length.histogram) {
    parts.push(h("figure", {}, histogram(st.length.histogram, { unit: st.length.unit, testid: "length-chart" }),
      h("figcaption", {}, `How long the records are (${st.length.unit}); very long ones are cut at the model's limit.`)));
  }
  return parts;
}

/** A record as people read it: chat turns as bubbles, anything else as its fields. */
function recordView(r) {
  if (Array.isArray(r.messages)) {
    return h("div", { class: "turns" }, r.messages.map((m) => h("div", { class: `turn turn-${m.role}` },
      h("span", { class: "role" }, m.role), h("span", { class: "content" }, typeof m.content === "string" ? m.content : JSON.stringify(m.content)))));
  }
  return h("dl", { class: "record-fields" }, Object.entries(r).map(([k, v]) =>
    [h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : JSON.stringify(v))]));
}
