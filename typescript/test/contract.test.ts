/**
 * What the package must agree on with the rest of the project: the problem types of the Python
 * client, the framework's persistence shape, and the retry rules.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { test } from 'node:test'

import {
  type HttpPersistence,
  PROBLEM_TYPES,
  type RunSnapshot,
  RunStoreError,
  StaleWrite,
  StoreUnavailable,
  UnexpectedResponse,
  WriteConflict,
  errorForProblem,
  makeHttpPersistence,
} from '../src/index.js'
import { RetrySchedule, parseRetryAfter, retryPolicy } from '../src/retry.js'
import type { SnapshotInput } from '../src/wire.js'
import { PYTHON } from './support.js'

// ------------------------------------------------------------- types (checked by tsc)

// The framework's types, as its persistence (../shared/seed) uses them: interfaces, not
// aliases, with literal statuses and optional fields left undefined.
interface IUsage {
  inputTokens: number
  outputTokens: number
}
interface IConversationTurn {
  role: 'user' | 'assistant' | 'system'
  content: string
}
interface IPlan {
  steps: string[]
}
interface IStepResult {
  step: number
  tool: string
  output: string
}
interface IRunSnapshot {
  runId: string
  status: 'running' | 'completed' | 'failed' | 'cancelled'
  startedAt: number
  completedAt?: number
  input: string
  history?: IConversationTurn[]
  plan?: IPlan
  trace: IStepResult[]
  usage: IUsage
  stepIndex: number
  iterations: number
  revisions: number
  text?: string
  error?: string
}
interface IPersistence {
  onRunStart?: (snapshot: IRunSnapshot) => void | Promise<void>
  onStepComplete?: (snapshot: IRunSnapshot) => void | Promise<void>
  onRunComplete?: (snapshot: IRunSnapshot) => void | Promise<void>
  loadRun?: (runId: string) => IRunSnapshot | null | Promise<IRunSnapshot | null>
}
interface ISqlitePersistence extends IPersistence {
  close: () => void
}

// The drop-in: what makeHttpPersistence returns is what the framework takes.
export const dropIn: ISqlitePersistence = makeHttpPersistence('http://runstore:8000')

type Equal<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
type Named<T> = keyof { [K in keyof T as string extends K ? never : K]: T[K] }
// The hooks' input names exactly the fields of the generated wire type.
export const sameFields: Equal<keyof SnapshotInput, Named<RunSnapshot>> = true
export const hooksShape: Equal<
  keyof HttpPersistence,
  keyof ISqlitePersistence | 'claim' | 'resume' | 'lease'
> = true

// ------------------------------------------------------------- problem types

test('the problem types are the Python client’s, slug for slug', () => {
  const script =
    'import json; from runstore.client.problems import PROBLEM_TYPES as T; ' +
    'print(json.dumps({s: [c.__name__, c.default_status] for s, c in T.items()}))'
  const python = JSON.parse(execFileSync(PYTHON, ['-c', script], { encoding: 'utf8' })) as Record<
    string,
    [string, number]
  >
  const here = Object.fromEntries(
    [...PROBLEM_TYPES].map(([slug, kind]) => [slug, [kind.name, kind.defaultStatus]]),
  )
  assert.deepEqual(here, python)
})

test('an answer becomes the class its problem type names, else the one its status does', () => {
  const stale = errorForProblem(409, {
    type: 'urn:runstore:problem:stale-write',
    title: 'Stale write',
    detail: 'behind',
  })
  assert.ok(stale instanceof StaleWrite && stale instanceof WriteConflict)
  assert.equal(stale.message, '409 Stale write: behind')
  assert.ok(errorForProblem(409, {}) instanceof WriteConflict)
  assert.ok(errorForProblem(502, { detail: 'bad gateway' }) instanceof StoreUnavailable)
  const odd = errorForProblem(418, {})
  assert.ok(odd instanceof UnexpectedResponse && odd instanceof RunStoreError)
  assert.equal(odd.detail, 'The store answered 418.')
})

// ------------------------------------------------------------- retry rules

test('backoff doubles from the first delay up to the cap, with jitter in the upper half', () => {
  const policy = retryPolicy({ maxAttempts: 5, firstDelayMs: 100, maxDelayMs: 400, totalMs: 1e9 })
  const lowest = new RetrySchedule(
    policy,
    () => 0,
    () => 0,
  )
  const highest = new RetrySchedule(
    policy,
    () => 0,
    () => 1,
  )
  const low = [1, 2, 3, 4, 5].map(() => lowest.nextDelay())
  const high = [1, 2, 3, 4, 5].map(() => highest.nextDelay())
  assert.deepEqual(low, [50, 100, 200, 200, null])
  assert.deepEqual(high, [100, 200, 400, 400, null])
})

test('Retry-After is waited for when longer, and no retry starts past the total', () => {
  let now = 0
  const policy = retryPolicy({ maxAttempts: 10, firstDelayMs: 10, maxDelayMs: 10, totalMs: 5000 })
  const schedule = new RetrySchedule(
    policy,
    () => now,
    () => 0,
  )
  assert.equal(schedule.nextDelay(3000), 3000)
  now = 3000
  assert.equal(schedule.nextDelay(3000), null)
})

test('Retry-After is read as seconds or as an HTTP date', () => {
  const now = Date.parse('Mon, 30 Nov 2026 12:00:00 GMT')
  assert.equal(parseRetryAfter('2', now), 2000)
  assert.equal(parseRetryAfter('Mon, 30 Nov 2026 12:00:05 GMT', now), 5000)
  assert.equal(parseRetryAfter('Mon, 30 Nov 2026 11:00:00 GMT', now), 0)
  assert.equal(parseRetryAfter('soon', now), null)
  assert.equal(parseRetryAfter(null, now), null)
})

test('an impossible retry policy is refused', () => {
  assert.throws(() => retryPolicy({ maxAttempts: 0 }), RangeError)
  assert.throws(() => retryPolicy({ firstDelayMs: 10, maxDelayMs: 1 }), RangeError)
  assert.throws(() => makeHttpPersistence('not a url'), TypeError)
})
