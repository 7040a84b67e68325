// Dialogue bots (bot:NAME) on the Apps page. A bot is four modules on one base model: intent and
// extract read a user's turn as dialogue acts ("Inform 酒店 价格 800-1000元", "Request 酒店 地址"),
// the conversation's tracked state narrows the domain's business table, then followup asks for a
// required slot not heard yet, or answer says the acts the bot chose from the row it picked.
// Here: what a bot is made of, a chat that shows each turn's acts, lookup and modules beside the
// tracked state, the bot's recent conversations (open one to read it and go on), and the form that
// publishes a bot file. It calls /api/apps/bots, /api/apps/{name}/chat and
// /api/apps/conversations: the library calls `modelmill apps bot ...` makes.

import { api, withQuery } from "../api.js";
import { errorBox, fmtNum, fmtTime, h, loading, notice, replace, table } from "../dom.js";
import { appHref, specOf, yamlAppForm } from "./appfiles.js";

/** The four modules in the order a turn runs them, each with its job in plain words. */
const MODULES = [
  ["intent", "reads which domain the user's turn is about and what kinds of acts it has"],
  ["extract", "lists the user's acts: what they tell (a slot and its value) and what they ask for"],
  ["followup", "asks for a required slot the user has not given yet"],
  ["answer", "says the acts the bot chose (values from the chosen row) in words"],
];

/** What a dialogue act means, for a tooltip and the acts tables. */
const ACTS = {
  Inform: "tells a value", Request: "asks for a slot", General: "small talk (greet, thank, bye)",
  NoOffer: "no row matches", Select: "near a place chosen earlier", Recommend: "recommends",
};

const isNone = (v) => v === null || v === undefined || v === "" || v === "none";
const plural = (n, word) => `${fmtNum(n)} ${word}${n === 1 ? "" : "s"}`;
const modelIdOf = (app) => app.model_id || `bot:${app.name}`;

/** How a module runs: an adapter of the base, the base with few-shot examples in its prompt, or the bare base. */
function moduleHow(outline, module) {
  const m = (outline.modules || {})[module] || {};
  const base = outline.base || outline.base_model;
  if (m.prompted) return { how: "prompt", text: "few-shot prompt", title: `${m.model} with examples from the training data in its prompt` };
  if (m.model && m.model === base) return { how: "base", text: "the base, no examples", title: "the base model asked without examples" };
  return { how: "adapter", text: "adapter", title: `a LoRA adapter of ${base || "the base"}, trained for this module` };
}

function howBadge(outline, module) {
  const w = moduleHow(outline, module);
  return h("span", { class: `badge badge-${w.how}`, title: w.title, testid: "bot-module-how" }, w.text);
}

/** The modules of a bot (a published app or a checked file's outline): model, and adapter or prompt. */
function modulesTable(outline, testid = "bot-modules") {
  const mods = outline.modules || {};
  const rows = [...MODULES.filter(([m]) => m in mods), ...Object.keys(mods).filter((m) => !MODULES.some(([k]) => k === m)).map((m) => [m, ""])];
  return table([
    { label: "Module", get: ([m, job]) => [h("code", {}, m), job ? h("div", { class: "help" }, job) : null] },
    { label: "Model", get: ([m]) => h("code", {}, mods[m].model || "–") },
    { label: "Runs as", get: ([m]) => howBadge(outline, m) },
  ], rows, { testid, empty: "No modules.",
    rowAttrs: ([m]) => ({ testid: "bot-module-row", "data-module": m, "data-how": moduleHow(outline, m).how }) });
}

