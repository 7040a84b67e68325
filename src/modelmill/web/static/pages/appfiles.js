// The form that publishes an app from a YAML file, shared by workflows (flow:NAME) and dialogue bots
// (bot:NAME): paste or choose the file, check it (every problem with its line, a click selects that
// line), publish it under a name, or publish it as the new version of one that exists.

import { api, withQuery } from "../api.js";
import { errorBox, h, loading, notice, replace, table } from "../dom.js";

export const appHref = (name, params) => withQuery(`#/apps/${encodeURIComponent(name)}`, params);

/** A workflow's or bot's settings: app_json spreads the stored spec at the top level; older shapes nest it. */
export const specOf = (app) => app.spec || app;

/** "Support flow (v2).yaml" -> "Support-flow-v2": a name (letters, digits, . _ -). */
export function nameFromFile(filename) {
  const stem = filename.replace(/\.[^.]+$/, "");
  return stem.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").replace(/-+$/, "").slice(0, 128);
}

/** The top-level `name:` of an app file, when it has a plain one. */
export function nameInYaml(text) {
  const m = /^name:[ \t]*["']?([A-Za-z0-9][A-Za-z0-9._-]*)["']?[ \t]*(#.*)?$/m.exec(text || "");
  return m ? m[1] : "";
}

/** Select line `line` (1-based) of a textarea and scroll it into view. */
export function selectLine(textarea, line) {
  const lines = textarea.value.split("\n");
  const n = Math.min(Math.max(1, line), lines.length);
  const start = lines.slice(0, n - 1).reduce((sum, l) => sum + l.length + 1, 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + lines[n - 1].length);
  const lh = parseFloat(getComputedStyle(textarea).lineHeight) || 20;
  textarea.scrollTop = Math.max(0, (n - 3) * lh);
}

/** Every problem the server found in a file (error.details), a row each; `prefix` names the test ids. */
export function problemsView(err, textarea, prefix) {
  const rows = (err.details || []).filter((d) => d && d.message);
  if (!rows.length) return errorBox(err, `${prefix}-error`);
  return h("div", { class: "alert alert-error", role: "alert", testid: `${prefix}-problems` },
    h("p", {}, h("strong", {}, `${rows.length} problem${rows.length === 1 ? "" : "s"} to fix`),
      " — nothing was published. Click a line number to select that line."),
    table([
      { label: "Line", class: "num", get: (d) => (d.line ? h("button", { type: "button", class: "btn btn-small btn-ghost",
        testid: `${prefix}-problem-line`, onclick: () => selectLine(textarea, d.line) }, String(d.line)) : "–") },
      { label: "Field", get: (d) => (d.field ? h("code", {}, d.field) : "–") },
      { label: "Problem", get: (d) => d.message },
      { label: "Fix", get: (d) => d.fix || "" },
    ], rows.slice(0, 200), { testid: `${prefix}-problems-table`,
      rowAttrs: (d) => ({ testid: `${prefix}-problem-row`, "data-line": d.line ?? "" }) }));
}

/**
 * A details card with name, file, YAML, "replace" and Check / Publish. `what` is the word for the
 * file ("workflow", "bot"); `prefix` the test ids (flow-name, flow-yaml, ...); `modelPrefix` what its
 * model id starts with. `checked(r)` draws a passing check's answer inside the OK box, `published(app)`
 * the box after publishing. Returns {el, load(name)}: load fills the form with a published app's file
 * to publish an edited one as its new version.
 */
export function yamlAppForm(ctx, { what, prefix, modelPrefix, title, open = false, help, placeholder, replaceLabel,
  checkUrl, publishUrl, checked, published, onPublished }) {
  const id = (k) => `${prefix}-${k}`;
  const name = h("input", { type: "text", id: id("name"), testid: id("name"), autocomplete: "off", spellcheck: "false",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", placeholder: "from the file's name: line" });
  const file = h("input", { type: "file", id: id("file"), testid: id("file"), accept: ".yaml,.yml,text/yaml" });
  const yaml = h("textarea", { id: id("yaml"), testid: id("yaml"), class: "code-input", rows: 16, spellcheck: "false",
    placeholder });
  const replaceBox = h("input", { type: "checkbox", id: id("replace"), testid: id("replace") });
  const check = h("button", { type: "button", class: "btn", testid: id("check") }, "Check");
  const publish = h("button", { type: "submit", class: "btn btn-primary", testid: id("publish") }, "Publish");
  const result = h("div", { testid: id("result"), "aria-live": "polite" });
  let source = null; // the chosen file's name, which the server names in its problems

  file.addEventListener("change", async () => {
    const f = file.files[0];
    if (!f) return;
    try {
      yaml.value = await f.text();
      source = f.name;
      name.placeholder = nameInYaml(yaml.value) || nameFromFile(f.name) || what;
      replace(result);
    } catch (e) {
      replace(result, errorBox({ message: `${f.name} could not be read: ${e.message}` }, id("error")));
    }
  });
  yaml.addEventListener("input", () => {
    name.placeholder = nameInYaml(yaml.value) || "from the file's name: line";
  });

  async function onCheck() {
    if (!yaml.value.trim()) {
      replace(result, notice(`Paste a ${what} file or choose one first.`, "warn", id("status")));
      return;
    }
    check.disabled = true;
    replace(result, loading("Checking…"));
    try {
      const r = await api(checkUrl, { method: "POST", json: { yaml: yaml.value, source } });
      replace(result, h("div", { class: "alert alert-ok", role: "status", testid: id("status") }, checked(r)));
    } catch (err) {
      replace(result, problemsView(err, yaml, prefix));
    } finally {
      check.disabled = false;
    }
  }

  async function onPublish(e) {
    e.preventDefault();
    const appName = name.value.trim() || nameInYaml(yaml.value) || (source ? nameFromFile(source) : "");
    if (!yaml.value.trim() || !appName) {
      replace(result, notice(!yaml.value.trim() ? `Paste a ${what} file or choose one first.`
        : `Give the ${what} a name (or a \`name:\` line in the file).`, "warn", id("status")));
      return;
    }
    publish.disabled = true;
    replace(result, loading(`Publishing ${modelPrefix}${appName}…`));
    try {
      const app = await api(publishUrl, { method: "POST", json: {
        name: appName, yaml: yaml.value, source, replace: replaceBox.checked } });
      replace(result, h("div", { class: "alert alert-ok", role: "status", testid: id("status") }, published(app)));
      await onPublished(app);
    } catch (err) {
      replace(result, problemsView(err, yaml, prefix));
      if (err.status === 409 && !replaceBox.checked) {
        result.append(notice(`To publish this file as the new version of ${modelPrefix}${appName}, tick “${replaceLabel}” and publish again.`,
          "info", id("replace-hint")));
      }
    } finally {
      publish.disabled = false;
    }
  }

  async function load(appName) {
    try {
      const app = await api(`/api/apps/${encodeURIComponent(appName)}`);
      if (!ctx.alive) return;
      const sp = specOf(app);
      yaml.value = sp.yaml || "";
      source = sp.source || null;
      name.value = app.name;
      replaceBox.checked = true;
      el.open = true;
      el.scrollIntoView({ block: "start" });
    } catch (err) {
      if (ctx.alive) replace(result, errorBox(err, id("error")));
    }
  }

  const el = h("details", { class: "card", testid: id("form-card"), open },
    h("summary", { testid: id("form-open") }, h("strong", {}, title)),
    h("form", { testid: id("form"), onsubmit: onPublish },
      help,
      h("div", { class: "grid-2" },
        h("div", { class: "field" }, h("label", { for: id("name") }, "Name"), name,
          h("p", { class: "help" }, `Served as model id ${modelPrefix}NAME.`)),
        h("div", { class: "field" }, h("label", { for: id("file") }, "Or choose a file"), file,
          h("p", { class: "help" }, "A .yaml file; its text lands below."))),
      h("div", { class: "field" }, h("label", { for: id("yaml") }, `${what[0].toUpperCase()}${what.slice(1)} (YAML)`), yaml),
      h("label", { class: "inline" }, replaceBox, ` ${replaceLabel}`),
      h("div", { class: "actions" }, check, publish),
      result));
  check.addEventListener("click", onCheck);
  return { el, load };
}
