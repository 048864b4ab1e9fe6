// The list of runs: newest first, filtered by status and start time (kept in the page's URL),
// paged with the API's keyset cursor, and kept current from GET /events without reloading.
import {
  ProblemError,
  api,
  describeError,
  clearNotice,
  el,
  followWhileShown,
  firstLine,
  formatDuration,
  formatTokens,
  isFinished,
  runDuration,
  setLive,
  setupChrome,
  showNotice,
  sleep,
  statusBadge,
  streamEvents,
  timeElement,
  tokensOf,
} from "./viewer.js";

const PAGE_SIZE = 50;
const form = document.getElementById("filters");
const body = document.querySelector("#runs tbody");
const more = document.getElementById("more");
const empty = document.getElementById("empty");

const shown = new Map(); // runId -> { row, summary }
let filters = filtersFromUrl();
let nextCursor = null;
let loading = 0; // which load is current: an older one's answer is dropped

function filtersFromUrl() {
  const query = new URLSearchParams(location.search);
  const millis = (name) => {
    const value = query.get(name);
    return value !== null && /^\d+$/.test(value) ? Number(value) : null;
  };
  return {
    statuses: query.getAll("status"),
    startedAfter: millis("startedAfter"),
    startedBefore: millis("startedBefore"),
  };
}

// datetime-local inputs show local time; the API speaks ms since the epoch.
function toLocalInput(ms) {
  if (ms === null) return "";
  const date = new Date(ms);
  return new Date(ms - date.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
}

function fromLocalInput(value) {
  if (!value) return null;
  const ms = new Date(value).getTime();
  return Number.isFinite(ms) ? ms : null;
}

function showFilters() {
  for (const box of form.elements.status) box.checked = filters.statuses.includes(box.value);
  form.elements.startedAfter.value = toLocalInput(filters.startedAfter);
  form.elements.startedBefore.value = toLocalInput(filters.startedBefore);
}

function queryOf(extra = []) {
  const params = filters.statuses.map((status) => ["status", status]);
  if (filters.startedAfter !== null) params.push(["startedAfter", String(filters.startedAfter)]);
  if (filters.startedBefore !== null) params.push(["startedBefore", String(filters.startedBefore)]);
  return [...params, ...extra];
}

/** Whether the filters shown admit this summary (as GET /runs would: bounds exclusive). */
function admits(summary) {
  if (filters.statuses.length && !filters.statuses.includes(summary.status)) return false;
  if (filters.startedAfter !== null && !(summary.startedAt > filters.startedAfter)) return false;
  if (filters.startedBefore !== null && !(summary.startedAt < filters.startedBefore)) return false;
  return true;
}

// Newest startedAt first, ties by runId descending: the API's order.
function comesBefore(a, b) {
  if (a.startedAt !== b.startedAt) return a.startedAt > b.startedAt;
  return a.runId > b.runId;
}

function rowOf(summary) {
  const duration = el("td", { class: "num duration" }, formatDuration(runDuration(summary)));
  if (!isFinished(summary)) duration.dataset.startedAt = String(summary.startedAt);
  const link = el("a", { href: `run.html?id=${encodeURIComponent(summary.runId)}` }, summary.runId);
  return el(
    "tr",
    { dataset: { runId: summary.runId } },
    el("td", {}, statusBadge(summary.status)),
    el("td", { class: "mono run-id" }, link),
    el("td", { class: "col-input input" }, firstLine(summary.input)),
    el("td", { class: "num steps" }, String(summary.traceLength ?? "")),
    el("td", { class: "col-started" }, timeElement(summary.startedAt)),
    duration,
    el("td", { class: "num col-tokens" }, formatTokens(tokensOf(summary.usage))),
    el("td", { class: "col-lease lease" }, summary.lease ? String(summary.lease.holder) : ""),
  );
}

/** Show a summary in its place, unless a newer version of it is shown already. */
function place(summary, { live }) {
  const current = shown.get(summary.runId);
  if (current && current.summary.version > summary.version) return;
  if (!admits(summary)) {
    remove(summary.runId);
    return;
  }
  const last = body.lastElementChild && shown.get(body.lastElementChild.dataset.runId);
  if (!current && live && nextCursor !== null && last && comesBefore(last.summary, summary)) {
    return; // it belongs on a page not loaded yet
  }
  const row = rowOf(summary);
  if (live) row.classList.add("changed");
  if (current) current.row.remove();
  // Rows arrive mostly in order: look for the place from the bottom.
  let after = body.lastElementChild;
  while (after && comesBefore(summary, shown.get(after.dataset.runId).summary)) {
    after = after.previousElementSibling;
  }
  if (after) after.after(row);
  else body.prepend(row);
  shown.set(summary.runId, { row, summary });
  empty.hidden = true;
}

function remove(runId) {
  const current = shown.get(runId);
  if (!current) return;
  current.row.remove();
  shown.delete(runId);
  empty.hidden = shown.size > 0;
}

async function load({ reset }) {
  const mine = ++loading;
  if (reset) {
    body.replaceChildren();
    shown.clear();
    nextCursor = null;
  }
  more.disabled = true;
  try {
    const params = queryOf([["limit", String(PAGE_SIZE)]]);
    if (!reset && nextCursor) params.push(["cursor", nextCursor]);
    const page = await (await api("runs", { params })).json();
    if (mine !== loading) return;
    clearNotice();
    for (const summary of page.runs) place(summary, { live: false });
    nextCursor = page.nextCursor;
    more.hidden = nextCursor === null;
    empty.hidden = shown.size > 0;
  } catch (error) {
    if (mine === loading) showNotice(describeError(error));
  } finally {
    more.disabled = false;
  }
}

async function follow(signal) {
  let opened = false;
  for (let failures = 0; !signal.aborted; failures++) {
    try {
      for await (const event of streamEvents("events", { signal })) {
        if (event.event === "open") {
          // Loaded once the stream is open, so that no write falls between the two (and
          // again after a reconnection: what changed meanwhile is not replayed).
          setLive("live", "Live");
          load({ reset: true });
          opened = true;
          failures = 0;
        } else {
          handle(event);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ProblemError && [403, 404, 405].includes(error.status)) {
        setLive("off", "No live updates");
        if (!opened) load({ reset: true });
        return;
      }
    }
    setLive("reconnecting", "Reconnecting…");
    await sleep(Math.min(1000 * 2 ** failures, 15000));
  }
}

function handle(event) {
  const data = JSON.parse(event.data);
  if (event.event === "summary") place(data, { live: true });
  else if (event.event === "deleted") remove(data.runId);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  filters = {
    statuses: [...form.elements.status].filter((box) => box.checked).map((box) => box.value),
    startedAfter: fromLocalInput(form.elements.startedAfter.value),
    startedBefore: fromLocalInput(form.elements.startedBefore.value),
  };
  const query = new URLSearchParams(queryOf());
  history.replaceState(null, "", query.size ? `?${query}` : location.pathname);
  load({ reset: true });
});
form.addEventListener("reset", () => {
  // After the form cleared its fields: apply the empty filters.
  setTimeout(() => form.requestSubmit());
});
more.addEventListener("click", () => load({ reset: false }));

// Running runs' durations grow.
setInterval(() => {
  const now = Date.now();
  for (const cell of body.querySelectorAll("td[data-started-at]")) {
    cell.textContent = formatDuration(now - Number(cell.dataset.startedAt));
  }
}, 1000);

setupChrome();
showFilters();
followWhileShown(follow);