/** The domains of a bot: the table each is looked up in and the slots it must hear first. */
function domainsTable(outline, testid = "bot-domains") {
  const doms = Object.entries(outline.domains || {});
  return table([
    { label: "Domain", get: ([d]) => h("strong", {}, d) },
    { label: "Table", get: ([, v]) => h("code", {}, v.table || "–") },
    { label: "Required slots", get: ([, v]) => ((v.required || []).length
      ? (v.required || []).map((r, i) => [i ? ", " : "", h("code", {}, r)])
      : h("span", { class: "muted" }, "none: it looks up with whatever it has heard")) },
  ], doms, { testid, empty: "No domains.",
    rowAttrs: ([d, v]) => ({ testid: "bot-domain-row", "data-domain": d, "data-table": v.table || "" }) });
}

/** A bot's cell in the apps list: its base, which modules are adapters and which prompts, its domains. */
export function botAbout(a) {
  const sp = specOf(a);
  const outline = { base: sp.base || a.base_model, modules: sp.modules || {}, domains: sp.domains || {} };
  const by = { adapter: [], prompt: [], base: [] };
  for (const [m] of MODULES) if (m in outline.modules) by[moduleHow(outline, m).how].push(m);
  const list = (names) => names.map((n, i) => [i ? ", " : "", h("code", {}, n)]);
  return h("div", { testid: "bot-about" },
    sp.description ? h("div", {}, sp.description) : null,
    h("div", {}, "On ", h("code", { testid: "bot-base" }, outline.base || "–"),
      by.adapter.length ? [" · adapters: ", h("span", { testid: "bot-adapters" }, list(by.adapter))] : null,
      by.prompt.length ? [" · few-shot prompts: ", h("span", { testid: "bot-prompts" }, list(by.prompt))] : null,
      by.base.length ? [" · the bare base: ", list(by.base)] : null),
    h("div", { class: "muted", testid: "bot-domains-about" }, "Domains: ",
      Object.entries(outline.domains).map(([d, v], i) => [i ? "; " : "", h("strong", {}, d), " → table ", h("code", {}, v.table),
        (v.required || []).length ? ` (needs ${(v.required || []).join(", ")})` : ""])));
}

// ---------------------------------------------------------------------------- publishing a bot file

export function botForm(ctx, onPublished) {
  return yamlAppForm(ctx, {
    what: "bot", prefix: "bot", modelPrefix: "bot:", title: "Publish a bot", onPublished,
    checkUrl: "/api/apps/bots/check", publishUrl: "/api/apps/bots",
    replaceLabel: "Replace the published bot of this name (a new version; its conversations go on)",
    placeholder: "base: smollm2-135m-instruct\nmodules:\n  intent: {model: travel-intent}\n  extract: {model: travel-extract}\n"
      + "  followup: {model: smollm2-135m-instruct, examples: [[\"用户: 我要打车\\ndomain: 出租\\nmissing: 出发地\", \"请问您从哪里出发？\"]]}\n"
      + "  answer: {model: travel-answer}\ndomains:\n  酒店: {table: travel-hotel}\n  出租: {table: travel-taxi, required: [出发地, 目的地]}",
    help: h("p", { class: "help" }, "A bot file names the base model, its four modules (intent, extract, followup, answer: each an adapter of the base, or the base with few-shot ",
      h("code", {}, "examples"), ") and, for each domain, the business table it looks rows up in and the slots it must hear before it answers. ",
      h("code", {}, "modelmill apps bot build NAME --dialogues F --database D"),
      " makes one from an annotated dialogue dataset (training data, tables, adapters and the file); publish an edited file here."),
    checked: (r) => [
      h("p", {}, h("strong", {}, "No problems. "), "On base ", h("code", {}, r.base), "; ",
        plural(Object.keys(r.modules || {}).length, "module"), ", ", plural(Object.keys(r.domains || {}).length, "domain"), "."),
      modulesTable(r, "bot-check-modules"), domainsTable(r, "bot-check-domains")],
    published: (app) => [`Published: call model “bot:${app.name}” at /v1/chat/completions (send metadata.conversation_id to go on with a conversation), or `,
      h("a", { href: appHref(app.name), testid: "bot-open" }, "open it here to talk to it"), "."],
  });
}

