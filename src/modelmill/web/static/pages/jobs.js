// Jobs: the queue at a glance, and one job live: status, progress, a loss chart and the log.
// Events come over the server's event stream (EventSource); when that cannot be used (an API key
// is needed, which EventSource cannot send, or the stream breaks) the page polls the events
// endpoint from the last event it has, so nothing is shown twice or missed.

import { api, storedKey, withQuery } from "../api.js";
import { lineChart } from "../charts.js";
import { badge, errorBox, fmtNum, fmtTime, h, loading, notice, replace, replaceChanged, table } from "../dom.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const STATUSES = ["", "validating_files", "queued", "running", "succeeded", "failed", "cancelled"];

function duration(from, to) {
  if (!from) return "–";
  const ms = (to ? new Date(to) : new Date()) - new Date(from);
  if (!(ms >= 0)) return "–";
  const sec = Math.round(ms / 1000);
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m ${sec % 60}s`;
  return `${Math.floor(sec / 3600)}h ${Math.floor((sec % 3600) / 60)}m`;
}

function jobTitle(job) {
  const cfg = (job.spec && (job.spec.config || job.spec)) || {};
  if (job.fine_tuned_model) return job.fine_tuned_model;
  if (job.kind === "train") return [cfg.name, cfg.data && `on ${cfg.data}`].filter(Boolean).join(" ") || "training";
  return cfg.name || cfg.task || job.kind;
}

function progressText(p) {
  if (!p || p.step === undefined || p.step === null) return "";
  const of = p.max_steps > 0 ? ` of ${p.max_steps}` : "";
  const loss = typeof p.loss === "number" ? ` · loss ${fmtNum(p.loss, 4)}` : "";
  return `step ${p.step}${of}${loss}`;
}

function progressBar(job, testid) {
  const p = job.progress || {};
  const pct = p.max_steps > 0 ? Math.min(100, (100 * (p.step || 0)) / p.max_steps)
    : job.status === "succeeded" ? 100 : null;
  return h("div", { class: "progress", testid, "data-step": p.step ?? "", "data-max-steps": p.max_steps ?? "" },
    h("div", { class: `progress-track${pct === null && job.status === "running" ? " indeterminate" : ""}` },
      h("div", { class: `progress-fill status-${job.status}`, style: `width: ${pct ?? (job.status === "running" ? 30 : 0)}%` })),
    h("span", { class: "progress-text" }, progressText(p) || (FINISHED.has(job.status) ? "" : "waiting for the first step…")));
}

// ---- the list -------------------------------------------------------------------------------

export async function jobsPage(ctx) {
  const status = ctx.query.get("status") || "";
  const listBox = h("div", { testid: "jobs-list" }, loading());
  const filter = h("select", { testid: "jobs-filter", "aria-label": "Show jobs with status",
    onchange: (e) => { location.hash = withQuery("#/jobs", { status: e.target.value }); } },
  STATUSES.map((st) => h("option", { value: st, selected: st === status }, st ? st.replace(/_/g, " ") : "all statuses")));
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Jobs"),
      h("p", { class: "lead" }, "Training and evaluation runs, newest first. This page refreshes by itself.")),
    h("div", { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Queue"), h("div", { class: "inline" }, filter,
        h("a", { class: "btn btn-primary", href: "#/train" }, "New training job"))),
      listBox)));

  async function load() {
    try {
      const { data } = await api(withQuery("/api/jobs", { status, limit: 100 }));
      if (!ctx.alive) return;
      // a settled, unchanged list is not redrawn under the pointer; a running job's clock ticks
      const key = data.every((j) => FINISHED.has(j.status)) ? JSON.stringify(data) : null;
      replaceChanged(listBox, key, () => table([
        { label: "Job", get: (j) => h("a", { href: `#/jobs/${encodeURIComponent(j.id)}`, testid: "job-link" }, h("code", {}, j.id)) },
        { label: "Kind", get: (j) => j.kind },
        { label: "What", get: (j) => jobTitle(j) },
        { label: "Status", get: (j) => badge(j.status) },
        { label: "Progress", get: (j) => progressText(j.progress) || "–" },
        { label: "Created", get: (j) => fmtTime(j.created_at) },
        { label: "Took", get: (j) => duration(j.started_at, j.finished_at), class: "num" },
      ], data, {
        testid: "jobs-table",
        empty: status ? `No ${status.replace(/_/g, " ")} jobs.` : "No jobs yet. Start one on the Train page.",
        rowAttrs: (j) => ({ testid: "job-row", "data-id": j.id, "data-status": j.status, class: "clickable",
          onclick: (e) => { if (!e.target.closest("a")) location.hash = `#/jobs/${encodeURIComponent(j.id)}`; } }),
      }));
    } catch (e) {
      if (ctx.alive) replace(listBox, errorBox(e));
    }
  }
  await load();
  ctx.every(3000, load);
}

