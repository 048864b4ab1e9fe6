/**
 * Leases (API 1.1) through the hooks, against a real `runstore serve`: the cases of the Python
 * suite (tests/client/test_client_leases.py). Timers run while a test waits, as an agent's event
 * loop goes on while it awaits a slow model call.
 */
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import {
  type HttpPersistence,
  LeaseHeld,
  LeaseLost,
  RunNotFound,
  makeHttpPersistence,
} from '../src/index.js'
import { Recorder, Server, type Snapshot, agentSnapshot, finish, takeStep } from './support.js'

const TTL_MS = 1000 // the shortest lease the contract allows
let server: Server
const opened: HttpPersistence[] = []

before(async () => {
  server = await new Server().start()
})
after(async () => {
  await Promise.all(opened.map((hooks) => hooks.close()))
  await server.close()
})

const hooksOf = (holder: string, leaseTtlMs = 30_000, recorder?: Recorder): HttpPersistence => {
  const hooks = makeHttpPersistence(server.url, { holder, leaseTtlMs, fetch: recorder?.fetch })
  opened.push(hooks)
  return hooks
}

let counter = 0
const runIdFor = (name: string): string => `${name}-${process.pid}-${(counter += 1)}`

/** Another worker's plain request for a lease: its status and body. */
const acquire = async (
  runId: string,
  holder: string,
  lease?: number,
): Promise<{ status: number; body: Record<string, unknown> }> => {
  const response = await fetch(`${server.url}/runs/${runId}/lease`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ holder, ttlMs: 30_000, ...(lease === undefined ? {} : { lease }) }),
  })
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

const release = async (runId: string, lease: number): Promise<number> => {
  const response = await fetch(`${server.url}/runs/${runId}/lease`, {
    method: 'DELETE',
    headers: { 'runstore-lease': String(lease) },
  })
  return response.status
}

const traceOf = async (runId: string): Promise<unknown[]> => {
  const response = await fetch(`${server.url}/runs/${runId}`)
  return ((await response.json()) as { trace: unknown[] }).trace
}

test('hooks take the lease, write under it and release it', async () => {
  const runId = runIdFor('held')
  const hooks = hooksOf('worker-7')
  const run = agentSnapshot(runId)
  await hooks.onRunStart(run)
  assert.deepEqual([hooks.lease(runId)?.holder, hooks.lease(runId)?.lease], ['worker-7', 1])
  // Another holder cannot take the run, nor write it without the lease.
  const intruder = await acquire(runId, 'intruder')
  assert.deepEqual([intruder.status, intruder.body.holder], [409, 'worker-7'])
  const write = await fetch(`${server.url}/runs/${runId}`, {
    method: 'PATCH',
    headers: { 'content-type': 'application/json' },
    body: '{"revisions": 9}',
  })
  assert.equal(((await write.json()) as { type: string }).type, 'urn:runstore:problem:lease-held')
  await hooks.onStepComplete(takeStep(run))
  await hooks.onRunComplete(finish(takeStep(run)))
  assert.equal(hooks.lease(runId), null)
  // Released: the next owner's lease is number 2.
  assert.equal((await acquire(runId, 'next')).body.lease, 2)
  assert.equal((await traceOf(runId)).length, 2)
})

test('a hook that waits three ttls keeps its lease', async () => {
  const runId = runIdFor('slow')
  const status = `slow-${process.pid}`
  const hooks = hooksOf('slow-worker', TTL_MS)
  const run = agentSnapshot(runId, { status })
  await hooks.onRunStart(run)
  await sleep(3 * TTL_MS) // a slow model call: only the renewer keeps the lease
  const claimer = hooksOf('claimer')
  assert.equal(await claimer.claim({ status, staleAfterMs: 0 }), null)
  assert.equal((await acquire(runId, 'intruder')).status, 409)
  await hooks.onStepComplete(takeStep(run))
  assert.equal(hooks.lease(runId)?.lease, 1)
  await hooks.onRunComplete(finish(run))
  assert.equal((await traceOf(runId)).length, 1)
})

