/**
 * When to try a request again, and how long to wait first: the rules of the Python client's
 * `runstore.client._retry`.
 *
 * Every request the hooks make is safe to repeat: GET, PUT of a whole snapshot, and PATCH,
 * which the contract makes idempotent. So network errors, timeouts and the answers that mean
 * "not now" (408, 429, 502, 503, 504) are retried with exponential backoff and jitter, bounded
 * in attempts and in total time. Answers that mean "no" (409, 412, 4xx in general) never are.
 */

export const RETRYABLE_STATUSES: ReadonlySet<number> = new Set([408, 429, 502, 503, 504])

/**
 * How hard to try before rejecting with `StoreUnavailable`. `maxAttempts` counts the first
 * try (1: no retries). The wait before retry n (from 1) is drawn between half and all of
 * `min(maxDelayMs, firstDelayMs * 2 ** (n - 1))`, or is the answer's `Retry-After` if that is
 * longer. No attempt starts once `totalMs` have passed since the first, nor when the wait would
 * end after that.
 */
export interface RetryPolicy {
  readonly maxAttempts: number
  readonly firstDelayMs: number
  readonly maxDelayMs: number
  readonly totalMs: number
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  maxAttempts: 10,
  firstDelayMs: 100,
  maxDelayMs: 2_000,
  totalMs: 30_000,
})

/** The defaults with the given fields replaced; RangeError for an impossible policy. */
export const retryPolicy = (given: Partial<RetryPolicy> = {}): RetryPolicy => {
  const policy = { ...DEFAULT_RETRY_POLICY, ...given }
  if (!Number.isInteger(policy.maxAttempts) || policy.maxAttempts < 1) {
    throw new RangeError('maxAttempts must be an integer of at least 1')
  }
  if (!(policy.firstDelayMs >= 0 && policy.maxDelayMs >= policy.firstDelayMs)) {
    throw new RangeError('need 0 <= firstDelayMs <= maxDelayMs')
  }
  if (!(policy.totalMs >= 0)) {
    throw new RangeError('totalMs must be >= 0')
  }
  return Object.freeze(policy)
}

/** The attempts of one call: counts them and says how long to wait before the next. */
export class RetrySchedule {
  attempts = 0
  private readonly started: number

  constructor(
    readonly policy: RetryPolicy,
    private readonly clock: () => number = performance.now.bind(performance),
    private readonly random: () => number = Math.random,
  ) {
    this.started = clock()
  }

  get elapsedMs(): number {
    return this.clock() - this.started
  }

  /** Record a failed attempt; the milliseconds to wait before the next, or null to give up. */
  nextDelay(retryAfterMs: number | null = null): number | null {
    this.attempts += 1
    const { maxAttempts, firstDelayMs, maxDelayMs, totalMs } = this.policy
    if (this.attempts >= maxAttempts) {
      return null
    }
    const ceiling = Math.min(maxDelayMs, firstDelayMs * 2 ** (this.attempts - 1))
    let delay = ceiling / 2 + (this.random() * ceiling) / 2
    if (retryAfterMs !== null) {
      delay = Math.max(delay, retryAfterMs)
    }
    return this.elapsedMs + delay > totalMs ? null : delay
  }
}

/** Milliseconds from a `Retry-After` header (delta-seconds or an HTTP date), or null. */
export const parseRetryAfter = (value: string | null, now: number = Date.now()): number | null => {
  if (value === null) {
    return null
  }
  const trimmed = value.trim()
  if (/^\d+$/.test(trimmed)) {
    return Number(trimmed) * 1000
  }
  // An HTTP date names its zone (GMT); Date.parse of a date without one would guess local time.
  if (!/\bGMT$/.test(trimmed)) {
    return null
  }
  const when = Date.parse(trimmed)
  return Number.isNaN(when) ? null : Math.max(0, when - now)
}
