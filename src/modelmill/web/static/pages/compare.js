// Compare: the leaderboard of one task, two candidates' per-class scores side by side, and the
// test items where they answer differently (where a fine-tune won or lost is easiest to see there).
// The choice of task and candidates lives in the URL so a comparison can be shared as a link.

import { api, storedKey, withQuery } from "../api.js";
import { barChart } from "../charts.js";
import { errorBox, fmtNum, h, loading, notice, replace, table } from "../dom.js";

function pretty(v) {
  if (v === null || v === undefined) return h("span", { class: "muted" }, "(no answer)");
  return typeof v === "string" ? v : JSON.stringify(v);
}

const COUNTS = new Set(["n", "unparsed", "support", "errors"]);

/** Scores with three decimals (JSON turns 1.0 into 1); counts as whole numbers. */
function score(metric, v) {
  if (typeof v !== "number") return fmtNum(v);
  return COUNTS.has(metric) || String(metric).endsWith("_count") ? fmtNum(v) : v.toFixed(3);
}

function mark(correct) {
  if (correct === true) return h("span", { class: "ok", title: "correct" }, "✓ ");
  if (correct === false) return h("span", { class: "bad", title: "wrong" }, "✗ ");
  return null;
}

export async function comparePage(ctx) {
  const body = h("div", {}, loading());
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Compare models"),
      h("p", { class: "lead" }, "How each candidate scored on your test set, and the exact questions where two of them disagree.")),
    body));

  let board;
  try {
    board = await api("/api/leaderboard");
  } catch (e) {
    if (ctx.alive) replace(body, errorBox(e, "leaderboard-error"));
    return;
  }
  if (!ctx.alive) return;
  // one board per task and data (dataset version, item count), the newest data of a task first:
  // scores on other data (an older version, a --limit run) are shown apart, never ranked together
  const boards = board.tasks || [];
  if (!boards.length) {
    replace(body, notice("No evaluation results yet. Score models on a test set with `modelmill eval --data TEST --models tiny,my-adapter`, then come back.", "info", "compare-empty"));
    return;
  }
  const q = ctx.query;
  const taskNames = [...new Set(boards.map((x) => x.task))];
  const taskName = taskNames.includes(q.get("task")) ? q.get("task") : taskNames[0];
  const mine = boards.filter((x) => x.task === taskName);
  const t = mine[0]; // the task's newest data
  // the board compared side by side: the one in the link, else the newest with two candidates
  const picked = mine.find((x) => x.dataset === q.get("dataset") && String(x.n) === q.get("n")
    && (!q.get("hash") || x.data_hash === q.get("hash")));
  const sel = picked || mine.find((x) => x.rows.length > 1) || t;
  const names = sel.rows.map((r) => r.candidate);
  let a = names.includes(q.get("a")) ? q.get("a") : names[0];
  let b = names.includes(q.get("b")) && q.get("b") !== a ? q.get("b") : names.find((n) => n !== a);

  const here = { task: taskName, dataset: sel.dataset, hash: sel.data_hash, n: sel.n };
  const go = (params) => { location.hash = withQuery("#/compare", { ...here, a, b, ...params }); };
  const taskSelect = h("select", { id: "compare-task", testid: "compare-task",
    onchange: (e) => go({ task: e.target.value, dataset: "", hash: "", n: "", a: "", b: "" }) },
  taskNames.map((name) => h("option", { value: name, selected: name === taskName },
    `${name} (${boards.find((x) => x.task === name).kind})`)));
  const boardSelect = mine.length < 2 ? null : h("select", { id: "compare-board", testid: "compare-board",
    onchange: (e) => { const x = mine[Number(e.target.value)]; go({ dataset: x.dataset, hash: x.data_hash, n: x.n, a: "", b: "" }); } },
  mine.map((x, i) => h("option", { value: String(i), selected: x === sel }, `${x.dataset || "?"} · ${fmtNum(x.n)} items`)));
  // picking for A the candidate already in B swaps them, so A and B never name the same one
  const pick = (id, value, choose) => h("select", { id, testid: id, onchange: (e) => go(choose(e.target.value)) },
    names.map((n) => h("option", { value: n, selected: n === value }, n)));

  const reportHref = withQuery("/api/reports", { task: taskName });
  const reportLink = h("a", { class: "btn", href: reportHref, target: "_blank", rel: "noopener", testid: "report-link",
    onclick: async (e) => {
      if (!storedKey()) return; // a plain link works while the server needs no key
      // a new tab cannot send the key: fetch the report here and open it as a file
      e.preventDefault();
      const win = window.open("", "_blank");
      try {
        const html = await api(reportHref, { as: "text" });
        win.location = URL.createObjectURL(new Blob([html], { type: "text/html" }));
      } catch (err) {
        win.close();
        alert(`The report could not be opened: ${err.message}`);
      }
    } }, "Open the full report");

  const compareBox = h("div", {});
  replace(body,
    h("div", { class: "card" },
      h("div", { class: "card-head" },
        h("div", { class: "field inline-field" }, h("label", { for: "compare-task" }, "Task"), taskSelect),
        reportLink),
      mine.length > 1
        ? notice(`This task was scored on ${mine.length} different test data (another dataset version or item count): `
          + "each has its own ranking below, the newest first. Only scores on the same data compare.", "info", "compare-boards-note")
        : null,
      mine.map((x, i) => boardTable(x, i === 0, x === sel))),
    names.length < 2
      ? notice("Only one candidate is scored on this data: score another one on it to compare.", "info", "compare-single")
      : h("div", { class: "card" },
        h("div", { class: "card-head" }, h("h2", {}, "Side by side"),
          h("div", { class: "inline" },
            boardSelect ? h("div", { class: "field inline-field" }, h("label", { for: "compare-board" }, "Data"), boardSelect) : null,
            h("div", { class: "field inline-field" }, h("label", { for: "compare-a" }, "A"), pick("compare-a", a, (v) => ({ a: v, b: v === b ? a : b }))),
            h("div", { class: "field inline-field" }, h("label", { for: "compare-b" }, "B"), pick("compare-b", b, (v) => ({ b: v, a: v === a ? b : a }))))),
        h("p", { class: "muted", testid: "compare-data" }, `On ${sel.dataset || "?"} · ${fmtNum(sel.n)} items.`),
        compareBox));
  if (names.length < 2) return;

  replace(compareBox, loading());
  let cmp;
  try {
    cmp = await api(withQuery("/api/compare", { task: taskName, a, b, dataset: sel.dataset, data_hash: sel.data_hash, n: sel.n }));
  } catch (e) {
    if (ctx.alive) replace(compareBox, errorBox(e, "compare-error"));
    return;
  }
  if (!ctx.alive) return;
  a = cmp.a && cmp.a.candidate ? cmp.a.candidate : a;
  b = cmp.b && cmp.b.candidate ? cmp.b.candidate : b;
  replace(compareBox, perClass(cmp, a, b), disagreements(cmp, a, b));
}

