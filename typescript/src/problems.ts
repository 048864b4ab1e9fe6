/**
 * The problem types of the contract, as one tree of errors, mirroring the Python client's
 * `runstore.client.problems` (a test checks that both name the same slugs):
 *
 *     RunStoreError                      every error; `status`, `problem`, `detail`
 *     ├── BadRequest                400  bad-request
 *     │   ├── MalformedJson         400  malformed-json
 *     │   └── RunIdMismatch         400  run-id-mismatch
 *     ├── Unauthorized              401  unauthorized
 *     ├── Forbidden                 403  forbidden
 *     ├── RunNotFound               404  not-found
 *     ├── WriteConflict             409  conflict
 *     │   ├── StaleWrite            409  stale-write: would un-finish the run or shorten its trace
 *     │   ├── TraceGap              409  trace-gap: traceFrom / historyFrom past the stored end
 *     │   ├── LeaseHeld             409  lease-held: another holder's lease is live (`holder`,
 *     │   │                              `expiresAt`)
 *     │   └── LeaseLost             409  lease-lost: a newer lease fenced this one off
 *     ├── PreconditionFailed        412  precondition-failed
 *     ├── BodyTooLarge              413  body-too-large
 *     ├── InvalidRun                422  invalid-fields: `errors` names each bad field
 *     ├── StoreUnavailable          503  storage-unavailable; and every retryable failure once
 *     │   │                              retries are spent (status null: no answer came)
 *     │   └── RequestTimeout        408  request-timeout
 *     └── UnexpectedResponse             anything the contract does not lead the client to expect
 *         ├── MethodNotAllowed      405  method-not-allowed
 *         ├── UnsupportedMediaType  415  unsupported-media-type
 *         └── InternalError         500  internal-error
 */
import type { components } from './openapi.js'

export type Problem = Partial<components['schemas']['Problem']> & Record<string, unknown>
export type FieldProblem = components['schemas']['FieldProblem']

export const PROBLEM_TYPE_PREFIX = 'urn:runstore:problem:'

/** Base of every error the client raises. `status` is null when no answer came. */
export class RunStoreError extends Error {
  /** The problem type this class stands for; null: it has none of its own. */
  static readonly slug: string | null = null
  static readonly defaultStatus: number | null = null
  static readonly defaultTitle: string | null = null

  readonly detail: string
  readonly status: number | null
  /** The problem details: as the store answered them, or as this class describes them. */
  readonly problem: Problem

  constructor(
    detail: string,
    options: { status?: number | null; problem?: Problem; cause?: unknown } = {},
  ) {
    super(detail, options.cause === undefined ? undefined : { cause: options.cause })
    const kind = new.target as typeof RunStoreError
    this.name = kind.name
    this.detail = detail
    this.status = options.status === undefined ? kind.defaultStatus : options.status
    if (options.problem !== undefined) {
      this.problem = { ...options.problem }
    } else if (kind.slug !== null && this.status === kind.defaultStatus) {
      this.problem = {
        type: PROBLEM_TYPE_PREFIX + kind.slug,
        title: kind.defaultTitle ?? '',
        status: kind.defaultStatus ?? 0,
        detail,
      }
    } else {
      this.problem = this.status === null ? { detail } : { status: this.status, detail }
    }
    this.problem.detail ??= detail
    if (this.status !== null) {
      this.problem.status ??= this.status
    }
    const title = typeof this.problem.title === 'string' ? `${this.problem.title}: ` : ''
    this.message = `${this.status === null ? '' : `${this.status} `}${title}${detail}`
  }

  /** The problem type, such as `urn:runstore:problem:stale-write`. */
  get type(): string | null {
    return typeof this.problem.type === 'string' ? this.problem.type : null
  }

  get title(): string | null {
    return typeof this.problem.title === 'string' ? this.problem.title : null
  }
}

export class BadRequest extends RunStoreError {
  static override readonly slug: string | null = 'bad-request'
  static override readonly defaultStatus: number | null = 400
  static override readonly defaultTitle: string | null = 'Bad request'
}

