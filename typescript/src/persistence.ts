/**
 * `makeHttpPersistence(url, options)`: the persistence hooks an agent framework calls
 * (`onRunStart`, `onStepComplete`, `onRunComplete`, `loadRun`, `close`), sending only what is
 * new to a runstore server, as the Python hooks do (`runstore.client._async_persistence`).
 *
 * Hooks for one run are chained: each waits for the one before it for the same run, so they
 * reach the store in order even when the framework does not await them. A queued hook works out
 * its write when its turn comes, from the snapshot object as it is then.
 *
 * With `holder` (leases, API 1.1): `onRunStart` also takes the run's lease, every write carries
 * it, a timer renews it every third of `leaseTtlMs`, and `onRunComplete` releases it after the
 * final write. `claim()` takes over an orphaned run and `resume(runId)` an existing one, both
 * then held the same way. Once the lease is lost (another worker took the run over), the next
 * hook for that run rejects with `LeaseLost`: stop working on it. `LeaseHeld` says another
 * holder owns a run being started or resumed. `close()` stops renewing without releasing: a
 * closed worker's runs become claimable when their leases expire.
 */
import { HttpSender, ackOf, check, storedOf } from './http.js'
import { type ClaimOptions, DEFAULT_LEASE_TTL_MS, HeldRun, LeaseRequests } from './leases.js'
import { DEFAULT_CAPACITY, RunLedger } from './ledger.js'
import { LeaseLost, RunNotFound, RunStoreError, StoreUnavailable, TraceGap } from './problems.js'
import { type RetryPolicy, retryPolicy } from './retry.js'
import {
  type ClaimedRun,
  type Lease,
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
  /** Hold each run started or resumed under a lease as this holder (1-200 printable
   * characters; a worker's name). */
  readonly holder?: string | undefined
  /** The leases' ttl, 1 000 to 3 600 000 ms (default 30 000); renewed every third of it. */
  readonly leaseTtlMs?: number | undefined
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
  /** Wait for every pending hook, stop renewing leases (without releasing them), and forget
   * every run; idempotent. */
  close(): Promise<void>
  /** With a holder: take over the orphaned run that has waited longest and hold it (later
   * hooks send deltas under the new lease); null when no run qualifies. */
  claim<T = RunSnapshot>(options?: ClaimOptions): Promise<ClaimedRun<T> | null>
  /** With a holder: take an existing run's lease (`LeaseHeld` if another holder has it), load
   * it and hold it; `RunNotFound` if absent. */
  resume<T = RunSnapshot>(runId: string): Promise<T>
  /** The lease these hooks hold on a run (as last granted or renewed), or null. */
  lease(runId: string): Lease | null
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
  const leases =
    options.holder === undefined
      ? null
      : new LeaseRequests(http, options.holder, options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS)
  const held = new Map<string, HeldRun>()
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
    if (write.lease !== null) {
      headers['runstore-lease'] = String(write.lease)
    }
    const method = write.whole ? 'PUT' : 'PATCH'
    return ackOf(await http.request(method, runPath(write.runId), bodyOf(write), headers))
  }

  const save = async (view: SnapshotView, final: boolean): Promise<void> => {
    const run = held.get(view.runId)
    if (run?.lost) {
      throw run.lost
    }
    let write = ledger.plan(view, final)
    if (write !== null) {
      let ack: WriteAck
      try {
        try {
          write.lease = run?.lease.lease ?? null
          ack = await send(write)
        } catch (error) {
          if (write.whole || !(error instanceof RunNotFound || error instanceof TraceGap)) {
            throw error
          }
          write = RunLedger.whole(view)
          write.lease = run?.lease.lease ?? null
          ack = await send(write)
        }
      } catch (error) {
        if (error instanceof RunStoreError && refused(error)) {
          ledger.forget(view.runId)
        }
        if (error instanceof LeaseLost && run !== undefined) {
          run.lost = error
          run.stop()
        }
        throw error
      }
      ledger.confirm(write, ack)
    }
    if (final) {
      ledger.forget(view.runId)
    }
  }

  const hold = (lease: Lease): void => {
    held.get(lease.runId)?.stop()
    held.set(lease.runId, new HeldRun(lease, needLeases()))
  }

  const needLeases = (): LeaseRequests => {
    if (leases === null) {
      throw new TypeError('leases need hooks made with a holder')
    }
    return leases
  }

  const start = async (view: SnapshotView): Promise<void> => {
    await save(view, false)
    if (leases !== null && !held.has(view.runId)) {
      hold(await leases.acquire(view.runId, null))
    }
  }

  const complete = async (view: SnapshotView): Promise<void> => {
    const run = held.get(view.runId)
    try {
      await save(view, true)
    } finally {
      held.delete(view.runId)
      run?.stop()
    }
    if (run !== undefined && run.lost === null && leases !== null) {
      await leases.release(view.runId, run.lease.lease)
    }
  }

  const hook = (
    snapshot: SnapshotInput,
    task: (view: SnapshotView) => Promise<void>,
  ): Promise<void> => {
    let view: SnapshotView
    try {
      view = viewOf(snapshot)
    } catch (error) {
      return Promise.reject(error)
    }
    return inTurn(view.runId, () => task(view))
  }

  const load = async (runId: string, path: string): Promise<Record<string, unknown> | null> => {
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
    return stored.snapshot
  }

  return {
    onRunStart: (snapshot) => hook(snapshot, start),
    onStepComplete: (snapshot) => hook(snapshot, (view) => save(view, false)),
    onRunComplete: (snapshot) => hook(snapshot, complete),
    loadRun: <T = RunSnapshot>(runId: string): Promise<T | null> => {
      let path: string
      try {
        path = runPath(runId)
      } catch (error) {
        return Promise.reject(error)
      }
      return inTurn(runId, async () => (await load(runId, path)) as T | null)
    },
    close: async () => {
      while (queues.size > 0) {
        await Promise.all(queues.values())
      }
      for (const run of held.values()) {
        run.stop()
      }
      held.clear()
      ledger.clear()
    },
    claim: async <T = RunSnapshot>(
      claimOptions: ClaimOptions = {},
    ): Promise<ClaimedRun<T> | null> => {
      const claimed = await needLeases().claim(claimOptions)
      if (claimed === null) {
        return null
      }
      ledger.learn(claimed.run, claimed.version)
      hold(claimed.lease)
      return { run: claimed.run as T, lease: claimed.lease }
    },
    resume: <T = RunSnapshot>(runId: string): Promise<T> => {
      let path: string
      let requests: LeaseRequests
      try {
        path = runPath(runId)
        requests = needLeases()
      } catch (error) {
        return Promise.reject(error)
      }
      return inTurn(runId, async () => {
        const lease = await requests.acquire(runId, null)
        const snapshot = await load(runId, path)
        if (snapshot === null) {
          throw new RunNotFound(`No run is stored under ${JSON.stringify(runId)}.`)
        }
        hold(lease)
        return snapshot as T
      })
    },
    lease: (runId) => {
      const run = held.get(runId)
      return run === undefined || run.lost !== null ? null : run.lease
    },
  }
}
