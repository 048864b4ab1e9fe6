/**
 * Leases (API 1.1): taking, renewing and releasing a run's lease, claiming an orphaned run, and
 * the timer that renews a held lease every third of its ttl, as the Python hooks do.
 */
import { type Answer, type HttpSender, check, jsonOf } from './http.js'
import {
  LeaseHeld,
  LeaseLost,
  type RunStoreError,
  RunNotFound,
  UnexpectedResponse,
} from './problems.js'
import { type ClaimedRun, type Lease, runPath } from './wire.js'

export const MIN_TTL_MS = 1_000
export const MAX_TTL_MS = 3_600_000
export const DEFAULT_LEASE_TTL_MS = 30_000

/** What `claim()` takes over: the runs with one of `status` (default `['running']`) that are
 * not finished and are orphaned (their lease expired, or they never had one and were last
 * written `staleAfterMs` ago; default 60 000). */
export interface ClaimOptions {
  readonly status?: string | readonly string[] | undefined
  readonly staleAfterMs?: number | undefined
}

const JSON_HEADERS = { 'content-type': 'application/json' }

const leaseOf = (answer: Answer): Lease => {
  const body = jsonOf(answer) as Partial<Lease> | null
  if (
    typeof body?.runId !== 'string' ||
    typeof body.holder !== 'string' ||
    !Number.isInteger(body.lease) ||
    !Number.isInteger(body.expiresAt) ||
    !Number.isInteger(body.ttlMs)
  ) {
    throw new UnexpectedResponse("The store's answer is not a lease.", { status: answer.status })
  }
  return body as Lease
}

/** The lease requests of one holder. */
export class LeaseRequests {
  constructor(
    private readonly http: HttpSender,
    readonly holder: string,
    readonly ttlMs: number,
  ) {
    if (!Number.isInteger(ttlMs) || ttlMs < MIN_TTL_MS || ttlMs > MAX_TTL_MS) {
      throw new RangeError(`leaseTtlMs must be 1000 to 3600000, not ${ttlMs}`)
    }
  }

  /** Take the run's lease (`lease` null) or renew lease `lease`. Taking it again as the same
   * holder while it is live renews it, so a retried request is safe. */
  async acquire(runId: string, lease: number | null): Promise<Lease> {
    const body: Record<string, unknown> = { holder: this.holder, ttlMs: this.ttlMs }
    if (lease !== null) {
      body.lease = lease
    }
    const path = `${runPath(runId)}/lease`
    return leaseOf(await this.http.request('POST', path, JSON.stringify(body), JSON_HEADERS))
  }

  /** End lease `lease` now (safe to repeat); LeaseLost if a newer lease exists. */
  async release(runId: string, lease: number): Promise<void> {
    const path = `${runPath(runId)}/lease`
    check(await this.http.request('DELETE', path, undefined, { 'runstore-lease': String(lease) }))
  }

  /** Take over the orphaned run that has waited longest, with its version; null if none. */
  async claim(
    options: ClaimOptions,
  ): Promise<(ClaimedRun<Record<string, unknown>> & { version: number }) | null> {
    const status = options.status ?? ['running']
    const body = {
      holder: this.holder,
      ttlMs: this.ttlMs,
      status: typeof status === 'string' ? [status] : status,
      staleAfterMs: options.staleAfterMs ?? 60_000,
    }
    const answer = await this.http.request('POST', '/claims', JSON.stringify(body), JSON_HEADERS)
    if (answer.status === 204) {
      return null
    }
    const claimed = jsonOf(answer) as { run?: unknown; lease?: unknown } | null
    const etag = (answer.headers.get('etag') ?? '').replace(/^"|"$/g, '')
    const run = claimed?.run
    if (typeof run !== 'object' || run === null || !/^\d+$/.test(etag)) {
      throw new UnexpectedResponse(
        "The store's answer to a claim is not a run and a lease with an ETag.",
        { status: answer.status },
      )
    }
    const lease = leaseOf({ ...answer, text: JSON.stringify(claimed?.lease) })
    return { run: run as Record<string, unknown>, lease, version: Number(etag) }
  }
}

const lostBecause = (lease: Lease, error: RunStoreError): LeaseLost =>
  error instanceof LeaseLost
    ? error
    : new LeaseLost(
        `The lease ${lease.lease} on run ${JSON.stringify(lease.runId)} could not be renewed ` +
          `(${error.detail}); another worker owns the run now.`,
      )

/**
 * A run these hooks hold a lease on. A timer renews it every third of the ttl; once the store
 * says it is lost, `lost` is the error every later hook for the run rejects with. The timer is
 * unref'd: it does not keep the process alive, as a worker that exits should let its leases
 * expire.
 */
export class HeldRun {
  lost: LeaseLost | null = null
  private timer: ReturnType<typeof setInterval> | null
  private renewing = false

  constructor(
    public lease: Lease,
    requests: LeaseRequests,
  ) {
    this.timer = setInterval(() => {
      if (this.renewing) {
        return
      }
      this.renewing = true
      requests
        .acquire(lease.runId, this.lease.lease)
        .then((renewed) => {
          if (this.timer !== null) {
            this.lease = renewed
          }
        })
        .catch((error: unknown) => {
          if (
            error instanceof LeaseLost ||
            error instanceof LeaseHeld ||
            error instanceof RunNotFound
          ) {
            this.lost = lostBecause(this.lease, error)
            this.stop()
          }
          // Anything else (the store busy or unreachable): try again at the next turn.
        })
        .finally(() => {
          this.renewing = false
        })
    }, requests.ttlMs / 3)
    this.timer.unref()
  }

  /** Stop renewing; a renewal in flight is let finish and its answer ignored. */
  stop(): void {
    if (this.timer !== null) {
      clearInterval(this.timer)
      this.timer = null
    }
  }
}
