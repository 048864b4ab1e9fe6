/**
 * `makeHttpPersistence(url, options)`: the persistence hooks an agent framework calls
 * (`onRunStart`, `onStepComplete`, `onRunComplete`, `loadRun`, `close`), sending only what is
 * new to a runstore server, as the Python hooks do (`runstore.client._async_persistence`).
 *
 * Hooks for one run are chained: each waits for the one before it for the same run, so they
 * reach the store in order even when the framework does not await them. A queued hook works out
 * its write when its turn comes, from the snapshot object as it is then.
 */
import { HttpSender, ackOf, check, storedOf } from './http.js'
import { DEFAULT_CAPACITY, RunLedger } from './ledger.js'
import { RunNotFound, RunStoreError, StoreUnavailable, TraceGap } from './problems.js'
import { type RetryPolicy, retryPolicy } from './retry.js'
import {
  type RunSnapshot,
  type SnapshotInput,
  type SnapshotView,
  type Write,
  type WriteAck,
  bodyOf,
  runPath,
  viewOf,
} from './wire.js'

export interface HttpPersistenceOptions {
  /** Sent as `Authorization: Bearer <token>` (the store's `RUNSTORE_TOKENS`). */
  readonly token?: string | undefined
  /** Bounds each attempt, in milliseconds (default 10 000). */
  readonly timeoutMs?: number | undefined
  /** How hard each request tries when the store is unreachable or answers 408, 429, 502, 503
   * or 504 (default: 10 attempts within 30 s, backoff from 100 ms to 2 s with jitter). */
  readonly retry?: Partial<RetryPolicy> | undefined
  /** How many runs the hooks remember, to send deltas (default 4096; a run pushed out is sent
   * whole at its next hook). */
  readonly capacity?: number | undefined
  /** Replaces the global `fetch`. */
  readonly fetch?: typeof fetch | undefined
}

/**
 * The hooks, shaped like the framework's `IPersistence` (structurally: nothing here imports
 * the framework). Every hook returns a promise; errors are `RunStoreError` subclasses.
 */
export interface HttpPersistence {
  /** Store the run as it starts (whole, unless `loadRun` read it first). */
  onRunStart(snapshot: SnapshotInput): Promise<void>
  /** Send the new steps, turns and changed fields. */
  onStepComplete(snapshot: SnapshotInput): Promise<void>
  /** Send what is new, after checking every step and turn sent before (once per run). */
  onRunComplete(snapshot: SnapshotInput): Promise<void>
  /**
   * The stored run, or null; later hooks for it continue with deltas. The type parameter lets
   * the result stand for the framework's own snapshot type (the store returns what the
   * framework's hooks stored).
   */
  loadRun<T = RunSnapshot>(runId: string): Promise<T | null>
  /** Wait for every pending hook, then forget every run; idempotent. */
  close(): Promise<void>
}

// After "not now" what the store confirmed is still known, so the next hook sends everything
// since (appends are idempotent). After a refusal, what is stored is unknown.
const refused = (error: unknown): boolean => !(error instanceof StoreUnavailable)

const ignore = (): void => {}

/** The persistence hooks over a runstore server at `url`. */
export const makeHttpPersistence = (
  url: string,
  options: HttpPersistenceOptions = {},
): HttpPersistence => {
  const http = new HttpSender(url, {
    token: options.token,
    timeoutMs: options.timeoutMs,
    retry: retryPolicy(options.retry),
    fetch: options.fetch,
  })
  const ledger = new RunLedger(options.capacity ?? DEFAULT_CAPACITY)
  // runId -> the last queued hook for that run, settled (never rejects).
  const queues = new Map<string, Promise<void>>()

  const inTurn = <T>(runId: string, task: () => Promise<T>): Promise<T> => {
    const result = (queues.get(runId) ?? Promise.resolve()).then(task)
    const settled = result.then(ignore, ignore)
    queues.set(runId, settled)
    void settled.then(() => {
      if (queues.get(runId) === settled) {
        queues.delete(runId)
      }
    })
    return result
  }

  const send = async (write: Write): Promise<WriteAck> => {
    const headers: Record<string, string> = {}
    if (write.ifMatch !== null) {
      headers['if-match'] = `"${write.ifMatch}"`
    }
    const method = write.whole ? 'PUT' : 'PATCH'
    return ackOf(await http.request(method, runPath(write.runId), bodyOf(write), headers))
  }

  const save = async (view: SnapshotView, final: boolean): Promise<void> => {
    let write = ledger.plan(view, final)
    if (write !== null) {
      let ack: WriteAck
      try {
        try {
          ack = await send(write)
        } catch (error) {
          if (write.whole || !(error instanceof RunNotFound || error instanceof TraceGap)) {
            throw error
          }
          write = RunLedger.whole(view)
          ack = await send(write)
        }
      } catch (error) {
        if (error instanceof RunStoreError && refused(error)) {
          ledger.forget(view.runId)
        }
        throw error
      }
      ledger.confirm(write, ack)
    }
    if (final) {
      ledger.forget(view.runId)
    }
  }

  const hook = (snapshot: SnapshotInput, final: boolean): Promise<void> => {
    let view: SnapshotView
    try {
      view = viewOf(snapshot)
    } catch (error) {
      return Promise.reject(error)
    }
    return inTurn(view.runId, () => save(view, final))
  }

  return {
    onRunStart: (snapshot) => hook(snapshot, false),
    onStepComplete: (snapshot) => hook(snapshot, false),
    onRunComplete: (snapshot) => hook(snapshot, true),
    loadRun: <T = RunSnapshot>(runId: string): Promise<T | null> => {
      let path: string
      try {
        path = runPath(runId)
      } catch (error) {
        return Promise.reject(error)
      }
      return inTurn(runId, async () => {
        const answer = await http.request('GET', path)
        if (answer.status !== 404) {
          check(answer)
        }
        const stored = storedOf(answer)
        if (stored === null) {
          ledger.forget(runId)
          return null
        }
        ledger.learn(stored.snapshot, stored.version)
        return stored.snapshot as T
      })
    },
    close: async () => {
      while (queues.size > 0) {
        await Promise.all(queues.values())
      }
      ledger.clear()
    },
  }
}
