// Playground: ask several models the same thing, read the answers side by side, and say which is
// better or give one answer a thumb up or down. A pick is stored as a preference pair (POST
// /api/preferences, DPO data), a thumb as feedback (POST /api/feedback, KTO data); the panel
// below the form saves either as a dataset and links to training on it: the business user's
// taste turned into training data.

import { api, chatModelId, withQuery } from "../api.js";
import { errorBox, h, loading, notice, replace } from "../dom.js";

const DEFAULTS = { temperature: 0.7, max_tokens: 64 };


/** An answer as stored: without NUL characters, which are never text (small models emit them) and
 *  which the preferences API refuses; the page shows the answer the same way with or without them. */
function printable(text) {
  return text.replace(/\u0000/g, "");
}

export async function playgroundPage(ctx) {
  const box = h("div", {}, loading("Loading models…"));
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Playground"),
      h("p", { class: "lead" }, "Ask two or more models the same question, pick the better answer or give an answer a thumb up or down. Your judgements are saved and can become training data.")),
    box));

  let cards;
  try {
    cards = (await api("/v1/models")).data || [];
  } catch (e) {
    if (ctx.alive) replace(box, errorBox(e, "pg-models-error"));
    return;
  }
  if (!ctx.alive) return;
  const options = cards.filter((c) => c.type !== "embedding").map((c) => ({ id: chatModelId(c), card: c }));
  // models asked for in the link (a finished job's adapter, say) are selected, even if the list
  // does not name them that way: the server resolves BASE:ADAPTER itself
  const wanted = (ctx.query.get("models") || "").split(",").map((x) => x.trim()).filter(Boolean);
  for (const w of wanted) {
    if (!options.some((o) => o.id === w || o.card.id === w)) options.push({ id: w, card: { id: w } });
  }
  if (!options.length) {
    replace(box, notice("No chat models are available. Register one with `modelmill models add`.", "warn", "pg-no-models"));
    return;
  }
  const selected = new Set(wanted.length
    ? options.filter((o) => wanted.includes(o.id) || wanted.includes(o.card.id)).map((o) => o.id)
    : options.slice(0, 2).map((o) => o.id));

  const checks = options.map((o) => h("label", { class: "chip" },
    h("input", { type: "checkbox", value: o.id, checked: selected.has(o.id), testid: "pg-model", "data-model": o.id }),
    " ", o.id, o.card.type === "deployment" ? h("span", { class: "muted" }, ` (deployment of ${o.card.parent})`)
      : o.card.method ? h("span", { class: "muted" }, ` (${o.card.method})`) : null));
  const system = h("textarea", { id: "pg-system", testid: "pg-system", rows: 2, placeholder: "Optional: how the assistant should behave" });
  const message = h("textarea", { id: "pg-message", testid: "pg-message", rows: 3, required: true,
    placeholder: "Ask something a customer would ask…" });
  const temperature = h("input", { id: "pg-temperature", testid: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1,
    value: DEFAULTS.temperature });
  const maxTokens = h("input", { id: "pg-max-tokens", testid: "pg-max-tokens", type: "number", min: 1, max: 4096, step: 1,
    value: DEFAULTS.max_tokens });
  const send = h("button", { type: "submit", class: "btn btn-primary", testid: "pg-send" }, "Ask all selected models");
  const hint = h("p", { class: "help", testid: "pg-hint", "aria-live": "polite" });
  const answers = h("div", { testid: "pg-answers" });

  message.addEventListener("keydown", (e) => { // Ctrl/Cmd+Enter sends, plain Enter makes a new line
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });

  async function onSend(e) {
    e.preventDefault();
    const models = checks.map((c) => c.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    if (models.length < 2) {
      hint.textContent = "Select at least two models to compare.";
      return;
    }
    if (!message.value.trim()) {
      hint.textContent = "Type a message first.";
      return;
    }
    hint.textContent = "";
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    messages.push({ role: "user", content: message.value });
    const temp = Number(temperature.value);
    const maxTok = Math.max(1, Math.round(Number(maxTokens.value) || DEFAULTS.max_tokens));
    // keep the selection in the URL: reloading or sharing the page gives the same comparison
    history.replaceState(null, "", withQuery("#/playground", { models: models.join(",") }));
    send.disabled = true;
    await ask(models, messages, Number.isFinite(temp) ? temp : DEFAULTS.temperature, maxTok);
    send.disabled = false;
  }

  async function ask(models, messages, temp, maxTok) {
    const confirm = h("div", { testid: "pg-confirm-box", "aria-live": "polite" });
    const round = models.map((m) => ({ model: m, text: null, error: null, ms: 0 }));
    const cols = round.map((r) => {
      const col = h("article", { class: "answer", testid: "pg-answer", "data-model": r.model, "data-state": "waiting" },
        h("header", {}, h("strong", {}, r.model)), h("div", { class: "answer-body" }, loading("Thinking…")));
      r.col = col;
      return col;
    });
    replace(answers, h("p", { class: "asked" }, h("span", { class: "muted" }, "You asked: "), messages.at(-1).content),
      h("div", { class: "answers-grid", style: `--cols: ${Math.min(cols.length, 4)}` }, cols), confirm);
    // one request per model, all at once: the server batches them
    await Promise.all(round.map(async (r) => {
      const t0 = performance.now();
      try {
        const res = await api("/v1/chat/completions", { method: "POST",
          json: { model: r.model, messages, temperature: temp, max_tokens: maxTok, stream: false } });
        r.text = ((res.choices || [])[0] || {}).message?.content ?? "";
        r.usage = res.usage;
      } catch (err) {
        r.error = err;
      }
      r.ms = performance.now() - t0;
      if (ctx.alive) drawAnswer(r);
    }));
    if (!ctx.alive) return;
    for (const r of round) drawAnswer(r, round, messages, confirm);
  }

  function drawAnswer(r, round = null, messages = null, confirm = null) {
    const body = r.col.querySelector(".answer-body");
    r.col.dataset.state = r.error ? "error" : "done";
    if (r.error) {
      replace(body, errorBox(r.error, "pg-answer-error"));
      return;
    }
    const others = round ? round.filter((o) => o !== r && !o.error && printable(o.text || "").trim()) : [];
    const prefer = h("button", { type: "button", class: "btn btn-small", testid: "pg-prefer", "data-model": r.model,
      disabled: !round || !printable(r.text).trim() || !others.length || round.picked,
      title: !printable(r.text).trim() ? "An empty answer cannot be chosen" : !others.length && round ? "No other answer to compare with" : null,
      onclick: () => choose(r, others, round, messages, confirm) }, r.won ? "✓ Your pick" : "This one is better");
    const thumbs = round ? [true, false].map((good) => h("button", { type: "button", class: "btn btn-small btn-thumb",
      testid: good ? "pg-thumb-up" : "pg-thumb-down", "data-model": r.model, "aria-pressed": r.thumb === good ? "true" : "false",
      "aria-label": good ? "Good answer" : "Bad answer", title: good ? "Good answer" : "Bad answer",
      disabled: !printable(r.text).trim() || r.thumb !== undefined,
      onclick: () => thumb(r, good, messages, round, confirm) }, good ? "👍" : "👎")) : [];
    replace(body,
      h("div", { class: "answer-text", testid: "pg-answer-text" }, r.text.trim() ? r.text : h("span", { class: "muted" }, "(empty answer)")),
      h("footer", {}, h("span", { class: "muted small" }, `${(r.ms / 1000).toFixed(1)} s`,
        r.usage && r.usage.completion_tokens !== undefined ? ` · ${r.usage.completion_tokens} tokens` : ""),
        h("span", { class: "answer-actions" }, ...thumbs, prefer)));
  }

  async function thumb(r, good, messages, round, confirm) {
    r.thumb = good; // one thumb per answer: both buttons stop while it is saved
    drawAnswer(r, round, messages, confirm);
    try {
      await api("/api/feedback", { method: "POST", json: { messages, completion: printable(r.text), label: good, model: r.model } });
    } catch (err) {
      r.thumb = undefined;
      if (!ctx.alive) return;
      drawAnswer(r, round, messages, confirm);
      replace(confirm, errorBox({ message: `Not saved for ${r.model}: ${err.message}`, details: err.details }, "pg-thumb-error"));
      return;
    }
    if (!ctx.alive) return;
    replace(confirm, h("div", { class: "alert alert-ok", role: "status", testid: "pg-confirm" },
      `Saved: thumbs ${good ? "up" : "down"} for ${r.model}.`));
    refreshSaved();
  }

  async function choose(winner, losers, round, messages, confirm) {
    for (const b of answers.querySelectorAll("[data-testid=pg-prefer]")) b.disabled = true;
    replace(confirm, loading("Saving your choice…"));
    const saved = [];
    const failed = [];
    for (const loser of losers) { // "better than each of the others": one pair per other answer
      try {
        await api("/api/preferences", { method: "POST", json: { messages, chosen: printable(winner.text), rejected: printable(loser.text),
          chosen_model: winner.model, rejected_model: loser.model } });
        saved.push(loser.model);
      } catch (err) {
        failed.push([loser.model, err]);
      }
    }
    if (!ctx.alive) return;
    winner.col.classList.add("chosen");
    if (saved.length) { // a thumb given later redraws the answers: they keep the pick
      round.picked = true;
      winner.won = true;
    }
    const mine = winner.col.querySelector("[data-testid=pg-prefer]");
    if (mine && saved.length) mine.textContent = "✓ Your pick";
    replace(confirm,
      saved.length ? h("div", { class: "alert alert-ok", role: "status", testid: "pg-confirm" },
        `Saved: ${winner.model} preferred over ${saved.join(", ")}. `,
        "Thanks! Your picks can later train a model to answer the way you prefer.") : null,
      failed.map(([m, err]) => errorBox({ message: `Not saved for ${m}: ${err.message}`, details: err.details }, "pg-prefer-error")));
    if (!saved.length) {
      for (const r of round) drawAnswer(r, round, messages, confirm); // let the user try again
    }
    refreshSaved();
  }

  // ---- what has been judged so far, saved as a dataset to train on
  const savedCounts = h("p", { testid: "pg-saved-counts" }, loading("Counting…"));
  const exportName = h("input", { id: "pg-export-name", testid: "pg-export-name", type: "text", value: "playground",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}", required: true });
  const exportBox = h("div", { testid: "pg-export-result", "aria-live": "polite" });
  const exportButtons = [["preference", "Save picks as a dataset", "dpo", "/api/preferences/export"],
    ["feedback", "Save thumbs as a dataset", "kto", "/api/feedback/export"]].map(([kind, label, method, path]) =>
    h("button", { type: "button", class: "btn", testid: `pg-export-${kind}`, "data-kind": kind,
      onclick: () => saveAs(kind, method, path) }, label));

  async function refreshSaved() {
    let prefs, thumbs;
    try {
      [prefs, thumbs] = await Promise.all([api("/api/preferences?limit=1"), api("/api/feedback?limit=1")]);
    } catch (err) {
      if (ctx.alive) replace(savedCounts, errorBox(err, "pg-saved-error"));
      return;
    }
    if (!ctx.alive) return;
    savedCounts.dataset.preferences = prefs.total;
    savedCounts.dataset.feedback = thumbs.total;
    replace(savedCounts, `${prefs.total} pick${prefs.total === 1 ? "" : "s"} (one answer better than another) · `,
      `${thumbs.total} thumb${thumbs.total === 1 ? "" : "s"} (${thumbs.up} up, ${thumbs.total - thumbs.up} down)`);
    exportButtons[0].disabled = !prefs.total;
    exportButtons[1].disabled = !thumbs.total;
  }

  async function saveAs(kind, method, path) {
    if (!exportName.reportValidity()) return;
    for (const b of exportButtons) b.disabled = true;
    replace(exportBox, loading("Saving…"));
    try {
      const ds = await api(path, { method: "POST", json: { name: exportName.value.trim() } });
      if (!ctx.alive) return;
      replace(exportBox, h("div", { class: "alert alert-ok", role: "status", testid: "pg-export-ok" },
        `${ds.created ? "Saved" : "Already saved"} as dataset ${ds.ref} (${ds.num_records} records). `,
        h("a", { href: withQuery("#/train", { method, data: ds.name }), testid: "pg-export-train" },
          `Train with it (${method.toUpperCase()})`)));
    } catch (err) {
      if (ctx.alive) replace(exportBox, errorBox(err, "pg-export-error"));
    }
    refreshSaved();
  }

  const savedPanel = h("section", { class: "card", testid: "pg-saved" },
    h("h2", {}, "Your judgements"), savedCounts,
    h("div", { class: "field" }, h("label", { for: "pg-export-name" }, "Dataset name"), exportName,
      h("p", { class: "help" }, "Picks train with DPO (or ORPO), thumbs with KTO. Saving again adds a new version when there is more.")),
    h("div", { class: "actions" }, ...exportButtons), exportBox);

  const form = h("form", { class: "card", testid: "pg-form", onsubmit: onSend },
    h("fieldset", { class: "chips" }, h("legend", {}, "Models"), checks),
    h("div", { class: "field" }, h("label", { for: "pg-message" }, "Message"), message,
      h("p", { class: "help" }, "Ctrl+Enter sends.")),
    h("details", {}, h("summary", {}, "Settings"),
      h("div", { class: "grid-3" },
        h("div", { class: "field" }, h("label", { for: "pg-temperature" }, "Temperature"), temperature,
          h("p", { class: "help" }, "0 gives the same answer every time; higher is more varied.")),
        h("div", { class: "field" }, h("label", { for: "pg-max-tokens" }, "Longest answer (tokens)"), maxTokens),
        h("div", { class: "field" }, h("label", { for: "pg-system" }, "System prompt"), system))),
    h("div", { class: "actions" }, send), hint);
  replace(box, form, answers, savedPanel);
  refreshSaved();
}