test('a lost lease rejects the next hooks with LeaseLost', async () => {
  const runId = runIdFor('lost')
  const hooks = hooksOf('first')
  const run = agentSnapshot(runId)
  await hooks.onRunStart(run)
  await hooks.onStepComplete(takeStep(run))
  // Someone ends the lease and takes the run (as a claim would after an expiry).
  assert.equal(await release(runId, 1), 204)
  assert.equal((await acquire(runId, 'second')).body.lease, 2)
  for (let n = 0; n < 2; n += 1) {
    // Every hook for the run says so, until the worker lets it go.
    await assert.rejects(hooks.onStepComplete(takeStep(run)), LeaseLost)
  }
  assert.equal((await traceOf(runId)).length, 1)
  await assert.rejects(hooks.onRunComplete(finish(run)), LeaseLost)
})

test('a claimed run is resumed with deltas under the new lease', async () => {
  const runId = runIdFor('orphan')
  const status = `orphan-${process.pid}`
  const crashed = hooksOf('crashed', TTL_MS)
  const run = agentSnapshot(runId, { status })
  await crashed.onRunStart(run)
  await crashed.onStepComplete(takeStep(run))
  await crashed.close() // stops renewing, as a dead worker would; the lease runs out
  await sleep(TTL_MS + 300)
  const recorder = new Recorder()
  const rescuer = hooksOf('rescuer', 30_000, recorder)
  const claimed = await rescuer.claim<Snapshot>({ status, staleAfterMs: 3_600_000 })
  assert.ok(claimed !== null)
  assert.deepEqual(
    [claimed.run.runId, claimed.lease.lease, claimed.lease.holder],
    [runId, 2, 'rescuer'],
  )
  const resumed = claimed.run
  assert.equal(resumed.trace.length, 1)
  await rescuer.onStepComplete(takeStep(resumed, 'rescuer'))
  await rescuer.onRunComplete(finish(resumed))
  assert.equal((await traceOf(runId)).length, 2)
  assert.deepEqual(
    recorder.sent.map((s) => `${s.method} ${s.path.replace(runId, 'R')} ${s.status}`),
    ['POST /claims 200', 'PATCH /runs/R 200', 'PATCH /runs/R 200', 'DELETE /runs/R/lease 204'],
  )
  // The crashed worker's lease is fenced off for good.
  const fenced = await acquire(runId, 'crashed', 1)
  assert.equal(fenced.body.type, 'urn:runstore:problem:lease-lost')
})

test('resuming a run someone holds is LeaseHeld; resuming an absent one RunNotFound', async () => {
  const runId = runIdFor('owned')
  await hooksOf('owner').onRunStart(agentSnapshot(runId))
  const error = await hooksOf('someone-else')
    .resume(runId)
    .catch((e: unknown) => e)
  assert.ok(error instanceof LeaseHeld, String(error))
  assert.equal(error.holder, 'owner')
  assert.ok(Number.isInteger(error.expiresAt))
  // Starting it again elsewhere, too.
  await assert.rejects(hooksOf('someone-else').onRunStart(agentSnapshot(runId)), LeaseHeld)
  await assert.rejects(hooksOf('anyone').resume(runIdFor('absent')), RunNotFound)
})

test('resume goes on with deltas under the lease', async () => {
  const runId = runIdFor('resumed')
  const first = hooksOf('first', TTL_MS)
  const run = agentSnapshot(runId)
  await first.onRunStart(run)
  await first.onStepComplete(takeStep(run))
  await first.close()
  await sleep(TTL_MS + 300)
  const recorder = new Recorder()
  const second = hooksOf('second', 30_000, recorder)
  const resumed = await second.resume<Snapshot>(runId)
  assert.equal(second.lease(runId)?.lease, 2)
  await second.onStepComplete(takeStep(resumed))
  await second.onRunComplete(finish(resumed))
  assert.equal((await traceOf(runId)).length, 2)
  assert.deepEqual(
    recorder.sent.map((s) => `${s.method} ${s.path.replace(runId, 'R')} ${s.status}`),
    [
      'POST /runs/R/lease 200',
      'GET /runs/R 200',
      'PATCH /runs/R 200',
      'PATCH /runs/R 200',
      'DELETE /runs/R/lease 204',
    ],
  )
})

test('leases need a holder, and a ttl the contract allows', async () => {
  const plain = makeHttpPersistence(server.url)
  await assert.rejects(plain.claim(), TypeError)
  await assert.rejects(plain.resume('any'), TypeError)
  assert.throws(() => makeHttpPersistence(server.url, { holder: 'h', leaseTtlMs: 999 }), RangeError)
})