// ---------------------------------------------------------------------------- one turn

/** Dialogue acts [act, domain, slot, value] as a small table; `empty` when there are none. */
function actsTable(acts, testid, empty) {
  const rows = (acts || []).filter(Array.isArray);
  if (!rows.length) return h("p", { class: "muted", testid: `${testid}-empty` }, empty);
  const cell = (v) => (isNone(v) ? h("span", { class: "muted" }, "–") : String(v));
  return table([
    { label: "Act", get: (a) => h("code", { title: ACTS[a[0]] || "" }, a[0]) },
    { label: "Domain", get: (a) => cell(a[1]) },
    { label: "Slot", get: (a) => cell(a[2]) },
    { label: "Value", get: (a) => cell(a[3]) },
  ], rows, { testid, rowAttrs: (a) => ({ testid: "act-row", "data-act": a[0], "data-slot": isNone(a[2]) ? "" : a[2] }) });
}

function turnSummary(t) {
  const acts = (t.user_acts || []).length;
  return [t.kind === "followup" ? "asked a follow-up question" : "answered",
    `${plural(acts, "act")} understood`,
    t.domain ? `${plural(t.matches || 0, "matching row")}` : "nothing looked up",
    `${fmtNum(t.ms, 0)} ms`].join(" · ");
}

/** A bot turn: the user's words, the reply, and (collapsed) what it understood, decided, looked up, ran. */
function turnView(t, outline, index) {
  const followup = t.kind === "followup";
  const dom = t.domain ? (outline.domains || {})[t.domain] || {} : null;
  const intent = t.intent || null;
  const missing = followup ? (t.system_acts || []).filter((a) => a[0] === "Request").map((a) => a[2]) : [];
  const tokens = (m) => `${fmtNum(m.prompt_tokens || 0)} in · ${fmtNum(m.completion_tokens || 0)} out`;
  return h("div", { class: "chat-turn", testid: "chat-turn", "data-turn": index, "data-kind": t.kind || "" },
    h("div", { class: "bubble bubble-user", testid: "chat-user" }, t.user),
    h("div", { class: `bubble bubble-bot${followup ? " bubble-followup" : ""}`, testid: "chat-reply" },
      h("div", { class: "bubble-meta" },
        h("span", { class: `badge badge-${followup ? "followup" : "answer"}`, testid: "chat-kind" },
          followup ? "follow-up question" : "answer")),
      h("div", { class: "bubble-text", testid: "chat-reply-text" }, t.reply ? t.reply : h("span", { class: "muted" }, "(an empty reply)"))),
    h("details", { class: "turn-details", testid: "chat-details" },
      h("summary", { testid: "chat-details-open" }, "How it got there: ", h("span", { class: "muted" }, turnSummary(t))),
      h("div", { class: "turn-sections" },
        h("section", { testid: "chat-understood" },
          h("h4", {}, "Understood from the user"),
          actsTable(t.user_acts, "chat-user-acts", "No dialogue acts: the modules named nothing this bot knows in this message."),
          intent && (intent.domains || []).length + (intent.general || []).length
            ? h("p", { class: "help" }, "Intent module: ", [...(intent.domains || []), ...(intent.acts || []), ...(intent.general || [])].join(" ")) : null),
        h("section", { testid: "chat-decided" },
          h("h4", {}, "What the bot did"),
          h("p", { testid: "chat-decision", "data-kind": t.kind || "" }, followup
            ? ["Asked a follow-up question: ", h("strong", {}, t.domain || "this domain"), " needs ",
              missing.map((m, i) => [i ? ", " : "", h("code", {}, m)]), " before it can look anything up."]
            : "Answered with these acts (the answer module says them in words):"),
          actsTable(t.system_acts, "chat-system-acts", "No acts.")),
        h("section", { testid: "chat-lookup" },
          h("h4", {}, "Looked up"),
          t.domain
            ? [h("p", {}, "Table ", h("code", {}, dom.table || "–"), ` for ${t.domain}: `,
              h("strong", { testid: "chat-matches", "data-matches": t.matches ?? 0 }, plural(t.matches || 0, "matching row")),
              " (every tracked constraint applied)."),
            h("p", {}, "Chosen: ", t.record ? h("strong", { testid: "chat-record" }, String(t.record))
              : h("span", { class: "muted", testid: "chat-record-none" }, followup ? "none yet" : "none (nothing matches)"))]
            : h("p", { class: "muted", testid: "chat-no-domain" }, "No domain this turn, so no table was looked up.")),
        h("section", { testid: "chat-modules-section" },
          h("h4", {}, "Modules"),
          table([
            { label: "Module", get: (m) => h("code", {}, m.module) },
            { label: "Model", get: (m) => [h("code", {}, m.model), " ", howBadge(outline, m.module)] },
            { label: "ms", class: "num", get: (m) => fmtNum(m.ms, 0) },
            { label: "Tokens", class: "nowrap", get: tokens },
            { label: "Output", get: (m) => h("span", { class: "clip small" }, m.output || "") },
          ], t.modules || [], { testid: "chat-modules", empty: "No modules ran.",
            rowAttrs: (m) => ({ testid: "chat-module-row", "data-module": m.module }) }),
          h("p", { class: "help" }, `The whole turn: ${fmtNum(t.ms, 0)} ms.`)))));
}

