// Deployments: a stable name (what apps call as `model`) pointing at a model or adapter, with
// optional knowledge bases, a system prompt and a gate. A deployment with a gate moves to a new
// model only by promotion: both models are scored on the gate's test set and the new one must win
// by the margin (POST /api/deployments/NAME/promote); every move and refusal is kept in its history,
// and a move can be rolled back. The list page creates and edits (#/deployments?edit=NAME); one
// deployment's page (#/deployments/NAME) changes its gate, promotes, and shows and rolls back history.

import { api, chatModelId, withQuery } from "../api.js";
import { errorBox, fmtTime, h, loading, notice, replace, table } from "../dom.js";

// The headline metrics of the evaluation task kinds, offered as suggestions (any metric the task reports works).
const METRICS = ["accuracy", "macro_f1", "rouge_l", "bleu", "chrf", "entity_f1", "field_f1", "exact_match",
  "dialogue_success", "turn_accuracy", "score"];
const OTHER = "__other__"; // the model select's "type a model id" choice

const enc = encodeURIComponent;
const deploymentHref = (name) => `#/deployments/${enc(name)}`;

/** A margin with its sign: +0.02, -1, 0. */
function signed(x) {
  const n = Number(x || 0);
  return `${n > 0 ? "+" : ""}${n}`;
}

function fmtScore(v) {
  return typeof v === "number" ? v.toFixed(3) : "–";
}

function gateText(g) {
  if (!g) return "none: it is moved by hand";
  return `${g.data} · ${g.metric || "headline metric"} · margin ${signed(g.margin)}${g.limit ? ` · first ${g.limit} items` : ""}`;
}

// ============================================================================ the gate's fields

/**
 * The gate's fields (test set, margin, metric, items), shared by the create form and a
 * deployment's gate card. `read()` gives the REST `gate` object; `fill(gate)` shows a stored one.
 */
function gateFields(prefix, datasets, gate) {
  const id = (f) => `${prefix}-gate-${f}`;
  const data = h("select", { id: id("data"), testid: id("data") },
    h("option", { value: "" }, "Choose a test set…"),
    datasets.map((d) => h("option", { value: d.name },
      `${d.name} (${[d.kind, d.num_records != null ? `${d.num_records} records` : null].filter(Boolean).join(", ")})`)));
  const margin = h("input", { id: id("margin"), testid: id("margin"), type: "number", step: "0.01", min: "-1", max: "1", value: "0.02" });
  const metric = h("input", { id: id("metric"), testid: id("metric"), autocomplete: "off", list: id("metrics"),
    placeholder: "the task's headline metric" });
  const limit = h("input", { id: id("limit"), testid: id("limit"), type: "number", step: "1", min: "0", value: "0", class: "narrow" });
  let kept = {}; // kind and name of a stored gate: not shown, sent back unchanged

  function fill(g) {
    kept = g ? { kind: g.kind || "", name: g.name || "" } : {};
    if (g && g.data && ![...data.options].some((o) => o.value === g.data)) data.append(h("option", { value: g.data }, g.data));
    data.value = g ? g.data : "";
    margin.value = g ? String(g.margin ?? 0) : "0.02";
    metric.value = g ? g.metric || "" : "";
    limit.value = g ? String(g.limit || 0) : "0";
  }

  /** The gate to send, or throws a message naming the field to fix. */
  function read() {
    if (!data.value) throw new Error("Choose the test set the gate scores on.");
    const m = Number(margin.value);
    if (margin.value.trim() === "" || !Number.isFinite(m) || m < -1 || m > 1) throw new Error("The margin is a number from -1 to 1.");
    const n = Number(limit.value || 0);
    if (!Number.isInteger(n) || n < 0) throw new Error("Items to score is a whole number (0: all of them).");
    return { ...kept, data: data.value, margin: m, metric: metric.value.trim(), limit: n };
  }

  fill(gate);
  const el = h("div", { class: "form-grid", testid: `${prefix}-gate-fields` },
    h("div", { class: "field" }, h("label", { for: id("data") }, "Test set"), data,
      h("p", { class: "help" }, "Both the current and the proposed model answer it; the better score wins. ",
        datasets.length ? null : h("a", { href: "#/datasets" }, "Upload one first."))),
    h("div", { class: "field" }, h("label", { for: id("margin") }, "Margin"), margin,
      h("p", { class: "help" }, "How much higher the new model must score, on the metric's scale: 0.02 is two points of accuracy. 0 lets a tie through; a negative margin lets a slightly worse model through.")),
    h("div", { class: "field" }, h("label", { for: id("metric") }, "Metric (optional)"), metric,
      h("datalist", { id: id("metrics") }, METRICS.map((m) => h("option", { value: m }))),
      h("p", { class: "help" }, "Left empty: the task's headline metric (accuracy for classification). Higher must be better.")),
    h("div", { class: "field" }, h("label", { for: id("limit") }, "Items to score"), limit,
      h("p", { class: "help" }, "0 scores the whole test set; a number scores only the first items (quicker, less sure).")));
  return { el, read, fill };
}

