// The modelmill web UI: a hash-routed single page (#/datasets, #/jobs/ID, ...). Each page is a
// module under pages/ that renders into <main> and calls the same REST API the CLI's users call.
// Hash routes keep every page a plain static file for the server (no catch-all route needed).

import { setKeyPrompt, storeKey, storedKey } from "./api.js";
import { errorBox, h, replace } from "./dom.js";
import { appPage, appsPage } from "./pages/apps.js";
import { comparePage } from "./pages/compare.js";
import { datasetsPage } from "./pages/datasets.js";
import { deploymentPage, deploymentsPage } from "./pages/deployments.js";
import { jobPage, jobsPage } from "./pages/jobs.js";
import { modelsPage } from "./pages/models.js";
import { playgroundPage } from "./pages/playground.js";
import { trainPage } from "./pages/train.js";

const ROUTES = [
  { path: "datasets", title: "Datasets", render: datasetsPage },
  { path: "models", title: "Models", render: modelsPage },
  { path: "train", title: "Train", render: trainPage },
  { path: "jobs", title: "Jobs", render: jobsPage, child: jobPage },
  { path: "compare", title: "Compare", render: comparePage },
  { path: "playground", title: "Playground", render: playgroundPage },
  { path: "deployments", title: "Deployments", render: deploymentsPage, child: deploymentPage },
  { path: "apps", title: "Apps", render: appsPage, child: appPage },
];

const main = document.getElementById("main");
let current = null; // the page on screen: {alive, leave()}

/** "#/jobs/ftjob-1?x=1" -> {section: "jobs", rest: ["ftjob-1"], query: URLSearchParams} */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { section: parts[0] || "datasets", rest: parts.slice(1), query: new URLSearchParams(qs || "") };
}

/** What a page gets: where to draw, the route's pieces, and a way to stop timers when the user leaves. */
function makeContext(route) {
  const cleanups = [];
  const ctx = {
    ...route,
    alive: true,
    onLeave(fn) {
      cleanups.push(fn);
    },
    // setInterval that stops when the page is left, and never piles up calls on a slow server;
    // returns a function that stops it earlier.
    every(ms, fn, { now = false } = {}) {
      let timer = null;
      let stopped = false;
      const stop = () => {
        stopped = true;
        clearTimeout(timer);
      };
      const tick = async () => {
        if (!ctx.alive || stopped) return;
        try {
          await fn();
        } catch (e) {
          console.warn(e);
        } finally {
          if (ctx.alive && !stopped) timer = setTimeout(tick, ms);
        }
      };
      timer = setTimeout(tick, now ? 0 : ms);
      cleanups.push(stop);
      return stop;
    },
    leave() {
      ctx.alive = false;
      for (const fn of cleanups.splice(0)) {
        try {
          fn();
        } catch (e) {
          console.warn("cleanup failed", e);
        }
      }
    },
  };
  return ctx;
}

async function render() {
  if (current) current.leave();
  const route = parseHash();
  const spec = ROUTES.find((r) => r.path === route.section);
  for (const a of document.querySelectorAll("nav a[data-route]")) {
    a.classList.toggle("active", a.dataset.route === route.section);
    if (a.dataset.route === route.section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const ctx = (current = makeContext({ ...route, main }));
  replace(main);
  if (!spec) {
    replace(main, h("section", { class: "page" }, h("h1", {}, "Page not found"),
      h("p", {}, "There is no page at ", h("code", {}, location.hash), ". ", h("a", { href: "#/datasets" }, "Go to datasets"), ".")));
    return;
  }
  document.title = `${spec.title} · modelmill`;
  try {
    await (route.rest.length && spec.child ? spec.child : spec.render)(ctx);
  } catch (e) {
    if (!ctx.alive) return;
    console.error(e);
    main.append(errorBox(e, "page-error"));
  }
}

// ---- the API key prompt -------------------------------------------------------------------

const dialog = document.getElementById("key-dialog");
const keyInput = document.getElementById("key-input");
const keyReason = document.getElementById("key-reason");

function promptForKey(reason) {
  return new Promise((resolve) => {
    keyReason.textContent = reason || "Enter an API key for this server.";
    keyInput.value = "";
    dialog.returnValue = ""; // Escape leaves the last answer in place otherwise
    const done = (value) => {
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onClose = () => done(dialog.returnValue === "save" ? keyInput.value.trim() || null : null);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    keyInput.focus();
  });
}

setKeyPrompt(promptForKey);

document.getElementById("key-button").addEventListener("click", async () => {
  const key = await promptForKey(storedKey() ? "A key is stored. Enter a new one, or leave empty and save to forget it."
    : "Enter an API key for this server (`modelmill keys create`).");
  if (key !== null || dialog.returnValue === "save") {
    storeKey(key || "");
    render();
  }
});

window.addEventListener("hashchange", render);
if (!location.hash) history.replaceState(null, "", "#/datasets");
render();