// ---------------------------------------------------------------------------- the tracked state

/** The conversation's state: constraints per domain, the chosen entity, what is asked and still needed. */
function stateView(state, outline) {
  if (!state) {
    return h("p", { class: "muted", testid: "bot-state-none" }, "Nothing yet: the state appears with the first reply.");
  }
  const cons = state.constraints || {};
  const selected = state.selected || {};
  const offered = state.offered || {};
  const requested = Object.entries(state.requested || {}).filter(([, v]) => (v || []).length);
  const known = (d) => d in (outline.domains || {});
  // the active domain first; one the bot has no table for (a module's stray word) only as text above
  const domains = [...new Set([...(known(state.domain) ? [state.domain] : []), ...Object.keys(cons), ...Object.keys(selected)])];
  return h("div", { testid: "bot-state-view", "data-turns": state.turns ?? 0, "data-domain": state.domain || "" },
    h("dl", { class: "facts" },
      h("dt", {}, "Turns"), h("dd", { testid: "bot-state-turns" }, fmtNum(state.turns ?? 0)),
      h("dt", {}, "Talking about"), h("dd", { testid: "bot-state-active" },
        state.domain ? [h("strong", {}, state.domain), known(state.domain) ? null
          : h("span", { class: "muted small" }, " (not a domain of this bot: nothing is looked up)")]
          : h("span", { class: "muted" }, "no domain yet")),
      state.asked ? [h("dt", {}, "Waiting for"), h("dd", { testid: "bot-state-asked" }, h("code", {}, state.asked))] : null,
      requested.length ? [h("dt", {}, "Asked for"), h("dd", { testid: "bot-state-requested" },
        requested.map(([d, slots], i) => [i ? "; " : "", `${d}: `, slots.join(", ")]))] : null),
    domains.length ? domains.map((d) => domainState(d, cons[d] || {}, selected[d], offered[d] || [], (outline.domains || {})[d] || {}))
      : h("p", { class: "muted", testid: "bot-state-empty" }, "No constraints heard yet (a price, an area, where to leave from…)."));
}

