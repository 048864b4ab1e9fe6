// One run: its header, plan, steps as a timeline, conversation and final answer, followed
// live from GET /runs/{runId}/events until it finishes. Steps are rendered a page at a time as
// they scroll into view, and a step's input and output only when it is opened, so a run of
// thousands of steps opens as fast as a short one.
import {
  ProblemError,
  api,
  apiUrl,
  asText,
  describeError,
  el,
  followWhileShown,
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
  token,
  tokensOf,
} from "./viewer.js";

const ROWS_AT_ONCE = 200;
const runId = new URLSearchParams(location.search).get("id");
const path = `runs/${encodeURIComponent(runId ?? "")}`;
const $ = (id) => document.getElementById(id);
const traceList = $("trace");

let run = null;
let version = null;
let rendered = 0; // steps shown in the timeline
let longest = 0; // the longest step's duration, which is the full width of a bar

// --- steps ---------------------------------------------------------------------------------

const pick = (step, ...names) => names.map((name) => step[name]).find((v) => v !== undefined);

/** What a step says about itself, whatever its framework calls the fields. */
function describeStep(step) {
  if (!step || typeof step !== "object" || Array.isArray(step)) {
    return { kind: "step", tool: "", duration: NaN, tokens: null, input: undefined, output: step };
  }
  const tool = pick(step, "tool", "toolName", "name", "action");
  const started = pick(step, "startedAt", "startTime");
  const ended = pick(step, "completedAt", "endedAt", "finishedAt", "endTime");
  let duration = pick(step, "durationMs", "duration_ms", "elapsedMs");
  if (!Number.isFinite(duration) && Number.isFinite(started) && Number.isFinite(ended)) {
    duration = ended - started;
  }
  return {
    kind: asText(pick(step, "kind", "type") ?? (tool !== undefined ? "tool" : "step")),
    tool: tool === undefined ? "" : asText(tool),
    duration: Number.isFinite(duration) ? duration : NaN,
    tokens: tokensOf(step.usage) ?? (Number.isFinite(step.tokens) ? step.tokens : null),
    input: pick(step, "input", "args", "arguments", "toolInput"),
    output: pick(step, "output", "result", "observation", "toolOutput"),
    error: step.error,
  };
}

function scaleBar(bar) {
  const ms = Number(bar.dataset.ms);
  bar.style.width = longest > 0 && ms > 0 ? `${Math.max(0.5, (100 * ms) / longest)}%` : "0";
}

function field(title, value) {
  return el("div", { class: "field" }, el("h4", {}, title), el("pre", {}, asText(value)));
}

function stepRow(step, index) {
  const about = describeStep(step);
  const bar = el("span", { class: "dur-bar", dataset: { ms: String(about.duration) } });
  scaleBar(bar);
  const summary = el(
    "summary",
    {},
    el("span", { class: "idx" }, String(index)),
    el("span", { class: "kind" }, about.kind),
    el("span", { class: "tool mono" }, about.tool),
    el(
      "span",
      { class: "dur" },
      el("span", { class: "track" }, bar),
      el("span", { class: "dur-text" }, formatDuration(about.duration)),
    ),
    el("span", { class: "num" }, formatTokens(about.tokens)),
  );
  const details = el("details", { class: about.error ? "step step-error" : "step" }, summary);
  details.addEventListener("toggle", () => {
    if (!details.open || details.childElementCount > 1) return;
    details.append(
      el(
        "div",
        { class: "step-body" },
        about.input !== undefined && field("Input", about.input),
        about.output !== undefined && field("Output", about.output),
        about.error !== undefined && about.error !== null && field("Error", about.error),
        el("details", { class: "raw" }, el("summary", {}, "The whole step (JSON)"), el("pre", {}, asText(step))),
      ),
    );
  });
  return el("li", { dataset: { index: String(index) } }, details);
}

function renderSteps(upTo) {
  const trace = run.trace ?? [];
  const end = Math.min(upTo, trace.length);
  if (end > rendered) {
    const rows = document.createDocumentFragment();
    for (let i = rendered; i < end; i++) rows.append(stepRow(trace[i], i));
    traceList.append(rows);
    rendered = end;
  }
  $("trace-count").textContent = `(${trace.length})`;
  $("trace-more").textContent = !trace.length
    ? "No steps yet."
    : rendered < trace.length
      ? `Showing ${rendered} of ${trace.length} steps; scroll for more.`
      : "";
}

/**
 * Show the trace after a change from step `from` on (the steps before it are unchanged) of a
 * trace that had `before` steps. New steps appear at the bottom if the bottom was shown;
 * otherwise scrolling reaches them.
 */
function showTrace(from, before) {
  const trace = run.trace ?? [];
  let widest = 0;
  for (const step of trace) {
    const ms = describeStep(step).duration;
    if (ms > widest) widest = ms;
  }
  const shown = rendered;
  while (rendered > from) {
    traceList.lastElementChild.remove();
    rendered--;
  }
  if (widest !== longest) {
    longest = widest;
    for (const bar of traceList.querySelectorAll(".dur-bar")) scaleBar(bar);
  }
  let target = Math.max(ROWS_AT_ONCE, shown);
  if (before > 0 && shown >= before) target = Math.max(target, shown + trace.length - before);
  renderSteps(target);
}

new IntersectionObserver((entries) => {
  if (run && entries.some((entry) => entry.isIntersecting)) renderSteps(rendered + ROWS_AT_ONCE);
}).observe($("trace-more"));

// --- the rest of the run -------------------------------------------------------------------

function fact(name, ...value) {
  return [el("div", {}, el("dt", {}, name), el("dd", {}, ...value))];
}