// ---- one job ------------------------------------------------------------------------------

export async function jobPage(ctx) {
  const id = ctx.rest[0];
  const head = h("div", {});
  const resultBox = h("div", {});
  const chartBox = h("div", { class: "chart-box", testid: "loss-chart-box" });
  const logBox = h("ol", { class: "log", testid: "job-log", "aria-live": "polite" });
  const streamNote = h("p", { class: "muted small", testid: "job-stream-mode" });
  const specBox = h("div", {});
  const chartCard = h("div", { class: "card" }, h("h2", {}, "Training loss"), chartBox,
    h("p", { class: "help" }, "Loss should trend down; a flat or rising line means the model is not learning from the data."));
  ctx.main.append(h("section", { class: "page", testid: "job-page", "data-job-id": id },
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← All jobs")),
    head, resultBox, chartCard,
    h("div", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Log"), streamNote), logBox),
    specBox));

  let job;
  try {
    job = await api(`/api/jobs/${encodeURIComponent(id)}`);
  } catch (e) {
    if (ctx.alive) replace(head, errorBox(e, "job-error"));
    return;
  }
  if (!ctx.alive) return;
  chartCard.hidden = job.kind !== "train"; // evaluations log no loss; shown if one ever does

  const points = [];
  const validPoints = [];
  let lastId = 0;
  let drawQueued = false;
  let eventsDone = false;

  // The event stream's `end` and the 2-second refresh resend a finished job unchanged: redraw only what
  // changed (replaceChanged), so its links and buttons stay put under the pointer.
  function draw() {
    replaceChanged(head, FINISHED.has(job.status) ? JSON.stringify(job) : null, () => header(job)); // running: clock
    replaceChanged(resultBox, JSON.stringify([job.status, job.kind, job.model, job.fine_tuned_model, job.result,
      job.error]), () => result(job));
    if (!specBox.firstChild && job.spec) {
      replace(specBox, h("details", { class: "card" }, h("summary", {}, "Job settings"),
        h("pre", { class: "code", testid: "job-spec" }, JSON.stringify(job.spec, null, 2))));
    }
  }

  function drawChart() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      replace(chartBox, lineChart(points, { testid: "loss-chart", second: { name: "validation", points: validPoints } }));
    });
  }

  function onEvent(ev) {
    if (!ev || typeof ev.id !== "number" || ev.id <= lastId) return; // a reconnect may resend
    lastId = ev.id;
    const d = ev.data || {};
    if (typeof d.loss === "number" && typeof d.step === "number") {
      points.push({ x: d.step, y: d.loss });
      chartCard.hidden = false;
      drawChart();
    }
    if (typeof d.valid_loss === "number" && typeof d.step === "number") {
      validPoints.push({ x: d.step, y: d.valid_loss }); // the held-out loss (a validation file)
      drawChart();
    }
    if (ev.message) {
      const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
      logBox.append(h("li", { class: `log-line level-${ev.level || "info"}`, testid: "log-line", "data-type": ev.type },
        h("time", { datetime: ev.created_at }, ev.created_at ? new Date(ev.created_at).toLocaleTimeString() : ""),
        h("span", { class: "msg" }, ev.message)));
      if (atBottom) logBox.scrollTop = logBox.scrollHeight; // follow the tail unless the user scrolled up
    }
  }

  async function refreshJob() {
    try {
      const fresh = await api(`/api/jobs/${encodeURIComponent(id)}`);
      if (!ctx.alive) return;
      job = fresh;
      draw();
    } catch (e) {
      if (ctx.alive) replace(resultBox, errorBox(e)); // the next good refresh draws the result again
    }
  }

  function poll() {
    streamNote.textContent = "updating every 2 seconds";
    const stop = ctx.every(2000, async () => {
      if (eventsDone) return;
      try {
        // The state first, then every event (as `modelmill jobs show -f`): a job's last events are
        // written before it finishes, so once the state read here is final, the drain below holds them
        // all. A state read by the other timer may turn final while an events request is in flight
        // and miss the last events: this tick decides on its own read only.
        const fresh = await api(`/api/jobs/${encodeURIComponent(id)}`);
        if (!ctx.alive) return;
        job = fresh;
        draw(); // redraws only what changed
        const finished = FINISHED.has(fresh.status);
        for (;;) { // drain: a long job has more events than one page holds
          const r = await api(withQuery(`/api/jobs/${encodeURIComponent(id)}/events`, { after: lastId || "", limit: 500 }));
          if (!ctx.alive) return;
          (r.data || []).forEach(onEvent);
          if (!r.has_more || !(r.data || []).length) break;
        }
        if (finished) {
          eventsDone = true;
          stop();
        }
      } catch (e) {
        streamNote.textContent = `cannot read the log: ${e.message}`;
      }
    }, { now: true });
  }

  function stream() {
    let es;
    try {
      es = new EventSource(withQuery(`/api/jobs/${encodeURIComponent(id)}/events/stream`, { after: lastId || "" }));
    } catch {
      poll();
      return;
    }
    streamNote.textContent = "live";
    ctx.onLeave(() => es.close());
    es.onmessage = (e) => {
      try {
        onEvent(JSON.parse(e.data));
      } catch {
        /* a keep-alive or a line we do not know: nothing to show */
      }
    };
    es.addEventListener("end", (e) => { // its data is the finished job
      es.close();
      eventsDone = true;
      streamNote.textContent = "finished";
      try {
        job = JSON.parse(e.data);
        draw();
      } catch {
        refreshJob();
      }
    });
    // EventSource would reconnect by itself, but from its first URL (the wrong `after`): poll instead.
    es.onerror = () => {
      es.close();
      if (ctx.alive && !eventsDone) poll();
    };
  }

  draw();
  drawChart();
  if (storedKey()) poll(); // EventSource cannot send the Authorization header
  else stream();
  const stopJob = ctx.every(2000, async () => {
    if (FINISHED.has(job.status)) {
      stopJob();
      return;
    }
    await refreshJob();
  });

  function header(j) {
    const cancel = FINISHED.has(j.status) ? null : h("button", { class: "btn btn-danger", testid: "job-cancel", type: "button",
      onclick: async (e) => {
        e.target.disabled = true;
        e.target.textContent = "Cancelling…";
        try {
          job = await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
          draw();
        } catch (err) {
          e.target.disabled = false;
          e.target.textContent = "Cancel job";
          replace(resultBox, errorBox(err, "cancel-error"));
        }
      } }, "Cancel job");
    return h("div", { class: "card job-head" },
      h("div", { class: "card-head" },
        h("div", {}, h("h1", {}, jobTitle(j)), h("p", { class: "muted" }, h("code", { testid: "job-id" }, j.id), ` · ${j.kind}`,
          j.model ? ` · base ${j.model}` : "", j.worker ? ` · worker ${j.worker}` : "",
          j.attempts > 1 ? ` · attempt ${j.attempts}` : "")),
        h("div", { class: "inline" }, h("span", { testid: "job-status", "data-status": j.status }, badge(j.status)), cancel)),
      progressBar(j, "job-progress"),
      h("dl", { class: "facts" },
        h("dt", {}, "Created"), h("dd", {}, fmtTime(j.created_at)),
        h("dt", {}, "Started"), h("dd", {}, fmtTime(j.started_at)),
        h("dt", {}, FINISHED.has(j.status) ? "Took" : "Running for"), h("dd", {}, j.started_at ? duration(j.started_at, j.finished_at) : "–")));
  }
}