function domainState(d, cons, chosen, offered, dom) {
  const slots = Object.entries(cons);
  const missing = (dom.required || []).filter((r) => !(r in cons));
  return h("div", { class: "state-domain", testid: "bot-state-domain", "data-domain": d },
    h("h4", {}, d, dom.table ? h("span", { class: "muted small" }, ` · table ${dom.table}`) : null),
    slots.length ? table([
      { label: "Slot", get: ([k]) => h("code", {}, k) },
      { label: "Value", get: ([, v]) => String(v) },
    ], slots, { testid: "bot-state-constraints", rowAttrs: ([k, v]) => ({ testid: "bot-state-slot", "data-slot": k, "data-value": String(v) }) })
      : h("p", { class: "muted small" }, "No constraints yet."),
    missing.length ? h("p", { class: "small", testid: "bot-state-missing" }, "Still needs: ", missing.map((m, i) => [i ? ", " : "", h("code", {}, m)])) : null,
    h("p", {}, "Chosen: ", chosen ? h("strong", { testid: "bot-state-selected" }, String(chosen))
      : h("span", { class: "muted" }, "none yet")),
    offered.length > 1 ? h("p", { class: "muted small" }, `Offered so far: ${offered.join(", ")}`) : null);
}

// ============================================================================ the bot's page