function showHeader() {
  $("run-status").replaceChildren(statusBadge(run.status));
  $("run-id").textContent = run.runId;
  document.title = `${run.runId} · runstore`;
  const usage = run.usage && typeof run.usage === "object" ? run.usage : {};
  const counts = Object.entries(usage)
    .filter(([, value]) => Number.isFinite(value))
    .map(([name, value]) => `${name} ${value.toLocaleString()}`)
    .join(", ");
  const total = tokensOf(usage);
  $("run-facts").replaceChildren(
    ...fact("Started", timeElement(run.startedAt)),
    ...(isFinished(run) ? fact("Finished", timeElement(run.completedAt)) : []),
    ...fact(isFinished(run) ? "Duration" : "Running for", formatDuration(runDuration(run))),
    ...fact("Tokens", total === null ? "none recorded" : formatTokens(total), counts && ` (${counts})`),
    ...fact("Steps", String((run.trace ?? []).length)),
    ...fact("Version", String(version)),
  );
  showOptional("error-section", "run-error", run.error);
  $("run-input").textContent = asText(run.input);
  showOptional("plan-section", "run-plan", run.plan);
  showOptional("text-section", "run-text", run.text);
  showHistory();
  const curl = token() ? `curl -H "Authorization: Bearer $RUNSTORE_TOKEN" ` : "curl ";
  $("curl").value = `${curl}'${apiUrl(path)}'`;
}

function showOptional(sectionId, preId, value) {
  const present = value !== undefined && value !== null;
  $(sectionId).hidden = !present;
  $(preId).textContent = present ? asText(value) : "";
}

function showHistory() {
  const turns = Array.isArray(run.history) ? run.history : [];
  $("history-section").hidden = !turns.length;
  $("history-count").textContent = `(${turns.length})`;
  $("history").replaceChildren(
    ...turns.map((turn) => {
      const isTurn = turn && typeof turn === "object" && !Array.isArray(turn);
      const role = isTurn && typeof turn.role === "string" ? turn.role : "turn";
      const content = isTurn && "content" in turn ? turn.content : turn;
      return el("li", { class: `turn turn-${role.replace(/[^a-z]/g, "")}` }, el("span", { class: "role" }, role), el("pre", {}, asText(content)));
    }),
  );
}

function showRun(fresh, freshVersion) {
  const before = run?.trace?.length ?? 0;
  run = fresh;
  version = freshVersion;
  $("run").hidden = false;
  showHeader();
  showTrace(0, before);
}

/** Apply a `patch` event: the PATCH body that turns the shown version into the next. */
function applyPatch(patch) {
  const before = (run.trace ?? []).length;
  let from = before;
  for (const [name, value] of Object.entries(patch)) {
    if (name === "trace") {
      from = Math.min(patch.traceFrom ?? 0, from);
      run.trace = (run.trace ?? []).slice(0, patch.traceFrom ?? 0).concat(value);
    } else if (name === "history" && Array.isArray(value)) {
      run.history = (run.history ?? []).slice(0, patch.historyFrom ?? 0).concat(value);
    } else if (name === "traceFrom" || name === "historyFrom" || name === "version") {
      // positions and the version, read above and below
    } else if (value === null) {
      delete run[name];
    } else {
      run[name] = value;
    }
  }
  if (Number.isInteger(patch.version)) version = patch.version;
  showHeader();
  showTrace(from, before);
}

// --- loading and following -----------------------------------------------------------------

async function follow(signal) {
  for (let failures = 0; !isFinished(run); failures++) {
    if (signal.aborted) return;
    try {
      for await (const event of streamEvents(`${path}/events`, {
        params: [["after", String(version)]],
        signal,
      })) {
        if (event.event === "open") {
          setLive("live", "Live");
          failures = 0;
        } else if (event.event === "run") {
          showRun(JSON.parse(event.data), Number(event.id));
        } else if (event.event === "patch") {
          applyPatch(JSON.parse(event.data));
        } else if (event.event === "deleted") {
          setLive("off", "Deleted");
          showNotice("This run was deleted.");
          return;
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ProblemError && [403, 404, 405].includes(error.status)) {
        setLive("off", "Not followed live");
        if (error.status !== 404) showNotice(describeError(error));
        return;
      }
    }
    if (isFinished(run)) break;
    setLive("reconnecting", "Reconnecting…");
    await sleep(Math.min(1000 * 2 ** failures, 15000));
  }
  setLive("finished", "Finished");
}

async function open() {
  if (!runId) {
    setLive("off", "");
    showNotice("No run named: open a run from the list of runs.");
    return;
  }
  let response;
  try {
    response = await api(path);
  } catch (error) {
    setLive("off", "");
    showNotice(describeError(error));
    return;
  }
  const etag = response.headers.get("ETag") ?? "";
  showRun(await response.json(), Number(etag.replaceAll('"', "")));
  // For the benchmark (bench/viewer_open.py): ms from navigation to the first rows in place.
  requestAnimationFrame(() => {
    document.documentElement.dataset.openedMs = performance.now().toFixed(0);
  });
  if (isFinished(run)) setLive("finished", "Finished");
  else followWhileShown(follow);
}

$("copy-curl").addEventListener("click", async () => {
  const command = $("curl");
  command.select();
  try {
    await navigator.clipboard.writeText(command.value);
    $("copy-curl").textContent = "Copied";
  } catch {
    $("copy-curl").textContent = "Selected: copy it";
  }
  setTimeout(() => {
    $("copy-curl").textContent = "Copy as curl";
  }, 2000);
});

setInterval(() => {
  if (run && !isFinished(run)) {
    const cell = document.querySelector("#run-facts > div:nth-child(2) dd");
    if (cell) cell.textContent = formatDuration(runDuration(run));
  }
}, 1000);

setupChrome();
open();
