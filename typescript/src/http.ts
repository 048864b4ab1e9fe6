/**
 * Requests to a runstore server over Node's global `fetch`, retried by the rules of `retry.ts`,
 * and their answers read into acknowledgements, snapshots or typed errors.
 */
import {
  type Problem,
  type RunStoreError,
  StoreUnavailable,
  UnexpectedResponse,
  errorForProblem,
} from './problems.js'
import { RETRYABLE_STATUSES, type RetryPolicy, RetrySchedule, parseRetryAfter } from './retry.js'
import type { WriteAck } from './wire.js'

export const DEFAULT_TIMEOUT_MS = 10_000
const USER_AGENT = 'runstore-client-ts/0.1'

/** An answer, read whole. */
export interface Answer {
  readonly status: number
  readonly statusText: string
  readonly headers: Headers
  readonly text: string
}

export interface HttpOptions {
  /** Sent as `Authorization: Bearer <token>`. */
  readonly token?: string | undefined
  /** Bounds each attempt (default 10 s). */
  readonly timeoutMs?: number | undefined
  readonly retry: RetryPolicy
  /** Replaces the global `fetch` (a fetch with a proxy dispatcher, say). */
  readonly fetch?: typeof fetch | undefined
}

// Network errors from undici carry the system error as `cause` (ECONNREFUSED, ECONNRESET, a
// socket the server closed while restarting); a TypeError without one is a bad request made
// here (a bad URL or header), which would fail the same way again.
const isRetryable = (error: unknown): boolean =>
  error instanceof Error &&
  (error.name === 'TimeoutError' || (error instanceof TypeError && error.cause !== undefined))

const describe = (error: unknown): string => {
  if (!(error instanceof Error)) {
    return String(error)
  }
  const cause = error.cause instanceof Error ? `: ${error.cause.message}` : ''
  return `${error.name}: ${error.message}${cause}`
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

const problemOf = (answer: Answer): Problem => {
  try {
    const problem: unknown = JSON.parse(answer.text)
    if (typeof problem === 'object' && problem !== null && !Array.isArray(problem)) {
      return problem as Problem
    }
  } catch {
    // Not JSON: a proxy's page, say; described below.
  }
  const text = answer.text.slice(0, 500).trim()
  return {
    status: answer.status,
    title: answer.statusText,
    detail: text || `The store answered ${answer.status} ${answer.statusText}.`,
  }
}

/** Throw the typed error for an answer that is not a success. */
export const check = (answer: Answer): void => {
  if (answer.status >= 400) {
    throw errorForProblem(answer.status, problemOf(answer))
  }
}

/** The JSON of a success; the typed error of anything else. */
export const jsonOf = (answer: Answer): unknown => {
  check(answer)
  try {
    return JSON.parse(answer.text) as unknown
  } catch {
    throw new UnexpectedResponse(
      `The store answered ${answer.status} with a body that is not JSON.`,
      { status: answer.status },
    )
  }
}

/** The `{runId, version, traceLength}` of a write's answer. */
export const ackOf = (answer: Answer): WriteAck => {
  const body = jsonOf(answer) as Partial<WriteAck> | null
  if (
    typeof body?.runId !== 'string' ||
    !Number.isInteger(body.version) ||
    !Number.isInteger(body.traceLength)
  ) {
    throw new UnexpectedResponse(
      "The store's answer to a write lacks runId, version or traceLength.",
      { status: answer.status },
    )
  }
  return { runId: body.runId, version: Number(body.version), traceLength: Number(body.traceLength) }
}

/** A stored run: its JSON object and the version its ETag names. */
export interface Stored {
  readonly snapshot: Record<string, unknown>
  readonly version: number
}

/** A GET's answer: null for 404, else the snapshot and its version. */
export const storedOf = (answer: Answer): Stored | null => {
  if (answer.status === 404) {
    return null
  }
  const snapshot = jsonOf(answer)
  const etag = (answer.headers.get('etag') ?? '').replace(/^"|"$/g, '')
  if (typeof snapshot !== 'object' || snapshot === null || !/^\d+$/.test(etag)) {
    throw new UnexpectedResponse("The store's answer to GET is not a snapshot with an ETag.", {
      status: 200,
    })
  }
  return { snapshot: snapshot as Record<string, unknown>, version: Number(etag) }
}

/** Sends requests to one server, retrying what is safe to retry. */
export class HttpSender {
  private readonly baseUrl: string
  private readonly headers: Record<string, string>
  private readonly timeoutMs: number
  private readonly fetch: typeof fetch

  constructor(
    baseUrl: string,
    private readonly options: HttpOptions,
  ) {
    // Throws TypeError now for a URL fetch could never use.
    const url = new URL(baseUrl)
    this.baseUrl = url.href.replace(/\/+$/, '')
    this.headers = { 'user-agent': USER_AGENT, accept: 'application/json' }
    if (options.token !== undefined) {
      this.headers.authorization = `Bearer ${options.token}`
    }
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS
    this.fetch = options.fetch ?? globalThis.fetch
  }

  /** The first answer not worth retrying; StoreUnavailable once the retry policy gives up. */
  async request(
    method: string,
    path: string,
    body?: string,
    headers: Record<string, string> = {},
  ): Promise<Answer> {
    const url = this.baseUrl + path
    const schedule = new RetrySchedule(this.options.retry)
    const init: RequestInit = { method, headers: { ...this.headers, ...headers } }
    if (body !== undefined) {
      init.body = body
      ;(init.headers as Record<string, string>)['content-type'] = 'application/json'
    }
    for (;;) {
      let failure: {
        description: string
        answer: Answer | null
        error: unknown
        retryAfter: number | null
      }
      try {
        const response = await this.fetch(url, {
          ...init,
          signal: AbortSignal.timeout(this.timeoutMs),
        })
        const answer: Answer = {
          status: response.status,
          statusText: response.statusText,
          headers: response.headers,
          text: await response.text(),
        }
        if (!RETRYABLE_STATUSES.has(answer.status)) {
          return answer
        }
        failure = {
          description: `${answer.status} ${answer.statusText}`,
          answer,
          error: undefined,
          retryAfter: parseRetryAfter(answer.headers.get('retry-after')),
        }
      } catch (error) {
        if (!isRetryable(error)) {
          throw error
        }
        failure = { description: describe(error), answer: null, error, retryAfter: null }
      }
      const delay = schedule.nextDelay(failure.retryAfter)
      if (delay === null) {
        throw giveUp(schedule, method, url, failure)
      }
      await sleep(delay)
    }
  }
}

const giveUp = (
  schedule: RetrySchedule,
  method: string,
  url: string,
  failure: { description: string; answer: Answer | null; error: unknown },
): RunStoreError => {
  const attempts = schedule.attempts
  const detail =
    `${method} ${url} failed ${attempts} time${attempts === 1 ? '' : 's'} in ` +
    `${(schedule.elapsedMs / 1000).toFixed(1)} s; last: ${failure.description}`
  let error: StoreUnavailable
  if (failure.answer === null) {
    error = new StoreUnavailable(detail, { status: null, cause: failure.error })
  } else {
    const problem = problemOf(failure.answer)
    const answered = errorForProblem(failure.answer.status, problem)
    error = new StoreUnavailable(`${detail} (${answered.detail})`, {
      status: failure.answer.status,
      problem,
    })
  }
  error.attempts = attempts
  return error
}