export class MalformedJson extends BadRequest {
  static override readonly slug: string | null = 'malformed-json'
  static override readonly defaultTitle: string | null = 'Malformed JSON'
}

export class NestingTooDeep extends MalformedJson {
  static override readonly slug: string | null = 'nesting-too-deep'
  static override readonly defaultTitle: string | null = 'JSON nested too deeply'
}

/** The request line and headers are over the server's limit (431). */
export class HeadTooLarge extends BadRequest {
  static override readonly slug: string | null = 'head-too-large'
  static override readonly defaultStatus: number | null = 431
  static override readonly defaultTitle: string | null = 'Request header fields too large'
}

export class RunIdMismatch extends BadRequest {
  static override readonly slug: string | null = 'run-id-mismatch'
  static override readonly defaultTitle: string | null = 'Run id mismatch'
}

export class Unauthorized extends RunStoreError {
  static override readonly slug: string | null = 'unauthorized'
  static override readonly defaultStatus: number | null = 401
  static override readonly defaultTitle: string | null = 'Unauthorized'
}

export class Forbidden extends RunStoreError {
  static override readonly slug: string | null = 'forbidden'
  static override readonly defaultStatus: number | null = 403
  static override readonly defaultTitle: string | null = 'Forbidden'
}

export class RunNotFound extends RunStoreError {
  static override readonly slug: string | null = 'not-found'
  static override readonly defaultStatus: number | null = 404
  static override readonly defaultTitle: string | null = 'Not found'
}

export class WriteConflict extends RunStoreError {
  static override readonly slug: string | null = 'conflict'
  static override readonly defaultStatus: number | null = 409
  static override readonly defaultTitle: string | null = 'Conflict'
}

/** The write would move the run backwards; another writer got further. Not retried. */
export class StaleWrite extends WriteConflict {
  static override readonly slug: string | null = 'stale-write'
  static override readonly defaultTitle: string | null = 'Stale write'
}

/** An append starts past the stored end: the store holds less than the writer thought. */
export class TraceGap extends WriteConflict {
  static override readonly slug: string | null = 'trace-gap'
  static override readonly defaultTitle: string | null = 'Trace gap'
}

/** Another holder's lease on the run is live: it is not this worker's to write or take. */
export class LeaseHeld extends WriteConflict {
  static override readonly slug: string | null = 'lease-held'
  static override readonly defaultTitle: string | null = 'Lease held'

  /** Who holds the lease. */
  get holder(): string | null {
    return typeof this.problem.holder === 'string' ? this.problem.holder : null
  }

  /** When the lease expires unless renewed, in ms by the store's clock. */
  get expiresAt(): number | null {
    return Number.isInteger(this.problem.expiresAt) ? Number(this.problem.expiresAt) : null
  }
}

/**
 * The lease this write or renewal names is not the run's latest: another worker took the run
 * over (fencing). Stop working on the run; nothing was written.
 */
export class LeaseLost extends WriteConflict {
  static override readonly slug: string | null = 'lease-lost'
  static override readonly defaultTitle: string | null = 'Lease lost'
}

/** `If-Match` did not hold: another writer changed the run. Not retried. */
export class PreconditionFailed extends RunStoreError {
  static override readonly slug: string | null = 'precondition-failed'
  static override readonly defaultStatus: number | null = 412
  static override readonly defaultTitle: string | null = 'Precondition failed'
}

export class BodyTooLarge extends RunStoreError {
  static override readonly slug: string | null = 'body-too-large'
  static override readonly defaultStatus: number | null = 413
  static override readonly defaultTitle: string | null = 'Request body too large'
}

/** One write sends more `trace` and `history` items than the server's limit (413). */
export class TooManyItems extends BodyTooLarge {
  static override readonly slug: string | null = 'too-many-items'
  static override readonly defaultTitle: string | null = 'Too many items in one write'
}

/** A field breaks the snapshot's rules; `errors` lists each by JSON path. */
export class InvalidRun extends RunStoreError {
  static override readonly slug: string | null = 'invalid-fields'
  static override readonly defaultStatus: number | null = 422
  static override readonly defaultTitle: string | null = 'Invalid fields'

