// Deployments: a stable name (what apps call as `model`) pointing at a model or adapter, with
// optional knowledge bases and a system prompt. Re-pointing a name ships a new model without
// touching the apps that use it.

import { api, chatModelId } from "../api.js";
import { errorBox, fmtTime, h, loading, notice, replace, table } from "../dom.js";

export async function deploymentsPage(ctx) {
  const listBox = h("div", { testid: "deployments-list" }, loading());
  const formBox = h("div", {});
  ctx.main.append(h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, "Deployments"),
      h("p", { class: "lead" }, "Give a model a name your applications call. Point the name at a better model later and the apps follow.")),
    formBox,
    h("div", { class: "card" }, h("h2", {}, "Live deployments"), listBox)));

  async function loadList() {
    try {
      const { data } = await api("/api/deployments");
      if (!ctx.alive) return;
      replace(listBox, table([
        { label: "Name", get: (d) => h("strong", {}, d.name) },
        { label: "Model", get: (d) => h("code", {}, d.model) },
        { label: "Knowledge bases", get: (d) => (d.knowledge_bases || []).join(", ") || "–" },
        { label: "System prompt", get: (d) => (d.system_prompt ? h("span", { class: "clip", title: d.system_prompt }, d.system_prompt) : "–") },
        { label: "Updated", get: (d) => fmtTime(d.updated_at || d.created_at) },
        { label: "", get: (d) => h("div", { class: "inline" },
          h("a", { class: "btn btn-small", href: `#/playground?models=${encodeURIComponent(d.name)},${encodeURIComponent(d.model)}` }, "Try"),
          h("button", { type: "button", class: "btn btn-small btn-danger", testid: "deploy-delete", "data-name": d.name,
            onclick: (e) => remove(d.name, e.target) }, "Delete")) },
      ], data, { testid: "deployments-table", rowAttrs: (d) => ({ testid: "deployment-row", "data-name": d.name }),
        empty: "Nothing deployed yet." }));
    } catch (e) {
      if (ctx.alive) replace(listBox, errorBox(e));
    }
  }

  async function remove(name, button) {
    if (!confirm(`Delete the deployment “${name}”? Apps calling it will get an error until it exists again.`)) return;
    button.disabled = true;
    try {
      await api(`/api/deployments/${encodeURIComponent(name)}`, { method: "DELETE" });
      await loadList();
    } catch (e) {
      button.disabled = false;
      listBox.prepend(errorBox(e, "deploy-delete-error"));
    }
  }

  let models = [];
  try {
    // a deployment points at a model or adapter, not at another deployment
    models = ((await api("/v1/models")).data || []).filter((c) => c.type !== "embedding" && c.type !== "deployment");
  } catch (e) {
    if (ctx.alive) formBox.append(errorBox(e));
  }
  if (!ctx.alive) return;
  const name = h("input", { id: "deploy-name", testid: "deploy-name", required: true, autocomplete: "off", placeholder: "support-bot" });
  const model = h("select", { id: "deploy-model", testid: "deploy-model", required: true },
    models.map((c) => h("option", { value: chatModelId(c) }, chatModelId(c))));
  const kbs = h("input", { id: "deploy-kbs", testid: "deploy-kbs", autocomplete: "off", placeholder: "handbook, faq" });
  const system = h("textarea", { id: "deploy-system", testid: "deploy-system", rows: 2 });
  const result = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "deploy-submit" }, "Deploy");

  async function onSubmit(e) {
    e.preventDefault();
    submit.disabled = true;
    replace(result);
    try {
      const d = await api("/api/deployments", { method: "POST", json: {
        name: name.value.trim(), model: model.value,
        knowledge_bases: kbs.value.split(",").map((x) => x.trim()).filter(Boolean),
        system_prompt: system.value.trim() || null,
      } });
      replace(result, notice(`Deployed: call model “${d.name}” at /v1/chat/completions.`, "ok", "deploy-status"));
      name.value = "";
      await loadList();
    } catch (err) {
      replace(result, errorBox(err, "deploy-error"));
    } finally {
      submit.disabled = false;
    }
  }

  replace(formBox, h("form", { class: "card", testid: "deploy-form", onsubmit: onSubmit },
    h("h2", {}, "Create or update a deployment"),
    models.length ? null : notice("No models to deploy yet.", "warn"),
    h("div", { class: "grid-2" },
      h("div", { class: "field" }, h("label", { for: "deploy-name" }, "Name"), name,
        h("p", { class: "help" }, "What applications put in `model`. Using an existing name re-points it.")),
      h("div", { class: "field" }, h("label", { for: "deploy-model" }, "Model"), model),
      h("div", { class: "field" }, h("label", { for: "deploy-kbs" }, "Knowledge bases"), kbs,
        h("p", { class: "help" }, "Comma-separated names from `modelmill kb list`; answers then cite them.")),
      h("div", { class: "field" }, h("label", { for: "deploy-system" }, "System prompt"), system)),
    h("div", { class: "actions" }, submit), result));
  await loadList();
}