async function listOf(path) {
  return ((await api(path)).data || []);
}

// ============================================================================ the list

export async function deploymentsPage(ctx) {
  const listBox = h("div", { testid: "deployments-list" }, loading());
  const formBox = h("div", {});
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Deployments"),
      h("p", { class: "lead" }, "Give a model a name your applications call. Point the name at a better model later and the apps follow. With a gate, a new model replaces the current one only when it scores better on your test set.")),
    formBox,
    h("div", { class: "card" }, h("h2", {}, "Live deployments"), listBox)));

  let deployments = [];
  let form = null; // set once the form is drawn: {load(d)}

  async function loadList() {
    try {
      deployments = await listOf("/api/deployments");
      if (!ctx.alive) return;
      replace(listBox, table([
        { label: "Name", get: (d) => h("a", { href: deploymentHref(d.name), testid: "deploy-open" }, h("strong", {}, d.name)) },
        { label: "Model", get: (d) => h("code", { testid: "deployment-model" }, d.model) },
        { label: "Gate", get: (d) => h("span", { testid: "deployment-gate" }, d.gate ? gateText(d.gate) : "–") },
        { label: "Knowledge bases", get: (d) => (d.knowledge_bases || []).join(", ") || "–" },
        { label: "System prompt", get: (d) => (d.system_prompt ? h("span", { class: "clip", title: d.system_prompt }, d.system_prompt) : "–") },
        { label: "Updated", get: (d) => fmtTime(d.updated_at || d.created_at) },
        { label: "", get: (d) => h("div", { class: "inline" },
          h("a", { class: "btn btn-small", href: deploymentHref(d.name), testid: "deploy-manage" }, "Promote · history"),
          h("button", { type: "button", class: "btn btn-small", testid: "deploy-edit", onclick: () => form && form.load(d, true) }, "Edit"),
          h("a", { class: "btn btn-small", href: `#/playground?models=${enc(d.name)},${enc(d.model)}` }, "Try"),
          h("button", { type: "button", class: "btn btn-small btn-danger", testid: "deploy-delete", "data-name": d.name,
            onclick: (e) => remove(d.name, e.target) }, "Delete")) },
      ], deployments, { testid: "deployments-table", rowAttrs: (d) => ({ testid: "deployment-row", "data-name": d.name }),
        empty: "Nothing deployed yet." }));
    } catch (e) {
      if (ctx.alive) replace(listBox, errorBox(e));
    }
  }

  async function remove(name, button) {
    if (!confirm(`Delete the deployment “${name}”? Apps calling it will get an error until it exists again.`)) return;
    button.disabled = true;
    try {
      await api(`/api/deployments/${enc(name)}`, { method: "DELETE" });
      await loadList();
    } catch (e) {
      button.disabled = false;
      listBox.prepend(errorBox(e, "deploy-delete-error"));
    }
  }

  const [cards, datasets] = await Promise.allSettled([listOf("/v1/models"), listOf("/api/datasets"), loadList()]);
  if (!ctx.alive) return;
  // a deployment points at a model, adapter or router, not at another deployment
  const models = cards.status === "fulfilled" ? cards.value.filter((c) => c.type !== "embedding" && c.type !== "deployment") : [];
  for (const r of [cards, datasets]) if (r.status === "rejected") formBox.append(errorBox(r.reason));
  form = deployForm(ctx, formBox, models, datasets.status === "fulfilled" ? datasets.value : [], () => deployments, loadList);
  const edit = ctx.query.get("edit");
  const wanted = edit && deployments.find((d) => d.name === edit);
  if (wanted) form.load(wanted, true);
  else if (edit) formBox.prepend(notice(`There is no deployment “${edit}” to edit; fill in the form to create it.`, "warn"));
}

