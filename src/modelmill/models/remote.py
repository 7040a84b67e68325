"""Call a remote OpenAI-compatible chat endpoint that is registered as a model, for example a
commercial model benchmarked beside local fine-tunes.

    modelmill models add gpt-4o-mini --endpoint https://api.openai.com/v1 --api-key-env OPENAI_API_KEY --check

    from modelmill.models.registry import ModelRegistry
    from modelmill.models.remote import RemoteModel
    from modelmill.store import open_store

    with RemoteModel.from_row(ModelRegistry(open_store()).get("gpt-4o-mini")) as m:
        m.chat([{"role": "user", "content": "Hi"}])      # {"text", "usage", "seconds", "finish_reason"}
        m.chat_many([conv1, conv2], concurrency=8)         # in order; a failed item is its exception

Plain httpx against ``POST {endpoint}/chat/completions`` (the official ``openai`` package is not
needed). Connect errors, timeouts, 429 (honouring Retry-After up to a cap) and 5xx are retried
with exponential backoff; any other 4xx fails at once. Failures raise ``RemoteError``, whose
message names the endpoint, the model, the HTTP status and the server's own message.
The API key is read from an environment variable at call time; the registry stores only the
variable's name.
"""

from __future__ import annotations

import email.utils
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx

from modelmill.errors import InputError, ModelmillError

BACKOFF_BASE = 0.5      # seconds before the first retry; doubled for each further one
BACKOFF_CAP = 8.0       # longest wait between two attempts when the server gives no Retry-After
RETRY_AFTER_CAP = 30.0  # a server asking for a longer pause gets this much: a benchmark should not stall for hours

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_EXAMPLE_URL = "e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1"


class RemoteError(ModelmillError):
    """A remote endpoint failed or refused a request (exit code 5).

    ``endpoint``, ``model``, ``status`` (None when no HTTP answer came), ``server_message`` and
    ``attempts`` are kept as attributes for callers that report failures per item."""

    exit_code = 5

    def __init__(self, message: str, *, endpoint: str, model: str, status: int | None = None,
                 server_message: str | None = None, attempts: int = 1, fix: str | None = None):
        self.endpoint = endpoint
        self.model = model
        self.status = status
        self.server_message = server_message
        self.attempts = attempts
        super().__init__(message, fix=fix)


def normalize_endpoint(url: str, field: str = "--endpoint") -> str:
    """The API's base URL without a trailing slash; InputError unless it is a plain http(s) URL."""
    text = (url or "").strip()
    if any(c.isspace() for c in text):
        raise InputError(f"'{text}' holds white space", field=field,
                         fix=f"give the API's base URL without spaces, {_EXAMPLE_URL}")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a port that is not a number or out of range
    except ValueError as e:
        raise InputError(f"'{text}' is not a valid URL ({e})", field=field,
                         fix=f"give the API's base URL, {_EXAMPLE_URL}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InputError(f"'{text}' is not an http:// or https:// URL", field=field,
                         fix=f"give the API's base URL, {_EXAMPLE_URL}")
    host = parts.hostname
    if ":" not in host and not all(host.removesuffix(".").split(".")):  # an IPv6 address has no labels
        raise InputError(f"'{text}' has an empty part in its host name '{host}'", field=field,
                         fix=f"check the host name, {_EXAMPLE_URL}")
    if port == 0:
        raise InputError(f"'{text}' names port 0, which no server listens on", field=field,
                         fix=f"give the server's port, {_EXAMPLE_URL}")
    if parts.username or parts.password:
        # the URL is stored in plain text in the database; do not echo it either
        raise InputError("the URL holds a user name or password, which would be stored in plain text", field=field,
                         fix="remove them from the URL and pass --api-key-env VAR, naming the variable that holds the key")
    if parts.query or parts.fragment:
        raise InputError(f"'{text}' has a query string or fragment", field=field,
                         fix=f"give only the API's base URL, {_EXAMPLE_URL}")
    path = parts.path.rstrip("/")
    for route, what in (("/chat/completions", "chat route"), ("/models", "model list")):
        if path.endswith(route):  # the URL of one route pasted from the provider's docs
            base = urlunsplit((parts.scheme.lower(), parts.netloc, path[: -len(route)], "", ""))
            raise InputError(f"'{text}' is the URL of the {what}, not the API's base", field=field, fix=f"use {base}")
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


def check_env_name(name: str, field: str = "--api-key-env") -> str:
    """``name`` if it can be an environment variable's name. The value is never echoed: a user who
    passes the key itself by mistake should not see it printed into a log."""
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise InputError("not an environment variable name (letters, digits and '_', not starting with a digit)",
                         field=field, fix="give the NAME of the variable that holds the key, e.g. --api-key-env "
                                          "OPENAI_API_KEY; never the key itself")
    return name


