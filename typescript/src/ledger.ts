/**
 * What the store holds of each run, as far as this process knows, and the write that brings it
 * up to date with a snapshot, worked out in time that does not grow with the run. The rules are
 * the Python client's (`runstore.client._ledger`):
 *
 * - new steps are `trace[known:]` and new turns `history[known:]`;
 * - the last known step and turn are checked again (one item each), so rewriting the latest step
 *   is sent as well;
 * - every other field is compared by its fingerprint (scalars by value, the rest by their JSON);
 * - a trace shorter than the store's, or a run un-finished, is the agent rewinding its own run: a
 *   whole PUT with `If-Match` on the version this process wrote last (412 if another writer got
 *   in between);
 * - on completion every step and turn is checked (once per run), so a rewrite of an earlier step
 *   reaches the store by the end of the run at the latest.
 */
import {
  type SnapshotView,
  type Write,
  type WriteAck,
  OPTIONAL_FIELDS,
  fieldFingerprint,
  fingerprintOf,
  encode,
  itemTexts,
} from './wire.js'

export const DEFAULT_CAPACITY = 4096

/** What the store holds of one run, as far as this process knows. */
interface RunState {
  version: number
  trace: string[]
  history: string[] | null
  fields: Map<string, unknown>
}

const fieldFingerprints = (fields: Record<string, unknown>): Map<string, unknown> =>
  new Map(
    Object.entries(fields).map(([name, value]) => [name, fieldFingerprint(value, `$.${name}`)]),
  )

const itemFingerprint = (item: unknown, path: string): string => fingerprintOf(encode(item, path))

/** The index of the first of `items[:limit]` that differs from `known`, else `limit`. */
const firstChange = (
  items: readonly unknown[],
  known: string[],
  limit: number,
  name: string,
): number => {
  for (let index = 0; index < limit; index += 1) {
    if (itemFingerprint(items[index], `$.${name}[${index}]`) !== known[index]) {
      return index
    }
  }
  return limit
}

// A loop, not push(...items): spreading a long array overflows the call stack.
const appendAll = (target: string[], items: readonly string[]): void => {
  for (const item of items) {
    target.push(item)
  }
}

/** Where sent items must start: after the known ones, or at the first that changed. */
const appendPoint = (
  items: readonly unknown[],
  known: string[],
  name: string,
  checkAll: boolean,
): number => {
  const count = known.length
  if (checkAll) {
    return firstChange(items, known, count, name)
  }
  const last = count - 1
  if (count > 0 && itemFingerprint(items[last], `$.${name}[${last}]`) !== known[last]) {
    return last
  }
  return count
}

/**
 * Per-run knowledge of the store, bounded to the `capacity` most recently used runs. A run
 * pushed out, or forgotten after an error, is sent whole next time.
 */
export class RunLedger {
  private readonly runs = new Map<string, RunState>()

  constructor(private readonly capacity: number = DEFAULT_CAPACITY) {}

  get size(): number {
    return this.runs.size
  }

  private get(runId: string): RunState | undefined {
    const state = this.runs.get(runId)
    if (state !== undefined) {
      // A Map iterates in insertion order: re-inserting marks the run most recently used.
      this.runs.delete(runId)
      this.runs.set(runId, state)
    }
    return state
  }

  private set(runId: string, state: RunState): void {
    this.runs.delete(runId)
    this.runs.set(runId, state)
    for (const oldest of this.runs.keys()) {
      if (this.runs.size <= this.capacity) {
        break
      }
      this.runs.delete(oldest)
    }
  }

  /** Drop what is known of a run: its next write is a whole PUT. */
  forget(runId: string): void {
    this.runs.delete(runId)
  }

  clear(): void {
    this.runs.clear()
  }

  /** Record a run as read from the store (`loadRun`), so writes continue with deltas. */
  learn(snapshot: Record<string, unknown>, version: number): void {
    const trace = Array.isArray(snapshot.trace) ? snapshot.trace : []
    const history = Array.isArray(snapshot.history) ? snapshot.history : null
    const fields = new Map<string, unknown>()
    for (const [name, value] of Object.entries(snapshot)) {
      if (name !== 'trace' && name !== 'history') {
        fields.set(name, fieldFingerprint(value, `$.${name}`))
      }
    }
    this.set(String(snapshot.runId), {
      version,
      trace: itemTexts(trace, 0, 'trace').fingerprints,
      history: history === null ? null : itemTexts(history, 0, 'history').fingerprints,
      fields,
    })
  }