export async function botDetail(ctx, app, body) {
  const sp = specOf(app);
  const outline = { base: sp.base || app.base_model, modules: sp.modules || {}, domains: sp.domains || {} };
  const name = app.name;

  let conversationId = null;
  let gen = 0;       // bumps when another conversation is put on screen: a reply for the one left is dropped
  let turns = 0;

  const convHead = h("div", { class: "inline", testid: "chat-conversation" });
  const newButton = h("button", { type: "button", class: "btn btn-small", testid: "chat-new", onclick: () => startNew() }, "New conversation");
  const transcript = h("div", { class: "chat-transcript", testid: "chat-transcript", "aria-live": "polite" });
  const errBox = h("div", { testid: "chat-error-box" });
  const stateBox = h("div", { testid: "bot-state" });
  const convBox = h("div", { testid: "conversations-list" }, loading());
  const input = h("textarea", { id: "chat-message", testid: "chat-message", rows: 2, maxlength: 20000,
    placeholder: "Write as a customer would, e.g. 帮我找一家价格800-1000元的酒店。 (Enter sends; Shift+Enter starts a new line)" });
  const send = h("button", { type: "submit", class: "btn btn-primary", testid: "chat-send" }, "Send");
  const form = h("form", { class: "chat-form", testid: "chat-form", onsubmit: onSend },
    h("label", { for: "chat-message", class: "sr-only" }, "Your message"), input, send);
  input.addEventListener("keydown", (e) => {
    // Enter sends, except while an input method composes (typing Chinese) or with Shift (a new line)
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  const chatCard = h("div", { class: "card", testid: "bot-chat-card", "data-conversation": "" },
    h("div", { class: "card-head" }, h("h2", {}, "Talk to it"), h("div", { class: "inline" }, convHead, newButton)),
    h("div", { class: "bot-chat" },
      h("div", { class: "bot-talk" }, transcript, errBox, form),
      h("aside", { class: "bot-state", "aria-label": "Tracked state" },
        h("h3", {}, "Tracked state"),
        h("p", { class: "help" }, "What the bot remembers: each domain's constraints (they narrow its table) and the row it chose."),
        stateBox)));

  replace(body,
    h("div", { class: "card", testid: "bot-detail" },
      h("div", { class: "card-head" }, h("h1", {}, h("code", { testid: "app-model-id" }, modelIdOf(app))),
        h("a", { class: "btn btn-small", href: withQuery("#/apps", { editbot: name }), testid: "bot-edit" }, "Publish a new version")),
      h("p", { class: "lead", testid: "app-description" }, sp.description || "A dialogue bot."),
      h("p", { class: "help" }, "Each turn: intent and extract read the message as dialogue acts; the bot adds what it heard to the conversation's state and looks up the domain's table with it; then followup asks for a required slot it has not heard, or answer says what it found."),
      h("dl", { class: "facts", testid: "app-facts" },
        h("dt", {}, "Base model"), h("dd", {}, h("code", {}, outline.base || "–")),
        h("dt", {}, "Version"), h("dd", { testid: "bot-version" }, fmtNum(app.version || 1)),
        // a built bot's file is a server path: its name is enough here, the whole path on hover
        sp.source ? [h("dt", {}, "File"), h("dd", {}, h("code", { title: sp.source }, String(sp.source).split(/[\\/]/).pop()))] : null,
        h("dt", {}, "Updated"), h("dd", {}, fmtTime(app.updated_at || app.created_at))),
      h("h3", {}, "Modules"), modulesTable(outline),
      h("h3", {}, "Domains"), domainsTable(outline),
      sp.yaml ? h("details", {}, h("summary", {}, "The bot file"), h("pre", { class: "code", testid: "bot-yaml-shown" }, sp.yaml)) : null),
    chatCard,
    h("div", { class: "card", testid: "bot-conversations" }, h("h2", {}, "Recent conversations"),
      h("p", { class: "help" }, "Open one to read its turns and state, and go on with it."), convBox));

  function showConversation() {
    chatCard.dataset.conversation = conversationId || "";
    replace(convHead, conversationId
      ? [h("span", { class: "muted" }, "Conversation"), h("code", { testid: "chat-conversation-id" }, conversationId),
        h("span", { class: "muted small", testid: "chat-turn-count" }, plural(turns, "turn"))]
      : h("span", { class: "muted", testid: "chat-conversation-new" }, "A new conversation: its id comes with the first reply."));
    for (const row of convBox.querySelectorAll("[data-testid=conversation-row]")) {
      row.classList.toggle("selected", row.dataset.id === conversationId);
    }
  }

  function intro() {
    return h("p", { class: "muted chat-intro", testid: "chat-intro" },
      `Write to ${modelIdOf(app)} as a customer would. Open “How it got there” under a reply to see what it understood and did.`);
  }

  /** Go to another URL of this page without drawing it again (Back still works: it draws that URL). */
  function goTo(params, { push = true } = {}) {
    const target = appHref(name, params);
    if (location.hash === target) return;
    history[push ? "pushState" : "replaceState"](null, "", target);
  }

  function reset() {
    gen += 1;
    send.disabled = false;
    replace(errBox);
  }

  function startNew({ push = true, focus = true } = {}) {
    reset();
    conversationId = null;
    turns = 0;
    if (push) goTo({});
    replace(transcript, intro());
    replace(stateBox, stateView(null, outline));
    showConversation();
    if (focus) input.focus();
  }

  async function openConversation(id, { push = false } = {}) {
    reset();
    const mine = gen;
    conversationId = null;
    turns = 0;
    if (push) goTo({ conversation: id });
    showConversation();
    replace(transcript, loading(`Loading conversation ${id}…`));
    replace(stateBox);
    try {
      const c = await api(`/api/apps/conversations/${encodeURIComponent(id)}`);
      if (!ctx.alive || mine !== gen) return;
      if (c.bot !== name) {  // the id is another bot's: its state means nothing to this one
        replace(transcript, h("div", { class: "alert alert-warn", role: "status", testid: "chat-load-error" },
          `Conversation ${c.id} is with bot:${c.bot}, not ${modelIdOf(app)}. `,
          h("a", { href: appHref(c.bot, { conversation: c.id }) }, `Open it on bot:${c.bot}’s page`), ", or ",
          h("button", { type: "button", class: "btn btn-small", onclick: () => startNew() }, "start a new conversation here"), "."));
        replace(stateBox, stateView(null, outline));
        return;
      }
      conversationId = c.id;
      const kept = c.turns || [];
      turns = (c.state || {}).turns ?? kept.length;
      replace(transcript,
        turns > kept.length ? notice(`The first ${fmtNum(turns - kept.length)} turns are no longer kept; the state below still holds what they said.`, "info", "chat-dropped") : null,
        kept.length ? kept.map((t, i) => turnView(t, outline, turns - kept.length + i + 1)) : intro());
      replace(stateBox, stateView(c.state, outline));
      showConversation();
    } catch (err) {
      if (!ctx.alive || mine !== gen) return;
      replace(transcript, errorBox(err, "chat-load-error"),
        h("div", { class: "actions" }, h("button", { type: "button", class: "btn", testid: "chat-start-new",
          onclick: () => startNew() }, "Start a new conversation")));
      replace(stateBox, stateView(null, outline));
    }
  }

  async function onSend(e) {
    e.preventDefault();
    const text = input.value.trim();
    replace(errBox);
    if (!text) {
      replace(errBox, notice("Write a message first.", "warn", "chat-error"));
      return;
    }
    if (send.disabled) return;
    send.disabled = true;
    const mine = gen;
    const pending = h("div", { class: "chat-turn", testid: "chat-pending" },
      h("div", { class: "bubble bubble-user" }, text),
      h("div", { class: "bubble bubble-bot" }, loading("Thinking… (the first message after a start loads the model)")));
    transcript.querySelector("[data-testid=chat-intro]")?.remove();
    transcript.append(pending);
    pending.scrollIntoView({ block: "nearest" });
    try {
      const r = await api(`/api/apps/${encodeURIComponent(name)}/chat`, { method: "POST",
        json: { message: text, conversation_id: conversationId || undefined } });
      if (!ctx.alive || mine !== gen) return;
      if (!conversationId) goTo({ conversation: r.conversation_id }, { push: false }); // a reload shows it again
      conversationId = r.conversation_id;
      turns = (r.state || {}).turns ?? turns + 1;
      pending.replaceWith(turnView({ user: text, ...r }, outline, turns));
      replace(stateBox, stateView(r.state, outline));
      showConversation();
      input.value = "";
      loadConversations();
    } catch (err) {
      if (!ctx.alive || mine !== gen) return;
      pending.remove();
      const box = errorBox(err, "chat-error");
      if (err.param === "conversation_id") {
        box.append(h("p", {}, "This conversation is not stored any more (its bot was deleted and published again?). ",
          h("button", { type: "button", class: "btn btn-small", testid: "chat-start-new", onclick: () => startNew() },
            "Start a new conversation"), " and send your message again."));
      }
      replace(errBox, box);
    } finally {
      if (mine === gen) {
        send.disabled = false;
        input.focus();
      }
    }
  }

  async function loadConversations() {
    try {
      const { data } = await api(withQuery(`/api/apps/${encodeURIComponent(name)}/conversations`, { limit: 20 }));
      if (!ctx.alive) return;
      const open = (e, id) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey || e.button) return; // a new tab or window: let the link go
        e.preventDefault();
        openConversation(id, { push: true });
      };
      replace(convBox, table([
        { label: "Last message", get: (c) => h("a", { href: appHref(name, { conversation: c.id }), testid: "conversation-link",
          onclick: (e) => open(e, c.id) }, c.last || "(no turns)") },
        { label: "Turns", class: "num", get: (c) => fmtNum(c.turns) },
        { label: "Domain", get: (c) => c.domain || "–" },
        { label: "Updated", get: (c) => fmtTime(c.updated_at) },
        { label: "Conversation", get: (c) => h("code", { class: "small" }, c.id) },
      ], data, { testid: "conversations-table", empty: "No conversations yet: write to the bot above.",
        rowAttrs: (c) => ({ testid: "conversation-row", "data-id": c.id, "data-turns": c.turns,
          class: `clickable${c.id === conversationId ? " selected" : ""}`,
          onclick: (e) => { if (!e.target.closest("a")) open(e, c.id); } }) }));
    } catch (e) {
      if (ctx.alive) replace(convBox, errorBox(e, "conversations-error"));
    }
  }

  const asked = ctx.query.get("conversation");
  await Promise.all([asked ? openConversation(asked) : startNew({ push: false, focus: false }), loadConversations()]);
}