/** The create-or-update form; typing an existing name (or Edit) loads that deployment into it. */
function deployForm(ctx, box, models, datasets, current, reload) {
  const name = h("input", { id: "deploy-name", testid: "deploy-name", required: true, autocomplete: "off", placeholder: "support-bot" });
  const model = h("select", { id: "deploy-model", testid: "deploy-model", required: true },
    models.map((c) => h("option", { value: chatModelId(c) }, chatModelId(c))));
  const modelHelp = h("p", { class: "help", testid: "deploy-model-help" });
  const kbs = h("input", { id: "deploy-kbs", testid: "deploy-kbs", autocomplete: "off", placeholder: "handbook, faq" });
  const system = h("textarea", { id: "deploy-system", testid: "deploy-system", rows: 2 });
  const gate = gateFields("deploy", datasets, null);
  const gateOn = h("input", { type: "checkbox", id: "deploy-gate-on", testid: "deploy-gate-on" });
  const gateBox = h("div", { hidden: true }, gate.el);
  const gateNote = h("p", { class: "help", testid: "deploy-gate-note" });
  const mode = h("p", { class: "help", testid: "deploy-mode" });
  const result = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "deploy-submit" }, "Deploy");
  let loaded = null; // the existing deployment the form shows, or null for a new one

  function existing() {
    return current().find((d) => d.name === name.value.trim()) || null;
  }

  function showState() {
    gateBox.hidden = !gateOn.checked;
    const d = existing();
    // a gated deployment moves only by promotion: its model is fixed here
    const locked = Boolean(d && d.gate);
    if (locked) {
      if (![...model.options].some((o) => o.value === d.model)) model.append(h("option", { value: d.model }, d.model));
      model.value = d.model;
    }
    model.disabled = locked;
    replace(modelHelp, locked ? ["It has a gate, so it moves to a new model only by winning on it: ",
      h("a", { href: deploymentHref(d.name) }, "promote a model"), "."] : "What the name answers with.");
    replace(mode, d ? ["Updates the existing deployment “", d.name, "” (now on ", h("code", {}, d.model), "). ",
      h("a", { href: deploymentHref(d.name) }, "Promote, history and rollback"), "."]
      : "A new deployment.");
    submit.textContent = d ? "Save changes" : "Deploy";
    replace(gateNote, d && d.gate && !gateOn.checked ? `Saving removes the gate (${gateText(d.gate)}): the deployment can then be re-pointed by hand.`
      : gateOn.checked ? "A new model replaces the current one only when it scores at least the margin higher on the test set."
        : "Without a gate, saving another model here re-points the name at once.");
  }

  /** Show deployment `d` in the form (its knowledge bases, prompt and gate too). */
  function load(d, scroll = false) {
    loaded = d;
    name.value = d.name;
    if (![...model.options].some((o) => o.value === d.model)) model.append(h("option", { value: d.model }, d.model));
    model.value = d.model;
    kbs.value = (d.knowledge_bases || []).join(", ");
    system.value = d.system_prompt || "";
    gateOn.checked = Boolean(d.gate);
    gate.fill(d.gate);
    replace(result);
    showState();
    if (scroll) name.scrollIntoView({ block: "center" });
  }

  name.addEventListener("input", () => {
    const d = existing();
    if (d && d !== loaded) load(d); // typed an existing name: show what saving would change
    else if (!d) loaded = null;
    showState();
  });
  gateOn.addEventListener("change", showState);

  async function onSubmit(e) {
    e.preventDefault();
    const d = existing();
    const body = {
      name: name.value.trim(), model: model.value,
      knowledge_bases: kbs.value.split(",").map((x) => x.trim()).filter(Boolean),
      system_prompt: system.value.trim() || null,
    };
    try {
      if (gateOn.checked) body.gate = gate.read();
      else if (d && d.gate) body.no_gate = true;
    } catch (err) {
      replace(result, notice(err.message, "warn", "deploy-error"));
      return;
    }
    submit.disabled = true;
    replace(result);
    try {
      const saved = await api("/api/deployments", { method: "POST", json: body });
      if (!ctx.alive) return;
      replace(result, h("div", { class: "alert alert-ok", role: "status", testid: "deploy-status" },
        `${d ? "Saved" : "Deployed"}: call model “${saved.name}” at /v1/chat/completions. `,
        saved.gate ? `Gate: ${gateText(saved.gate)}. ` : null,
        h("a", { href: deploymentHref(saved.name) }, saved.gate ? "Promote a new model" : "History and rollback"), "."));
      name.value = "";
      loaded = null;
      await reload();
      showState();
    } catch (err) {
      if (ctx.alive) replace(result, errorBox(err, "deploy-error"));
    } finally {
      submit.disabled = false;
    }
  }

  replace(box, h("form", { class: "card", testid: "deploy-form", onsubmit: onSubmit },
    h("h2", {}, "Create or update a deployment"),
    models.length ? null : notice("No models to deploy yet.", "warn"),
    h("div", { class: "grid-2" },
      h("div", { class: "field" }, h("label", { for: "deploy-name" }, "Name"), name,
        h("p", { class: "help" }, "What applications put in `model`. Using an existing name updates it."), mode),
      h("div", { class: "field" }, h("label", { for: "deploy-model" }, "Model"), model, modelHelp),
      h("div", { class: "field" }, h("label", { for: "deploy-kbs" }, "Knowledge bases"), kbs,
        h("p", { class: "help" }, "Comma-separated names from `modelmill kb list`; answers then cite them.")),
      h("div", { class: "field" }, h("label", { for: "deploy-system" }, "System prompt"), system)),
    h("div", { class: "field field-check" }, h("label", { class: "inline" }, gateOn, "Guard it with a gate (promote only a model that scores better)"), gateNote),
    gateBox,
    h("div", { class: "actions" }, submit), result));
  showState();
  return { load };
}

