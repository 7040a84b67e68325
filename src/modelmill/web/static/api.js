// Every call to the modelmill server goes through api(): it adds the stored API key, turns the
// server's OpenAI-shaped errors into ApiError with a readable message, and on a 401 asks the
// user for a key once and retries, so no page has to know about auth.

const KEY_STORAGE = "modelmill.apiKey";

export class ApiError extends Error {
  constructor(message, { status = 0, param = null, code = null, details = [] } = {}) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
    this.details = details;
  }
}

export function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage can be disabled (private windows, policies): run without a key
  }
}

export function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* nothing to do: the key then lives only as long as this prompt's retry */
  }
}

function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// One prompt at a time: pages fire several requests at once, and each 401 must not open its own.
let pendingPrompt = null;
let promptHandler = async () => null;

/** The page registers how to ask for a key (a dialog); it resolves to the key or null. */
export function setKeyPrompt(fn) {
  promptHandler = fn;
}

function askForKey(reason) {
  if (!pendingPrompt) {
    pendingPrompt = Promise.resolve(promptHandler(reason)).finally(() => {
      pendingPrompt = null;
    });
  }
  return pendingPrompt;
}

async function errorFrom(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: a proxy's page or an empty body */
  }
  const err = body && body.error;
  if (err && typeof err === "object") {
    return new ApiError(err.message || `The server answered ${res.status}.`, {
      status: res.status, param: err.param || null, code: err.code || null, details: err.details || [],
    });
  }
  if (body && body.detail) { // FastAPI's own shape, e.g. a route that does not exist yet
    const text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return new ApiError(res.status === 404 ? `This server does not offer ${new URL(res.url).pathname} (404 ${text}).`
      : `The server answered ${res.status}: ${text}`, { status: res.status });
  }
  const words = {
    401: "The server needs an API key.", 403: "Your API key is not allowed to do this.",
    404: "Not found.", 413: "The file is too large for the server.", 415: "The server does not accept this file type.",
    429: "The server is busy; try again in a moment.", 503: "The server is busy; try again in a moment.",
  };
  return new ApiError(words[res.status] || `The server answered ${res.status} ${res.statusText}.`, { status: res.status });
}

/**
 * fetch() with auth and readable errors. `json` sends a JSON body; `form` a FormData (multipart).
 * Resolves to the parsed JSON (or text when `as: "text"`), rejects with ApiError.
 */
export async function api(path, { method = "GET", json, form, as = "json", signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { ...authHeaders() };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form) {
      body = form; // the browser sets the multipart boundary itself
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, signal });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError("Cannot reach the modelmill server. Is `modelmill up` still running?");
    }
    if (res.status === 401 && attempt < 3) {
      const key = await askForKey(storedKey() ? "The stored API key was refused." : "This server needs an API key.");
      if (key) {
        storeKey(key);
        continue;
      }
    }
    if (!res.ok) throw await errorFrom(res);
    if (res.status === 204) return null;
    return as === "text" ? res.text() : res.json();
  }
}

/** A path with its query string; empty and null values are left out. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/**
 * The id to send as `model` for a /v1/models card: an adapter as BASE:ADAPTER, so answers and
 * stored preferences name both; base models and deployments (whose parent is what they point
 * at) by their own id.
 */
export function chatModelId(card) {
  const adapter = card.parent && card.type !== "deployment" && !String(card.parent).includes(":")
    && !String(card.id).includes(":");
  return adapter ? `${card.parent}:${card.id}` : card.id;
}