function result(job) {
  if (job.status === "failed") {
    const err = job.error;
    const message = !err ? "The job failed without a message; see the log below."
      : typeof err === "string" ? err : err.message || JSON.stringify(err);
    return h("div", { class: "alert alert-error", role: "alert", testid: "job-failure" },
      h("strong", {}, "The job failed. "), message);
  }
  if (job.status === "cancelled") return notice("This job was cancelled.", "warn", "job-cancelled");
  if (job.status !== "succeeded") return null;
  const ft = job.fine_tuned_model;
  const res = job.result || {};
  if (ft) {
    const [base, adapter] = ft.includes(":") ? ft.split(/:(.*)/s) : [job.model, ft];
    return h("div", { class: "card result", testid: "job-result" },
      h("h2", {}, "Your model is ready"),
      h("p", {}, "Use it as ", h("code", { testid: "job-model" }, ft),
        " in the playground, in a deployment, or with any OpenAI client at ", h("code", {}, "/v1/chat/completions"), "."),
      resultFacts(res),
      h("div", { class: "actions" },
        h("a", { class: "btn btn-primary", testid: "job-playground-link",
          href: withQuery("#/playground", { models: [base || job.model, ft].filter(Boolean).join(",") }) }, "Try it in the playground"),
        adapter ? h("a", { class: "btn", testid: "job-adapter-link", href: `#/models/${encodeURIComponent(adapter)}` }, "See its lineage") : null,
        h("a", { class: "btn btn-ghost", href: "#/compare" }, "Compare scores")));
  }
  return h("div", { class: "card result", testid: "job-result" }, h("h2", {}, "Finished"), resultFacts(res),
    job.kind === "eval" ? h("div", { class: "actions" }, h("a", { class: "btn btn-primary", href: "#/compare" }, "See the leaderboard")) : null);
}

function resultFacts(res) {
  const entries = Object.entries(res).filter(([, v]) => v !== null && typeof v !== "object");
  if (!entries.length) return null;
  return h("dl", { class: "facts", testid: "job-result-facts" },
    entries.map(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, typeof v === "number" ? fmtNum(v, 4) : String(v))]));
}