// ============================================================================ one deployment

export async function deploymentPage(ctx) {
  const name = ctx.rest[0];
  const path = `/api/deployments/${enc(name)}`;
  const body = h("div", {}, loading(`Loading ${name}…`));
  ctx.main.append(h("section", { class: "page", testid: "deployment-page", "data-name": name },
    h("p", { class: "crumbs" }, h("a", { href: "#/deployments" }, "← All deployments")), body));

  // there is no GET /api/deployments/NAME: the list has every field
  const findIt = async () => (await listOf("/api/deployments")).find((d) => d.name === name) || null;
  const [dep0, datasets, models, adapters] = await Promise.allSettled([
    findIt(), listOf("/api/datasets"), listOf("/api/models"), listOf("/api/adapters")]);
  if (!ctx.alive) return;
  if (dep0.status === "rejected") {
    replace(body, errorBox(dep0.reason, "deployment-error"));
    return;
  }
  if (!dep0.value) {
    replace(body, notice(`There is no deployment “${name}”.`, "warn", "deployment-error"),
      h("p", {}, h("a", { href: withQuery("#/deployments", { edit: name }) }, "Create it"), "."));
    return;
  }
  let dep = dep0.value;
  let events = [];

  const problems = [datasets, models, adapters].filter((r) => r.status === "rejected").map((r) => errorBox(r.reason));
  const summary = h("div", { class: "card", testid: "deployment-summary" });
  const gateCard = gateCardFor();
  const promote = promoteCard();
  const historyBox = h("div", { testid: "history-box" }, loading());
  const rollbackBox = h("div", { testid: "rollback-box" });
  replace(body, problems, summary, promote.el, gateCard.el,
    h("div", { class: "card", testid: "history-card" },
      h("h2", {}, "History"),
      h("p", { class: "help" }, "Every move and every refusal, newest first. Scores are the gate's metric on its test set: the proposed model's, then the one it would replace."),
      rollbackBox, historyBox));

  function drawSummary() {
    replace(summary,
      h("div", { class: "card-head" }, h("h1", {}, dep.name),
        h("div", { class: "inline" },
          h("a", { class: "btn btn-small", href: `#/playground?models=${enc(dep.name)}` }, "Try it"),
          h("a", { class: "btn btn-small", href: withQuery("#/deployments", { edit: dep.name }), testid: "deployment-edit" }, "Edit"))),
      h("dl", { class: "facts" },
        h("dt", {}, "Answers with"), h("dd", {}, h("code", { testid: "deployment-current" }, dep.model)),
        h("dt", {}, "Gate"), h("dd", { testid: "deployment-gate-text" }, gateText(dep.gate)),
        h("dt", {}, "Knowledge bases"), h("dd", {}, (dep.knowledge_bases || []).join(", ") || "–"),
        h("dt", {}, "Updated"), h("dd", {}, fmtTime(dep.updated_at || dep.created_at))));
  }

  async function refresh() {
    try {
      const [d, hist] = await Promise.all([findIt(), api(`${path}/history`)]);
      if (!ctx.alive) return;
      if (d) dep = d;
      events = hist.data || [];
      drawSummary();
      promote.update();
      gateCard.update();
      drawHistory();
    } catch (e) {
      if (ctx.alive) replace(historyBox, errorBox(e, "history-error"));
    }
  }

  // ---- the gate: change it, or remove it (the model stays where it is)
  function gateCardFor() {
    const fields = gateFields("gate", datasets.status === "fulfilled" ? datasets.value : [], dep.gate);
    const status = h("div", { "aria-live": "polite" });
    const save = h("button", { type: "submit", class: "btn btn-primary", testid: "gate-save" }, "Save gate");
    const drop = h("button", { type: "button", class: "btn btn-danger", testid: "gate-remove", onclick: () => put(null) }, "Remove gate");
    const lead = h("p", { class: "help" });

    async function put(gate) {
      const json = { name: dep.name, model: dep.model, knowledge_bases: dep.knowledge_bases || [], system_prompt: dep.system_prompt };
      if (gate) json.gate = gate;
      else json.no_gate = true;
      save.disabled = drop.disabled = true;
      try {
        const d = await api("/api/deployments", { method: "POST", json });
        if (!ctx.alive) return;
        dep = d;
        replace(status, notice(d.gate ? `Gate saved: ${gateText(d.gate)}.` : "Gate removed: the deployment can now be re-pointed by hand.", "ok", "gate-status"));
        await refresh();
      } catch (e) {
        if (ctx.alive) replace(status, errorBox(e, "gate-error"));
      } finally {
        save.disabled = drop.disabled = false;
      }
    }

    function onSubmit(e) {
      e.preventDefault();
      let gate;
      try {
        gate = fields.read();
      } catch (err) {
        replace(status, notice(err.message, "warn", "gate-error"));
        return;
      }
      put(gate);
    }

    function update() {
      drop.hidden = !dep.gate;
      save.textContent = dep.gate ? "Save gate" : "Add gate";
      replace(lead, dep.gate ? `Now: ${gateText(dep.gate)}. Changing it does not move the deployment; it applies to the next promotion.`
        : "No gate yet: add one so that a new model replaces the current one only when it scores better.");
    }
    update();
    return { el: h("form", { class: "card", testid: "gate-form", onsubmit: onSubmit },
      h("h2", {}, "Gate"), lead, fields.el, h("div", { class: "actions" }, save, drop), status), update };
  }

  // ---- promote: propose a model, score both, move only if it wins
  function promoteCard() {
    const adapterList = adapters.status === "fulfilled" ? adapters.value : [];
    const baseList = models.status === "fulfilled" ? models.value : [];
    const choice = h("select", { id: "promote-model", testid: "promote-model" });
    const other = h("input", { id: "promote-model-other", testid: "promote-model-other", autocomplete: "off",
      placeholder: "base:adapter, a model or a router", hidden: true });
    const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "promote-submit" }, "Score and promote");
    const forceNoGate = h("button", { type: "button", class: "btn btn-danger", testid: "promote-force",
      onclick: () => run(true) }, "Move without scores");
    const lead = h("p", { class: "help" });
    const result = h("div", { "aria-live": "polite", testid: "promote-outcome" });
    let busy = false;

    function drawOptions() {
      const keep = choice.value;
      const opt = (id, label) => h("option", { value: id, disabled: id === dep.model },
        id === dep.model ? `${label} (current)` : label);
      replace(choice,
        h("option", { value: "" }, "Choose a model…"),
        adapterList.length ? h("optgroup", { label: "Adapters" }, adapterList.map((a) =>
          opt(a.model_id, `${a.model_id} (${[a.method, a.dataset ? `trained on ${a.dataset}` : null].filter(Boolean).join(", ")})`))) : null,
        baseList.length ? h("optgroup", { label: "Base models" }, baseList.map((m) => opt(m.name, m.name))) : null,
        h("option", { value: OTHER }, "Another model id (type it)…"));
      choice.value = keep && keep !== dep.model && [...choice.options].some((o) => o.value === keep) ? keep : "";
      other.hidden = choice.value !== OTHER;
    }
    choice.addEventListener("change", () => {
      other.hidden = choice.value !== OTHER;
      if (!other.hidden) other.focus();
    });

    function chosen() {
      return choice.value === OTHER ? other.value.trim() : choice.value;
    }

    function update() {
      drawOptions();
      submit.disabled = busy || !dep.gate;
      forceNoGate.hidden = Boolean(dep.gate);
      forceNoGate.disabled = busy;
      replace(lead, dep.gate
        ? ["Now on ", h("code", { testid: "promote-current" }, dep.model), `. The proposed model and the current one both answer the test set ${dep.gate.data}; it moves only if the new score is at least the current one ${signed(dep.gate.margin)}.`]
        : ["Now on ", h("code", { testid: "promote-current" }, dep.model), ". It has no gate, so nothing is scored: add a gate below to promote on scores, or move it without scores."]);
    }

    async function run(force) {
      const model = chosen();
      if (!model) {
        replace(result, notice("Choose the model to propose first.", "warn", "promote-error"));
        return;
      }
      if (force && !confirm(dep.gate
        ? `Move “${dep.name}” to ${model} even though it did not win on the gate? The history will say it was forced.`
        : `Move “${dep.name}” to ${model} without scoring it?`)) return;
      const from = dep.model;
      busy = true;
      update();
      const started = Date.now();
      const text = h("span", { class: "progress-text", testid: "promote-progress-text" });
      const tick = () => {
        const s = Math.round((Date.now() - started) / 1000);
        text.textContent = `${dep.gate ? `Scoring ${model} and ${from} on ${dep.gate.data}` : `Moving to ${model}`}… ${s} s`;
      };
      tick();
      const timer = setInterval(tick, 1000);
      ctx.onLeave(() => clearInterval(timer));
      replace(result, h("div", { testid: "promote-progress", role: "status" },
        h("div", { class: "progress" },
          h("div", { class: "progress-track indeterminate" }, h("div", { class: "progress-fill", style: "width: 30%" })), text),
        dep.gate ? h("p", { class: "help" }, "Each model answers every item of the test set; a model scored on it before is not scored again. This can take from seconds to minutes. The deployment keeps answering with ", h("code", {}, from), " meanwhile; if you leave this page, the outcome still shows in the history.") : null));
      try {
        const ev = await api(`${path}/promote`, { method: "POST", json: { model, force } });
        if (!ctx.alive) return;
        replace(result, movedView(ev));
      } catch (e) {
        if (!ctx.alive) return;
        const d = (e.details || [])[0];
        if (e.status === 409 && d && typeof d.score === "number") replace(result, refusedView(e, d));
        else replace(result, errorBox(e, "promote-error"));
      } finally {
        clearInterval(timer);
        busy = false;
      }
      await refresh();
    }

    function movedView(ev) {
      const forced = ev.action === "forced";
      return h("div", { class: `alert alert-${forced ? "warn" : "ok"}`, role: "status", testid: "promote-result", "data-action": ev.action },
        h("p", {}, h("strong", {}, forced ? "Moved anyway. " : "Promoted. "), `“${dep.name}” now answers with `,
          h("code", {}, ev.model), " (was ", h("code", {}, ev.previous || "–"), ")."),
        typeof ev.score === "number" ? scoreTable(ev) : null,
        ev.note ? h("p", { class: "small" }, ev.note) : null);
    }

    function refusedView(e, d) {
      const again = h("button", { type: "button", class: "btn btn-small btn-danger", testid: "promote-anyway",
        onclick: () => run(true) }, "Promote anyway");
      return h("div", { class: "alert alert-error", role: "alert", testid: "promote-refused" },
        h("p", {}, h("strong", {}, "Refused. "), `“${dep.name}” stays on `, h("code", { testid: "refused-stays" }, d.previous),
          ": ", h("code", {}, d.model), ` did not beat it by the margin (${signed(d.margin)}).`),
        scoreTable(d),
        h("p", { class: "small muted" }, e.message),
        h("div", { class: "actions" }, again,
          h("span", { class: "help" }, "Skips the gate; the history records it as forced. Usually better: improve the model, or lower the margin.")));
    }

    update();
    const clear = () => replace(result); // an outcome that a later move makes stale
    const el = h("form", { class: "card", testid: "promote-form", onsubmit: (e) => { e.preventDefault(); run(false); } },
      h("h2", {}, "Promote a new model"), lead,
      h("div", { class: "grid-2" },
        h("div", { class: "field" }, h("label", { for: "promote-model" }, "Proposed model"), choice, other,
          h("p", { class: "help" }, "An adapter or base model from the registry, or any model id the server serves."))),
      h("div", { class: "actions" }, submit, forceNoGate), result);
    return { el, update, clear };
  }

  // ---- history and rollback
  function drawHistory() {
    replace(historyBox, table([
      { label: "When", get: (e) => h("span", { class: "nowrap" }, fmtTime(e.created_at)) },
      { label: "What", get: (e) => actionBadge(e.action) },
      { label: "Model", get: (e) => (e.model ? h("code", { testid: "history-model" }, e.model) : "–") },
      { label: "Was", get: (e) => (e.previous ? h("code", { testid: "history-previous" }, e.previous) : "–") },
      { label: "Scores", get: (e) => h("span", { testid: "history-scores" }, scoresText(e)) },
      { label: "Note", get: (e) => (e.note ? h("span", { class: "clip small" }, e.note) : "–") },
    ], events, { testid: "history-table", empty: "No history yet.",
      rowAttrs: (e) => ({ testid: "history-row", "data-action": e.action, "data-model": e.model || "" }) }));

    // what it can go back to: every model it pointed at (the server checks the same)
    const moves = events.filter((e) => ["created", "updated", "promoted", "forced", "rolled back"].includes(e.action));
    const before = moves.find((e) => e.model === dep.model && e.previous);
    const targets = [...new Set(moves.flatMap((e) => [e.model, e.previous]).filter((m) => m && m !== dep.model))];
    if (!targets.length) {
      replace(rollbackBox, h("p", { class: "muted", testid: "rollback-none" }, "Nothing to roll back to: it has only ever pointed at ",
        h("code", {}, dep.model), "."));
      return;
    }
    const to = h("select", { id: "rollback-to", testid: "rollback-to" },
      targets.map((m) => h("option", { value: m, selected: before && m === before.previous },
        before && m === before.previous ? `${m} (the one before)` : m)));
    const go = h("button", { type: "submit", class: "btn", testid: "rollback-submit" }, "Roll back");
    const status = h("div", { "aria-live": "polite" });
    async function onSubmit(e) {
      e.preventDefault();
      go.disabled = true;
      try {
        const target = to.value;
        const json = before && target === before.previous ? {} : { to: target };
        const ev = await api(`${path}/rollback`, { method: "POST", json });
        if (!ctx.alive) return;
        promote.clear();
        await refresh();
        rollbackBox.append(h("div", { class: "alert alert-ok", role: "status", testid: "rollback-status" },
          h("strong", {}, "Rolled back. "), `“${dep.name}” now answers with `, h("code", {}, ev.model),
          " (was ", h("code", {}, ev.previous || "–"), ")."));
      } catch (err) {
        if (!ctx.alive) return;
        go.disabled = false;
        replace(status, errorBox(err, "rollback-error"));
      }
    }
    replace(rollbackBox, h("form", { testid: "rollback-form", onsubmit: onSubmit },
      h("div", { class: "field inline-field" }, h("label", { for: "rollback-to" }, "Go back to"), to, go),
      h("p", { class: "help" }, "No scores are needed to go back: it moves at once, and the history keeps the move."), status));
  }

  drawSummary();
  await refresh();
}