def check_remote_model(model_id: str, field: str = "--remote-model") -> str:
    """The model id the endpoint knows, stripped; InputError when empty or holding white space."""
    model_id = (model_id or "").strip() if isinstance(model_id, str) else ""
    if not model_id or any(c.isspace() for c in model_id) or len(model_id) > 500:
        raise InputError(f"'{model_id}' is not a model id", field=field,
                         fix="give the id the endpoint serves, e.g. gpt-4o-mini (GET ENDPOINT/models lists them)")
    return model_id


class RemoteModel:
    """A chat model behind an OpenAI-compatible endpoint. Thread-safe; ``close()`` (or ``with``)
    releases its connections."""

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, *, timeout: float = 60,
                 max_retries: int = 3):
        self.endpoint = normalize_endpoint(endpoint, field="endpoint")
        self.model = check_remote_model(model, field="model")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InputError(f"must be > 0 seconds, got {timeout!r}", field="timeout", fix="e.g. timeout=60")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InputError(f"must be an integer >= 0, got {max_retries!r}", field="max_retries",
                             fix="e.g. max_retries=3 (0: one attempt only)")
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.api_key_env: str | None = None  # set by from_row; only used to say which variable to fix
        self._has_key = bool(api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Redirects are not followed: a moved API should be re-registered at its new URL, and the
        # key should not travel to wherever a redirect points.
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout), follow_redirects=False)

    @classmethod
    def from_row(cls, row, **kw) -> "RemoteModel":
        """The client for a registered remote model (a ``base_models`` row with source_type 'remote').
        The key comes from ``os.environ[row.info["api_key_env"]]`` now; ``kw`` go to the constructor."""
        if row.source_type != "remote":
            raise InputError(f"model '{row.name}' is a local model ({row.source_type}), not a remote endpoint",
                             fix="load it with modelmill.adapters.loading.load_for_inference")
        info = row.info or {}
        env = info.get("api_key_env")
        key = None
        if env:
            key = os.environ.get(env)
            if not key:
                raise InputError(f"model '{row.name}' takes its API key from the environment variable {env}, "
                                 "which is not set",
                                 fix=f"export {env}=YOUR_KEY before running (modelmill stores only the variable's name)")
        model = cls(row.source or info.get("endpoint"), info.get("remote_model") or row.name, key, **kw)
        model.api_key_env = env
        return model

    def __repr__(self) -> str:  # never the key: reprs end up in logs and tracebacks
        return f"RemoteModel({self.endpoint!r}, {self.model!r}, api_key={'set' if self._has_key else None})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls

    def chat(self, messages: list[dict], *, max_tokens: int | None = 256, temperature: float | None = 0.0,
             **extra) -> dict:
        """One chat completion: ``{"text", "usage", "seconds", "finish_reason"}``.

        ``text`` is the first choice's content ('' when the server sent none); ``usage`` is the
        server's token counts ({} when it sent none); ``seconds`` is the latency of the attempt
        that succeeded. ``extra`` goes into the request body as is (top_p, stop, seed,
        response_format, ...). Pass ``max_tokens=None`` / ``temperature=None`` to leave them out
        (some reasoning models refuse them), or give ``max_completion_tokens`` instead."""
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise InputError("expected a non-empty list of {'role': ..., 'content': ...} dicts", field="messages",
                             fix='e.g. [{"role": "user", "content": "Hello"}]')
        if extra.get("stream"):
            raise InputError("streaming is not supported by RemoteModel.chat", field="stream",
                             fix="leave stream out: chat() returns the whole reply")
        body: dict = {"model": self.model, "messages": messages}
        if max_tokens is not None and "max_completion_tokens" not in extra:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        body.update(extra)
        data, seconds, attempts = self._request("POST", "/chat/completions", body)
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._error("POST /chat/completions", "the answer is not a chat completion (no choices[0].message)",
                              status=200, server_message=str(data)[:300], attempts=attempts,
                              fix="check that the endpoint is an OpenAI-compatible API base (often ending in /v1)")
        return {"text": text if isinstance(text, str) else str(text), "usage": data.get("usage") or {},
                "seconds": seconds, "finish_reason": choice.get("finish_reason")}

    def chat_many(self, conversations: list[list[dict]], *, concurrency: int = 4, **kw) -> list[dict | Exception]:
        """``chat`` for each conversation, ``concurrency`` at a time, results in input order. An item
        that fails is its exception object (usually a RemoteError); the others are still returned."""
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InputError(f"must be an integer >= 1, got {concurrency!r}", field="concurrency", fix="e.g. concurrency=4")
        if not conversations:
            return []

        def one(messages):
            try:
                return self.chat(messages, **kw)
            except Exception as e:  # one bad item must not lose the others' answers
                return e

        pool = ThreadPoolExecutor(max_workers=min(concurrency, len(conversations)), thread_name_prefix="modelmill-remote")
        try:
            return list(pool.map(one, conversations))
        finally:
            # after Ctrl-C, drop the conversations not started instead of sending them all first
            pool.shutdown(wait=True, cancel_futures=True)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """``POST {endpoint}/embeddings``: one vector per text, in input order."""
        if not texts:
            return []
        data, _, attempts = self._request("POST", "/embeddings", {"model": self.model, "input": list(texts)})
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or len(items) != len(texts) or not all(
                isinstance(d, dict) and isinstance(d.get("embedding"), list) for d in items):
            raise self._error("POST /embeddings", f"the answer is not {len(texts)} embeddings (no 'data' list of "
                              "{'embedding': [...]})", status=200, server_message=str(data)[:300], attempts=attempts,
                              fix="check that the model is an embedding model and the endpoint OpenAI-compatible")
        return [d["embedding"] for d in sorted(items, key=lambda d: d.get("index", 0))]

    def list_models(self) -> list[str]:
        """The model ids ``GET {endpoint}/models`` lists."""
        data, _, attempts = self._request("GET", "/models")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise self._error("GET /models", "the answer is not a model list (no 'data' array)", status=200,
                              server_message=str(data)[:300], attempts=attempts,
                              fix="check that the endpoint is an OpenAI-compatible API base (often ending in /v1)")
        return [str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")]

    # -- one request, with retries

    def _request(self, method: str, route: str, body: dict | None = None) -> tuple[dict, float, int]:
        """(JSON answer, seconds of the attempt that succeeded, attempts made)."""
        what = f"{method} {route}"
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            retry_after = None
            try:
                r = self._client.request(method, self.endpoint + route, json=body)
            except httpx.TimeoutException as e:
                failure = dict(detail=f"no answer within {self.timeout:g} s ({type(e).__name__})",
                               fix="raise timeout=, or check how loaded the server is")
            except (httpx.NetworkError, httpx.RemoteProtocolError) as e:
                failure = dict(detail=f"cannot reach the endpoint ({type(e).__name__}: {e})",
                               fix="check that the server is up and reachable from this machine (URL, port, "
                                   "firewall, proxy)")
            except httpx.HTTPError as e:  # not worth retrying: a proxy or protocol problem on our side
                raise self._error(what, f"request failed ({type(e).__name__}: {e})", attempts=attempt,
                                  fix="check the endpoint URL and any HTTP(S)_PROXY settings") from None
            else:
                seconds = time.monotonic() - started
                if 200 <= r.status_code < 300:
                    try:
                        return r.json(), seconds, attempt
                    except ValueError:
                        raise self._error(what, "the answer is not JSON", status=r.status_code,
                                          server_message=_snippet(r.text), attempts=attempt,
                                          fix="check that the endpoint is an OpenAI-compatible API base "
                                              "(often ending in /v1)") from None
                failure = dict(detail=f"HTTP {r.status_code}", status=r.status_code, server_message=_server_message(r),
                               fix=self._fix_for(r))
                if not (r.status_code == 429 or r.status_code >= 500):
                    raise self._error(what, **failure, attempts=attempt) from None
                retry_after = _retry_after(r)
            if attempt > self.max_retries:
                raise self._error(what, **failure, attempts=attempt) from None
            time.sleep(_delay(attempt, retry_after))

    def _fix_for(self, r: httpx.Response) -> str:
        status = r.status_code
        if status in (401, 403):
            if not self._has_key:
                return ("the server wants an API key: register the model with --api-key-env VAR and set that variable "
                        "(or pass api_key=)")
            where = f"the environment variable {self.api_key_env}" if self.api_key_env else "api_key"
            return f"check the API key in {where}"
        if status == 404:
            return (f"check the remote model id (GET {self.endpoint}/models lists them; `modelmill models add ... "
                    "--check` does this) and that the endpoint is the API's base URL (often ending in /v1)")
        if status == 429:
            return "the server is rate-limiting or full: lower the concurrency, or try again later"
        if status >= 500:
            return "the server failed: check its logs, or try again later"
        if 300 <= status < 400:
            return f"the endpoint redirects to {r.headers.get('location', '?')}: register that URL instead"
        return "the server rejected the request: check the parameters its message names"

    def _error(self, what: str, detail: str, *, status: int | None = None, server_message: str | None = None,
               attempts: int = 1, fix: str | None = None) -> RemoteError:
        msg = f"{self.endpoint}: model '{self.model}': {what} failed: {detail}"
        if server_message:
            msg += f": {server_message}"
        msg += f" ({attempts} attempt{'s' if attempts != 1 else ''})"
        return RemoteError(msg, endpoint=self.endpoint, model=self.model, status=status, server_message=server_message,
                           attempts=attempts, fix=fix)


def _delay(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP)
    # jitter, so that parallel callers hit by the same outage do not retry in lock-step
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def _retry_after(r: httpx.Response) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    value = r.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(r: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    try:
        body = r.json()
    except ValueError:
        return _snippet(r.text) or r.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return _snippet(str(err["message"]))
        if isinstance(err, str) and err:
            return _snippet(err)
        for key in ("detail", "message"):
            if body.get(key):
                return _snippet(str(body[key]))
    return _snippet(str(body))


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit] + "..."
