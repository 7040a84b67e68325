// A small element builder instead of innerHTML: everything the server sends (dataset records,
// model answers, error messages) ends up as text nodes, so nothing in the data can inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "testid") el.setAttribute("data-testid", v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" && "value" in el) el.value = v;
    else if (k === "checked" || k === "selected" || k === "disabled" || k === "open") el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** h("div", {class: "card", testid: "x", onclick: fn}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

const drawnKeys = new WeakMap(); // element -> the key replaceChanged last drew it with

export function clear(el) {
  drawnKeys.delete(el); // whatever is drawn next, the last key no longer describes it
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

/** replace(el, make()) unless el still shows what `key` last drew there. Content a timer or a resent
 * event would redraw unchanged stays the same elements, so a click in progress on it is not lost
 * (between mousedown and mouseup). A null key always redraws (e.g. a running job's ticking clock). */
export function replaceChanged(el, key, make) {
  if (key !== null && drawnKeys.get(el) === key) return el;
  replace(el, make());
  if (key !== null) drawnKeys.set(el, key);
  return el;
}

/** A plain-words error box; `details` are the per-line problems the API adds. */
export function errorBox(err, testid = "error") {
  // details repeat the message for a single problem; they add something only per line
  const details = ((err && err.details) || []).filter((d) => d && d.line);
  return h("div", { class: "alert alert-error", role: "alert", testid },
    h("strong", {}, "Something went wrong. "), err && err.message ? err.message : String(err),
    details.length ? h("ul", {}, details.slice(0, 20).map((d) =>
      h("li", {}, [d.line ? `line ${d.line}` : null, d.field, d.message].filter(Boolean).join(": ")))) : null);
}

export function notice(text, kind = "info", testid = "notice") {
  return h("div", { class: `alert alert-${kind}`, role: "status", testid }, text);
}

export function loading(text = "Loading…") {
  return h("p", { class: "muted loading" }, text);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

export function fmtNum(v, digits = 3) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString();
  return Math.abs(v) >= 1000 ? v.toFixed(0) : v.toFixed(digits);
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** A table from column specs {label, get(row) -> node|text, class}; rows get `rowAttrs(row)`. */
export function table(columns, rows, { testid, rowAttrs, empty = "Nothing here yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted empty", testid: testid ? `${testid}-empty` : null }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { testid },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label)))),
      h("tbody", {}, rows.map((r) => h("tr", rowAttrs ? rowAttrs(r) : {},
        columns.map((c) => h("td", { class: c.class, "data-label": c.label }, c.get(r))))))));
}

export function badge(status) {
  return h("span", { class: `badge badge-${status}`, testid: "status-badge" }, String(status).replace(/_/g, " "));
}