  /** `[{path: '$.trace', message, type}, ...]`. */
  get errors(): FieldProblem[] {
    const errors = this.problem.errors
    return Array.isArray(errors) ? [...errors] : []
  }
}

/**
 * The store cannot take the request now, or retries are spent; `attempts` says how many were
 * made, and `cause` is the last network error when no answer came.
 */
export class StoreUnavailable extends RunStoreError {
  static override readonly slug: string | null = 'storage-unavailable'
  static override readonly defaultStatus: number | null = 503
  static override readonly defaultTitle: string | null = 'Storage unavailable'

  attempts = 1
}

export class RequestTimeout extends StoreUnavailable {
  static override readonly slug: string | null = 'request-timeout'
  static override readonly defaultStatus: number | null = 408
  static override readonly defaultTitle: string | null = 'Request timeout'
}

/** The server is at its connection cap or its body memory budget (503, `Retry-After`); retried. */
export class ServerBusy extends StoreUnavailable {
  static override readonly slug: string | null = 'server-busy'
  static override readonly defaultTitle: string | null = 'Server busy'
}

/** An answer the contract does not lead the client to expect (405, 415, 500, not JSON). */
export class UnexpectedResponse extends RunStoreError {}

export class MethodNotAllowed extends UnexpectedResponse {
  static override readonly slug: string | null = 'method-not-allowed'
  static override readonly defaultStatus: number | null = 405
  static override readonly defaultTitle: string | null = 'Method not allowed'
}

export class UnsupportedMediaType extends UnexpectedResponse {
  static override readonly slug: string | null = 'unsupported-media-type'
  static override readonly defaultStatus: number | null = 415
  static override readonly defaultTitle: string | null = 'Unsupported media type'
}

export class InternalError extends UnexpectedResponse {
  static override readonly slug: string | null = 'internal-error'
  static override readonly defaultStatus: number | null = 500
  static override readonly defaultTitle: string | null = 'Internal error'
}

type ProblemClass = typeof RunStoreError

// Parents before their subclasses, so the first class answered with a status is the most general.
const CLASSES: readonly ProblemClass[] = [
  BadRequest,
  MalformedJson,
  NestingTooDeep,
  HeadTooLarge,
  RunIdMismatch,
  Unauthorized,
  Forbidden,
  RunNotFound,
  WriteConflict,
  StaleWrite,
  TraceGap,
  LeaseHeld,
  LeaseLost,
  PreconditionFailed,
  BodyTooLarge,
  TooManyItems,
  InvalidRun,
  StoreUnavailable,
  RequestTimeout,
  ServerBusy,
  MethodNotAllowed,
  UnsupportedMediaType,
  InternalError,
]

/** Problem slug -> error class. */
export const PROBLEM_TYPES: ReadonlyMap<string, ProblemClass> = new Map(
  CLASSES.map((kind) => [kind.slug ?? '', kind]),
)

// What a proxy in front of the store answers when the store is down or busy; retried like 503.
const UNAVAILABLE_STATUSES = new Set([429, 502, 504])

/** The typed error for an answer: by the problem's `type` slug, else by its status. */
export const errorForProblem = (status: number, problem: Problem): RunStoreError => {
  const slug =
    typeof problem.type === 'string' && problem.type.startsWith(PROBLEM_TYPE_PREFIX)
      ? problem.type.slice(PROBLEM_TYPE_PREFIX.length)
      : ''
  let kind = PROBLEM_TYPES.get(slug) ?? CLASSES.find((c) => c.defaultStatus === status)
  if (kind === undefined) {
    kind = UNAVAILABLE_STATUSES.has(status) ? StoreUnavailable : UnexpectedResponse
  }
  let detail = problem.detail
  if (typeof detail !== 'string' || detail === '') {
    const title = problem.title
    detail = typeof title === 'string' && title !== '' ? title : `The store answered ${status}.`
  }
  return new kind(detail, { status, problem })
}