/** One board: a task's candidates ranked on one test data, headed with that data and its size. */
function boardTable(t, newest, selected) {
  const metricNames = (t.metric_names || []).filter((m) => t.rows.some((r) => typeof (r.metrics || {})[m] === "number"));
  return h("div", { class: "board", testid: "leaderboard-board", "data-dataset": t.dataset, "data-n": String(t.n),
    "data-selected": selected ? "true" : "false" },
  h("p", { class: newest ? "" : "muted", testid: "board-head" },
    `Test set ${t.dataset || "?"} · ${fmtNum(t.n)} items · ranked by ${t.primary || "score"}`,
    newest ? "" : " · other data: ranked apart from the boards above"),
  table([
    { label: "#", get: (r) => r.rank, class: "num" },
    { label: "Candidate", get: (r) => h("strong", {}, r.candidate) },
    { label: "Kind", get: (r) => r.kind },
    ...metricNames.map((m) => ({ label: m.replace(/_/g, " "), class: "num",
      get: (r) => score(m, (r.metrics || {})[m]) })),
    ...(metricNames.includes(t.primary) ? [] : [{ label: t.primary || "score", get: (r) => score(t.primary, r.score), class: "num" }]),
    { label: "Items", get: (r) => fmtNum(r.n), class: "num" },
    { label: "ms / item", get: (r) => fmtNum(r.ms_per_item, 0), class: "num" },
  ], t.rows, { testid: "leaderboard-table", rowAttrs: (r) => ({ testid: "leaderboard-row", "data-candidate": r.candidate }) }));
}

function perClass(cmp, a, b) {
  const pc = cmp.per_class || {};
  if (!pc[a] && !pc[b]) {
    return h("p", { class: "muted", testid: "per-class-none" }, "Per-class scores apply to classification tasks; this task has none.");
  }
  const labels = cmp.labels && cmp.labels.length ? cmp.labels : Object.keys(pc[a] || pc[b] || {});
  const f1 = (who, label) => {
    const v = (pc[who] || {})[label];
    return v && typeof v.f1 === "number" ? v.f1 : typeof v === "number" ? v : null;
  };
  return h("div", { testid: "per-class" },
    h("h3", {}, "F1 per class"),
    h("figure", {}, barChart(labels, [{ name: a, values: labels.map((l) => f1(a, l)) }, { name: b, values: labels.map((l) => f1(b, l)) }],
      { max: 1, testid: "per-class-chart", yLabel: "F1" }),
    h("figcaption", {}, "F1 balances finding every item of a class (recall) with being right when naming it (precision); 1 is perfect.")),
    h("details", {}, h("summary", {}, "Precision, recall and support"),
      table([
        { label: "Class", get: (l) => h("strong", {}, l) },
        ...[a, b].flatMap((who) => ["precision", "recall", "f1"].map((m) => ({ label: `${who} ${m}`, class: "num",
          get: (l) => fmtNum(((pc[who] || {})[l] || {})[m]) }))),
        { label: "Support", class: "num", get: (l) => fmtNum(((pc[a] || pc[b] || {})[l] || {}).support) },
      ], labels, { testid: "per-class-table" })));
}

function disagreements(cmp, a, b) {
  const rows = cmp.disagreements || [];
  const total = cmp.total_disagreements ?? rows.length;
  const head = h("h3", {}, "Where they disagree");
  const summary = h("p", { class: "muted", testid: "disagreement-summary" },
    cmp.compared !== undefined ? `${total} of ${cmp.compared} test items get different answers.` : `${total} items get different answers.`,
    cmp.has_more ? ` The first ${rows.length} are shown; the full report has more.` : "");
  if (!rows.length) return [head, summary];
  return [head, summary, table([
    { label: "#", get: (d) => d.i ?? "", class: "num" },
    { label: "Input", get: (d) => h("div", { class: "clip" }, pretty(d.input)) },
    { label: "Expected", get: (d) => pretty(d.reference) },
    { label: a, get: (d) => [mark(d.a_correct), pretty(d.a)] },
    { label: b, get: (d) => [mark(d.b_correct), pretty(d.b)] },
  ], rows, { testid: "disagreements-table", rowAttrs: () => ({ testid: "disagreement-row" }) })];
}