const ACTION_STYLE = { promoted: "succeeded", forced: "cancelled", refused: "failed", "rolled back": "running" };

function actionBadge(action) {
  return h("span", { class: `badge badge-${ACTION_STYLE[action] || "none"}`, testid: "history-action" }, action);
}

function scoresText(e) {
  if (typeof e.score !== "number") return "–";
  return `${e.metric || "score"} ${fmtScore(e.score)} vs ${fmtScore(e.previous_score)} (margin ${signed(e.margin)})`;
}

/** Proposed vs current vs needed, for a promotion event or a refusal's details. */
function scoreTable(d) {
  const rows = [
    { who: "Proposed", model: d.model, score: d.score, testid: "score-proposed" },
    { who: "Current", model: d.previous, score: d.previous_score, testid: "score-current" },
    { who: `Needed to win (current ${signed(d.margin)})`, model: "", score: typeof d.previous_score === "number" ? d.previous_score + (d.margin || 0) : null, testid: "score-needed" },
  ];
  return h("div", { class: "table-wrap" }, h("table", { testid: "promote-scores", class: "small" },
    d.task ? h("caption", { class: "help" }, `On the gate task ${d.task}.`) : null,
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Model"), h("th", { class: "num" }, d.metric || "score"))),
    h("tbody", {}, rows.map((r) => h("tr", { testid: r.testid },
      h("td", {}, r.who), h("td", {}, r.model ? h("code", {}, r.model) : ""), h("td", { class: "num" }, fmtScore(r.score)))))));
}
