// What the viewer's pages share: the API with this tab's token, server-sent events read with
// fetch (EventSource cannot send an Authorization header, and a token never goes in a URL),
// and rendering helpers that put every value from a run into the page as text, never as HTML.

const TOKEN_KEY = "runstore.token";

// The pages live at <server>/ui/, so the API is one level up (whatever prefix a proxy adds).
export const apiBase = new URL("../", document.baseURI);

export function apiUrl(path, params = []) {
  const url = new URL(path, apiBase);
  for (const [name, value] of params) url.searchParams.append(name, value);
  return url;
}

/** An element with attributes and children; strings become text nodes, never markup. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

// --- the token: asked for once, kept for this browser tab only (sessionStorage) -------------

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

let asking = null;

/** Show the token dialog with `message`; resolves once a token was entered. */
export function askToken(message) {
  const dialog = document.getElementById("token-dialog");
  dialog.querySelector(".token-message").textContent = message;
  if (asking) return asking;
  const form = dialog.querySelector("form");
  const input = form.elements.token;
  input.value = "";
  asking = new Promise((resolve) => {
    const submitted = (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      form.removeEventListener("submit", submitted);
      dialog.close();
      document.getElementById("forget-token").hidden = false;
      asking = null;
      resolve();
    };
    form.addEventListener("submit", submitted);
  });
  // Without a token there is nothing to show: Escape does not dismiss the question.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  dialog.showModal();
  input.focus();
  return asking;
}

// --- the API ---------------------------------------------------------------------------------

/** A refusal from the server: its status and its problem+json body. */
export class ProblemError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function problemOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body === "object") return body;
  } catch {
    // not JSON: fall through
  }
  return { status: response.status, title: response.statusText || `HTTP ${response.status}` };
}

/**
 * fetch() a path of the API with the tab's token. A 401 asks for a token and tries again;
 * any other refusal throws a ProblemError.
 */
export async function api(path, { params = [], headers = {}, signal } = {}) {
  for (;;) {
    const sent = token();
    const response = await fetch(apiUrl(path, params), {
      headers: {
        Accept: "application/json",
        ...(sent ? { Authorization: `Bearer ${sent}` } : {}),
        ...headers,
      },
      cache: "no-store",
      signal,
    });
    if (response.ok) return response;
    const problem = await problemOf(response);
    if (response.status !== 401) throw new ProblemError(response.status, problem);
    await askToken(
      sent
        ? `The server refused this token: ${problem.detail || problem.title}. Enter another.`
        : "This server needs a token to show runs. It is kept for this browser tab only.",
    );
  }
}

/** What to tell the user about a failed call. */
export function describeError(error) {
  if (error instanceof ProblemError) {
    if (error.status === 403) {
      return `Your token may not read runs (403): ${error.message}`;
    }
    return `${error.problem.title || "Refused"} (${error.status}): ${error.message}`;
  }
  return `The server cannot be reached: ${error.message}`;
}

// --- server-sent events ----------------------------------------------------------------------

/**
 * The text/event-stream format (HTML Living Standard, "Server-sent events"), fed in chunks of
 * any size: push() returns the events the chunk completed.
 */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.scanned = 0;
    this.event = "";
    this.data = [];
    this.lastEventId = "";
  }

  push(text) {
    const buffer = this.buffer + text;
    const events = [];
    let start = 0;
    let i = this.scanned;
    for (; i < buffer.length; i++) {
      const code = buffer.charCodeAt(i);
      if (code !== 10 && code !== 13) continue;
      if (code === 13 && i + 1 === buffer.length) break; // a CR whose LF may come next
      this.#line(buffer.slice(start, i), events);
      if (code === 13 && buffer.charCodeAt(i + 1) === 10) i++;
      start = i + 1;
    }
    this.buffer = buffer.slice(start);
    this.scanned = i - start;
    return events;
  }

  #line(line, events) {
    if (line === "") {
      if (this.data.length) {
        events.push({
          event: this.event || "message",
          data: this.data.join("\n"),
          id: this.lastEventId,
        });
      }
      this.event = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
  }
}

/**
 * The events of a stream of the API as they arrive, after an `open` event once the server
 * answered; ends when the server ends the stream.
 */
export async function* streamEvents(path, { params = [], signal } = {}) {
  const response = await api(path, {
    params,
    headers: { Accept: "text/event-stream" },
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    yield { event: "open", data: "", id: "" };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      yield* parser.push(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Run `follow(signal)` while the page is shown. Leaving the page aborts it, which closes its
 * stream: a page kept in the back/forward cache would otherwise hold one of the browser's few
 * connections to the server (six per host over HTTP/1.1) until evicted. A page restored from
 * that cache follows again.
 */
export function followWhileShown(follow) {
  let controller = new AbortController();
  window.addEventListener("pagehide", () => controller.abort());
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      controller = new AbortController();
      follow(controller.signal);
    }
  });
  follow(controller.signal);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- what a run's values look like ---------------------------------------------------------

export function isFinished(run) {
  return run.completedAt !== undefined && run.completedAt !== null;
}

const USUAL_STATUSES = new Set(["running", "completed", "failed", "cancelled"]);

export function statusBadge(status) {
  const kind = USUAL_STATUSES.has(status) ? status : "other";
  return el("span", { class: `status status-${kind}` }, String(status));
}

/** Token count of a usage object, whatever its framework calls the counts; null if none. */
export function tokensOf(usage) {
  if (!usage || typeof usage !== "object") return null;
  for (const name of ["totalTokens", "total_tokens", "tokens", "total"]) {
    if (Number.isFinite(usage[name])) return usage[name];
  }
  let total = null;
  for (const name of [
    "inputTokens",
    "outputTokens",
    "promptTokens",
    "completionTokens",
    "input_tokens",
    "output_tokens",
    "prompt_tokens",
    "completion_tokens",
  ]) {
    if (Number.isFinite(usage[name])) total = (total ?? 0) + usage[name];
  }
  return total;
}

export function formatTokens(count) {
  return count === null || count === undefined ? "" : count.toLocaleString();
}

export function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} m ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} m`;
}

export function timeElement(ms) {
  if (!Number.isFinite(ms)) return "";
  const date = new Date(ms);
  return el("time", { datetime: date.toISOString(), title: date.toISOString() }, date.toLocaleString());
}

/** How long a run took, or has been running. */
export function runDuration(run, now = Date.now()) {
  return (isFinished(run) ? run.completedAt : now) - run.startedAt;
}

export function firstLine(text, limit = 200) {
  if (typeof text !== "string") return "";
  const line = text.split(/\r\n|\r|\n/, 1)[0];
  return line.length > limit ? `${line.slice(0, limit)}…` : line;
}

/** Any JSON value as readable text. */
export function asText(value) {
  if (typeof value === "string") return value;
  if (value === undefined) return "";
  return JSON.stringify(value, null, 2);
}

/** The live indicator in the page header. */
export function setLive(state, text) {
  const live = document.getElementById("live");
  live.dataset.state = state;
  live.textContent = text;
}

export function showNotice(text) {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.hidden = false;
}

export function clearNotice() {
  document.getElementById("notice").hidden = true;
}

/** The header's "Forget token" button. */
export function setupChrome() {
  const forget = document.getElementById("forget-token");
  const refresh = () => {
    forget.hidden = !token();
  };
  forget.addEventListener("click", () => {
    forgetToken();
    location.reload();
  });
  refresh();
  window.addEventListener("focus", refresh);
}