  /** A PUT of the whole snapshot. */
  static whole(view: SnapshotView, ifMatch: number | null = null): Write {
    const trace = itemTexts(view.trace, 0, 'trace')
    const history = view.history === null ? null : itemTexts(view.history, 0, 'history')
    return {
      runId: view.runId,
      whole: true,
      fields: view.fields,
      trace: trace.texts,
      traceFrom: null,
      history: history === null ? null : history.texts,
      historyFrom: 0,
      clearHistory: false,
      ifMatch,
      lease: null,
      traceFingerprints: trace.fingerprints,
      historyFingerprints: history === null ? null : history.fingerprints,
      fieldFingerprints: fieldFingerprints(view.fields),
    }
  }

  /**
   * The write that makes the store hold `view`: a PATCH of what changed, a whole PUT when the
   * run is not known here or moved backwards, or null when nothing changed.
   */
  plan(view: SnapshotView, checkAll = false): Write | null {
    const state = this.get(view.runId)
    if (state === undefined) {
      return RunLedger.whole(view)
    }
    if (view.trace.length < state.trace.length) {
      return RunLedger.whole(view, state.version)
    }
    const fingerprints = fieldFingerprints(view.fields)
    const changed: Record<string, unknown> = {}
    let anyChanged = false
    for (const [name, value] of Object.entries(view.fields)) {
      if (!state.fields.has(name) || state.fields.get(name) !== fingerprints.get(name)) {
        changed[name] = value
        anyChanged = true
      }
    }
    for (const name of state.fields.keys()) {
      if (fingerprints.has(name)) {
        continue
      }
      if (name === 'completedAt') {
        return RunLedger.whole(view, state.version)
      }
      if (!OPTIONAL_FIELDS.has(name)) {
        // A PATCH can set an unknown field to null but not remove it.
        return RunLedger.whole(view)
      }
      changed[name] = null
      anyChanged = true
    }
    const write: Write = {
      runId: view.runId,
      whole: false,
      fields: changed,
      trace: [],
      traceFrom: null,
      history: null,
      historyFrom: 0,
      clearHistory: false,
      ifMatch: null,
      lease: null,
      traceFingerprints: [],
      historyFingerprints: null,
      fieldFingerprints: fingerprints,
    }
    const traceFrom = appendPoint(view.trace, state.trace, 'trace', checkAll)
    if (traceFrom < view.trace.length) {
      const sent = itemTexts(view.trace, traceFrom, 'trace')
      write.traceFrom = traceFrom
      write.trace = sent.texts
      write.traceFingerprints = sent.fingerprints
    }
    RunLedger.planHistory(write, view.history, state.history, checkAll)
    const sendsItems = write.traceFrom !== null || write.history !== null
    return anyChanged || sendsItems || write.clearHistory ? write : null
  }

  private static planHistory(
    write: Write,
    history: readonly unknown[] | null,
    known: string[] | null,
    checkAll: boolean,
  ): void {
    if (history === null) {
      write.clearHistory = known !== null
      return
    }
    let start: number
    if (known === null) {
      start = 0
    } else if (history.length < known.length) {
      // Shortened (a summarised conversation): resend from the first turn that changed.
      start = firstChange(history, known, history.length, 'history')
    } else {
      start = appendPoint(history, known, 'history', checkAll)
      if (start === history.length) {
        return
      }
    }
    const sent = itemTexts(history, start, 'history')
    write.historyFrom = start
    write.history = sent.texts
    write.historyFingerprints = sent.fingerprints
  }

  /** Record that the store took `write`. */
  confirm(write: Write, ack: WriteAck): void {
    let state: RunState | undefined
    if (write.whole) {
      state = {
        version: ack.version,
        trace: write.traceFingerprints,
        history: write.historyFingerprints,
        fields: write.fieldFingerprints,
      }
      this.set(write.runId, state)
    } else {
      state = this.get(write.runId)
      if (state === undefined) {
        return
      }
      if (write.traceFrom !== null) {
        state.trace.length = write.traceFrom
        appendAll(state.trace, write.traceFingerprints)
      }
      if (write.clearHistory) {
        state.history = null
      } else if (write.history !== null) {
        const history = state.history ?? []
        history.length = Math.min(history.length, write.historyFrom)
        appendAll(history, write.historyFingerprints ?? [])
        state.history = history
      }
      state.fields = write.fieldFingerprints
      state.version = ack.version
    }
    if (ack.traceLength !== state.trace.length) {
      // The store holds something else than this process thinks; start again whole.
      this.forget(write.runId)
    }
  }
}
